"""Train-then-benchmark runs (what the demo and the evidence benchmark are made of)."""

import os
import sys

import pytest

from speed_kd.runs import run_logged, train_and_record

from ...conftest import REPO

STUDENT = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_student.yml")


def test_a_run_trains_once_and_records(datasets_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTREID_DATASETS", str(datasets_root))
    lines = []
    run = train_and_record(
        "tiny student", STUDENT, str(tmp_path / "run"), seed=3,
        opts=["SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "KDREID.LOG_PERIOD", "2"],
        echo=lines.append,
    )  # fmt: skip
    assert run.record["name"] == "tiny student" and run.record["macs"] > 0
    assert run.train_seconds > 0 and os.path.isfile(run.weights)
    assert lines and all("eta:" in line for line in lines)
    stamp = os.path.getmtime(run.weights)
    again = train_and_record("tiny student", STUDENT, str(tmp_path / "run"), seed=3)
    assert again.record == run.record and again.train_seconds == run.train_seconds
    assert os.path.getmtime(run.weights) == stamp  # not trained again


def test_a_failed_command_names_its_log(tmp_path):
    log = tmp_path / "out" / "fail.log"
    with pytest.raises(RuntimeError, match=r"exit 3.*fail\.log:\n    boom"):
        run_logged([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], str(log))
    assert log.read_text() == "boom\n"
