"""benchmarks/retrieval.py at a tiny scale: every section runs, its checks pass on correct code
and fail on wrong code (the figures themselves are the benchmark's business, not the tests')."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ..conftest import REPO

BENCHMARKS = os.path.join(REPO, "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "retrieval.py")
TINY = ["--scale", "0.03", "--repeats", "1", "--msmt-scale", "0.004", "--msmt-dim", "16"]


@pytest.fixture(scope="module")
def retrieval(load_script):
    """The script as a module (it imports ``_fastreid_cython`` from its own folder)."""
    return load_script("benchmarks/retrieval.py")


@pytest.mark.slow
def test_every_section_runs_and_agrees():
    sections = ["eval", "rerank", "rerank_features", "rerank_msmt"]
    done = subprocess.run(
        [sys.executable, SCRIPT, "--sections", *sections, "--device", "cpu", *TINY]
        + ["--memory-budgets", "64", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "MISMATCH" not in out and "RESULTS DIFFER" not in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    for section in sections:
        assert any(line.startswith(f"| {section} ") for line in table), section
    names = [line.split("|")[2].strip() for line in table]
    rows = dict(zip(names, table))
    assert "same results" in next(v for k, v in rows.items() if k.endswith("threads"))
    assert "same as above" in rows["kdreid evaluate_rank, 1 thread"]
    assert "same metrics" in rows["kdreid re_ranking"]
    features = [line for name, line in rows.items() if name.startswith("kdreid features")]
    assert len(features) == 2  # one per memory budget
    assert "budget 64 MiB (default)" in features[0] and "budget 1 MiB" in features[1]
    assert all("same metrics" in line and "CPU" in line for line in features)
    for stage in ("neighbours", "encoding", "query expansion", "jaccard", "evaluation"):
        assert names.count(f"stage: {stage}") == 2, stage


def test_rerank_features_section_catches_a_wrong_result(retrieval, monkeypatch, capsys):
    """A re-ranking off by 1e-3 is reported as a mismatch, and the exit status is 1."""
    right = retrieval.re_ranking_features

    def off_by_a_little(*args, **kwargs):
        return right(*args, **kwargs) + 1e-3

    monkeypatch.setattr(retrieval, "re_ranking_features", off_by_a_little)
    status = retrieval.main(["--sections", "rerank_features", "--device", "cpu", *TINY])
    out = capsys.readouterr().out
    assert status == 1
    assert "rerank_features: distances differ by 1.00e-03" in out and "RESULTS DIFFER" in out


def test_short_rows_are_compared_apart(retrieval, capsys):
    """A query whose gallery is shorter than 50 once its junk is set aside: FastReID's Cython CMC
    reads leftovers past its end, so the rankers are held to agree on the other rows only."""
    rng = np.random.default_rng(0)
    g_pids = np.array([0] * 6 + list(range(1, 47)))  # 52 entries
    g_camids = np.array([0, 0, 0, 1, 1, 1] + [1] * 46)
    labels = retrieval.Labels(
        q_pids=np.array([1, 0, 2, 0]), g_pids=g_pids,
        q_camids=np.array([5, 0, 5, 2]), g_camids=g_camids,
    )  # fmt: skip
    assert retrieval.short_rows(labels).tolist() == [False, True, False, False]  # 3 junk: 49
    dist = rng.random((4, 52)).astype(np.float32)
    evaluate_cy = retrieval.load_evaluate_cy()
    ours = retrieval.evaluate_rank(dist, *labels)
    results = retrieval.Results()
    note = retrieval.check_against_cython(
        evaluate_cy, dist, labels, ours, evaluate_cy(dist, *labels, 50), results
    )
    out = capsys.readouterr().out
    assert results.failures == [] and note in (
        "same results",
        "same results except on 1 short row",
    )
    assert "1 query row (1): fewer than 50 gallery entries" in out
    assert "kdreid vs Cython, 3 other rows: max |diff| CMC 0.0e+00" in out


def test_stage_rows_add_up(retrieval):
    """The stages of one run account for its total (they are consecutive intervals)."""
    work = retrieval.Workload(seed=1, **retrieval.scaled(retrieval.MARKET, 0.02))
    results = retrieval.Results()
    args = retrieval.parse_args(["--device", "cpu", "--repeats", "2"])
    args.device = retrieval.resolve_device(args.device)
    retrieval.section_rerank_features(work, args, results)
    rows = {row.method.strip(): row for row in results.rows}
    total = next(row for name, row in rows.items() if name.startswith("kdreid features"))
    stages = [rows[f"stage: {s}"] for s in (*retrieval.STAGES, "evaluation")]
    summed = np.sum([row.times for row in stages], axis=0)
    assert np.all(summed <= np.asarray(total.times) + 1e-6)
    assert np.all(summed >= 0.5 * np.asarray(total.times))
    assert not results.failures


def test_cuda_refused_without_a_gpu(retrieval):
    if retrieval.torch.cuda.is_available():
        assert retrieval.resolve_device("cuda").type == "cuda"
        return
    with pytest.raises(SystemExit, match="--device cuda, but torch sees no CUDA device"):
        retrieval.resolve_device("cuda")
    assert retrieval.resolve_device("auto").type == "cpu"
