"""benchmarks/mixed_precision.py: float32 against mixed precision (bfloat16 on the CPU), training
and extraction speed and the descriptor's change, in one run; bad input is one ``error:`` line
with status 2, found before anything is timed."""

import json
import os

import pytest
import torch

from harness.runs import main_of_runs
from kdreid.config import native_bfloat16

from ..conftest import assert_output_dir_refused, run_script

SCRIPT = "benchmarks/mixed_precision.py"
TINY = ["--models", "R18", "--size", "64x32", "--batch", "4", "--steps", "1",
        "--time-budget", "0.01", "--gemm-sizes", "32", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def mixed_precision(load_script):
    return load_script(SCRIPT)


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_output_dir_that_cannot_be_written_is_one_line(mixed_precision, tmp_path, capsys, sub):
    assert_output_dir_refused(mixed_precision.main, tmp_path, capsys, sub)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "argument --batch: must be 1 or more, got 0"),
        (["--steps", "0"], "argument --steps: must be 1 or more, got 0"),
        (["--size", "256"], "argument --size: expected HxW (e.g. 256x128), got '256'"),
        (["--size", "0x128"], "argument --size: height and width must be 16 or more"),
        (["--size", "axb"], "argument --size: expected HxW"),
        (["--models", "R34"], "argument --models: invalid choice: 'R34'"),
        (["--config", "configs/Synthetic/tiny.yml"], "--config and --weights go together"),
        (["--config", "configs/Synthetic/tiny.yml", "--weights", "missing.pth"],
         "--weights: no file 'missing.pth'"),
        (["--train-config", "no/such.yml"], "--train-config: no file 'no/such.yml'"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_before_anything_runs(
    mixed_precision, tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.setattr(mixed_precision, "gemm_rates", lambda *a: pytest.fail("timed"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main_of_runs(mixed_precision.main, [*argv, "--output-dir", str(out)])
    stdout, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and stdout == ""
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_cuda_without_a_gpu_is_refused(mixed_precision, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main_of_runs(mixed_precision.main, ["--device", "cuda", "--output-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --device cuda, but torch sees no CUDA device\n"


def test_a_trained_model_of_other_settings_is_refused_before_timing(
    mixed_precision, tmp_path, capsys, monkeypatch
):
    """The model it would train and reuse (``<output-dir>/trained``) was trained otherwise."""
    trained = tmp_path / "out" / "trained"
    trained.mkdir(parents=True)
    (trained / "model_final.pth").write_bytes(b"")
    stamp = {"config": "configs/Synthetic/bagtricks_R18.yml", "seed": 0,
             "opts": mixed_precision.training_opts(3)}  # fmt: skip
    (trained / "run.json").write_text(json.dumps(stamp))
    monkeypatch.setattr(mixed_precision, "gemm_rates", lambda *a: pytest.fail("timed"))
    with pytest.raises(SystemExit) as exc:
        main_of_runs(mixed_precision.main, ["--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "holds a run made with other settings" in err
    assert "'SOLVER.MAX_EPOCH', '3'" in err and "'SOLVER.MAX_EPOCH', '6'" in err  # was, now


@pytest.mark.slow
def test_one_run_reports_both_precisions(tiny_teacher, datasets_root, fastreid_root, tmp_path):
    from kdreid.cli import build_inference_model
    from kdreid.engine import Trainer

    config, weights = tiny_teacher
    out = tmp_path / "out"
    done = run_script(SCRIPT, *TINY, "--config", config, "--weights", weights,
                      "--output-dir", str(out), datasets_root=datasets_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "mixed_precision.json").read_text())
    assert result["device"] == "cpu" and result["mixed_dtype"] == "bfloat16"
    assert result["native_bfloat16"] == native_bfloat16()
    assert result["emulated"] == (not native_bfloat16())
    assert result["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result["input_size"] == [64, 32] and result["batch"] == 4
    gemm = result["gemm"]
    assert gemm["sizes"] == [32, 64] and set(gemm["by_size"]) == {"32", "64"}
    for dtype in ("float32", "bfloat16"):  # the peak is the best size's rate
        assert gemm[dtype] == max(gemm["by_size"][n][dtype] for n in ("32", "64")) > 0

    assert list(result["models"]) == ["R18"]
    r18 = result["models"]["R18"]
    assert r18["config"] == "configs/Synthetic/bagtricks_R18.yml"
    assert r18["train_gflops_per_image"] > 0 and r18["eval_macs_per_image"] > 0
    for stage in ("training", "extraction"):
        figures = r18[stage]
        for precision, dtype in (("float32", "float32"), ("mixed", "bfloat16")):
            f = figures[precision]
            assert f["dtype"] == dtype and f["conv_dtypes"] == [dtype]  # what really ran
            assert f["images_per_s"] > 0 and f["fraction_of_gemm"] > 0
        ratio = figures["mixed"]["images_per_s"] / figures["float32"]["images_per_s"]
        assert figures["mixed_over_float32"] == pytest.approx(ratio)
    assert r18["training"]["float32"]["steps"] == 1

    d = result["descriptor"]
    assert d["dataset"] == "SynthReIDTiny" and d["how"] == "given with --config and --weights"
    assert d["num_images"] > 0 and d["feature_dim"] > 0
    assert d["mixed"]["dtype"] == "bfloat16" and d["mixed"]["conv_dtypes"] == ["bfloat16"]
    assert d["float32"]["conv_dtypes"] == ["float32"]
    rel = d["relative_difference"]
    assert 0 < rel["median"] <= rel["max"] < 0.1
    for precision in ("float32", "mixed"):
        assert set(d[precision]) >= {"mAP", "Rank-1", "mINP", "seconds"}

    # The float32 figures are kdreid's evaluator's for the float32 model (as --eval-only runs it).
    cfg, model = build_inference_model(
        config, ["MODEL.WEIGHTS", weights, "KDREID.PROGRESS", "False"], device="cpu"
    )
    model.to(memory_format=torch.channels_last)
    expected = Trainer.test(cfg, model)
    assert d["float32"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert d["float32"]["Rank-1"] == pytest.approx(expected["Rank-1"], abs=1e-6)

    text = (out / "mixed_precision.md").read_text()
    assert "| ResNet-18 | training |" in text and "| ResNet-18 | extraction |" in text
    assert "| float32 |" in text and f"max {rel['max']:.2e}" in text
    assert text.strip() in done.stdout  # the table is printed
    assert ("bfloat16 is EMULATED on this CPU" in text) == (not native_bfloat16())
    assert sorted(os.listdir(out)) == ["mixed_precision.json", "mixed_precision.md"]


def _report(other_cpu_load, busy_warning=""):
    """The smallest result ``markdown`` formats: no timed models, one descriptor comparison."""
    metrics = {"mAP": 50.0, "Rank-1": 60.0, "mINP": 20.0, "seconds": 1.0}
    return {
        "device": "cpu", "device_name": "CPU", "cpu_name": "CPU", "cpu_capability": "AVX512",
        "native_bfloat16": True, "mixed_dtype": "bfloat16", "emulated": False, "torch": "2",
        "threads": 2, "gemm": {"sizes": [64], "float32": 1.0, "bfloat16": 2.0}, "models": {},
        "descriptor": {
            "config": "c.yml", "weights": "w.pth", "how": "given", "dataset": "D",
            "num_images": 3, "feature_dim": 4, "float32": metrics, "mixed": metrics,
            "relative_difference": {"max": 0.02, "median": 0.01},
        },
        "other_cpu_load": other_cpu_load, "busy_warning": busy_warning,
    }  # fmt: skip


def test_the_report_warns_on_what_other_processes_did_during_the_timings(mixed_precision):
    """A high load average before the run (what a finished command leaves) is no warning when
    the timings themselves were undisturbed; a busy CPU during them is."""
    stale = "WARNING: load average 1.0 before the run: other processes use the CPU"
    quiet = mixed_precision.markdown(_report(0.03, stale))
    assert "WARNING" not in quiet and "Other processes kept 0.03 CPUs busy" in quiet
    busy = mixed_precision.markdown(_report(0.9))
    assert "WARNING: other processes kept 0.9 CPUs busy during the timings" in busy
    unmeasured = mixed_precision.markdown(_report(None, stale))
    assert stale in unmeasured
