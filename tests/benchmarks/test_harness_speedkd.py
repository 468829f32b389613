"""harness.speedkd: the harness's train-then-benchmark runs with SpeedKD's train_net.py."""

import os

import pytest

from harness.speedkd import train_and_record

from ..conftest import REPO

STUDENT = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_student.yml")


@pytest.mark.slow
def test_a_speedkd_model_trains_once_and_records(datasets_root, tmp_path, monkeypatch):
    """The student is a SpeedKD backbone: only SpeedKD's train_net.py registers it."""
    monkeypatch.setenv("FASTREID_DATASETS", str(datasets_root))
    lines = []
    run = train_and_record(
        "tiny student", STUDENT, str(tmp_path / "run"), seed=3,
        opts=["SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "KDREID.LOG_PERIOD", "2"],
        echo=lines.append,
    )  # fmt: skip
    assert run.record["name"] == "tiny student" and run.record["macs"] > 0
    assert run.train_seconds > 0 and run.train_images == 96 and os.path.isfile(run.weights)
    assert len(lines) > 1 and all("eta:" in line for line in lines[:-1])
    assert lines[-1] == "evaluating: accuracy, then speed (--eval-only)"
    stamp = os.path.getmtime(run.weights)
    again = train_and_record(
        "tiny student", STUDENT, str(tmp_path / "run"), seed=3,
        opts=["SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "KDREID.LOG_PERIOD", "2"],
    )  # fmt: skip
    assert again == run
    assert os.path.getmtime(run.weights) == stamp  # not trained again
