"""SpeedKD through its train_net.py on the CPU: the KD student trained from the teacher's
checkpoint and evaluated as the plain student; teachers that do not fit refused in one line."""

import hashlib
import json
import os

import pytest

from ...conftest import REPO, run_script

TINY_KD = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_kd.yml")
TRAIN_NET = os.path.join(REPO, "projects", "SpeedKD", "train_net.py")


def _run(*argv, datasets_root):
    return run_script(TRAIN_NET, *argv, datasets_root=datasets_root)


@pytest.mark.slow
def test_train_net_distils_and_benchmarks(tiny_teacher, datasets_root, tmp_path):
    """train_net trains the KD student from the teacher's checkpoint; --eval-only on the result
    with the plain student's config prints and writes accuracy and speed."""
    out = tmp_path / "kd"
    proc = _run(
        "--config-file", TINY_KD, "KD.MODEL_WEIGHTS", f"('{tiny_teacher[1]}',)",
        "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1",
        "KDREID.PROGRESS", "False", datasets_root=datasets_root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loss_kd_logits" in proc.stderr + proc.stdout
    student = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_student.yml")
    proc = _run(
        "--config-file", student, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path / "eval"), "KDREID.PROGRESS", "False",
        datasets_root=datasets_root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "multiply-adds" in proc.stderr + proc.stdout
    with open(tmp_path / "eval" / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["params"] < 300_000
    # evaluated with the plain student's config, the record still names the model it holds: the
    # run that trained it (it was "tiny_student", and merged with the plain student's runs)
    assert record["name"] == "tiny_kd" and record["distilled"] is True
    assert record["trained"] == {"name": "tiny_kd", "config": TINY_KD, "distilled": True}
    digest = hashlib.sha256((out / "model_final.pth").read_bytes()).hexdigest()
    assert record["weights_sha256"] == digest


@pytest.mark.slow
def test_teacher_of_another_label_space_is_one_line(tiny_teacher, datasets_root, tmp_path):
    proc = _run(
        "--config-file", TINY_KD, "KD.MODEL_WEIGHTS", f"('{tiny_teacher[1]}',)",
        "MODEL.HEADS.NUM_CLASSES", "7", "OUTPUT_DIR", str(tmp_path), datasets_root=datasets_root,
    )  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Teacher") and "same label space" in last
    assert "MODEL.SPEEDKD.LAMBDA 0 MODEL.SPEEDKD.HINT_WEIGHT 1" in last


@pytest.mark.slow
def test_teacher_without_weights_is_one_line(datasets_root, tmp_path):
    proc = _run("--config-file", TINY_KD, "OUTPUT_DIR", str(tmp_path), datasets_root=datasets_root)
    assert proc.returncode == 2
    assert "has no weights" in proc.stderr.strip().splitlines()[-1]
