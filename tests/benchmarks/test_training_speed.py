"""benchmarks/training_speed.py on SynthReID-tiny: each variant timed in its own process, the
foreach optimizer's losses equal to FastReID's step's, the tables written."""

import json

import pytest

from ..conftest import run_script


@pytest.mark.slow
def test_variants_run_apart_and_foreach_matches_fastreid(datasets_root, tmp_path):
    out = tmp_path / "speed"
    done = run_script(
        "benchmarks/training_speed.py",
        "--config", "configs/Synthetic/tiny.yml", "--dataset", "SynthReIDTiny",
        "--size", "64x32", "--batch", "8", "--iters", "1", "--workers", "0",
        "--gemm-sizes", "128", "--variants", "foreach", "--output-dir", str(out),
        datasets_root=datasets_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads((out / "training_speed.json").read_text())
    assert record["order"] == ["foreach", "fastreid"]
    variants = record["variants"]
    assert set(variants) == {
        "kdreid float32 (foreach, NCHW)",
        "FastReID's step (flat buffers, NCHW), float32",
    }
    ours = variants["kdreid float32 (foreach, NCHW)"]
    assert ours["loss_differences"] == [0.0, 0.0]  # the same update rule, bit for bit
    assert len(ours["losses"]) == 2 and ours["fraction_of_gemm"] > 0
    assert (out / "variant_foreach.json").exists() and (out / "variant_fastreid.json").exists()
    assert "| kdreid float32 (foreach, NCHW) |" in (out / "training_speed.md").read_text()
