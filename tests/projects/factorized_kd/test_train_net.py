"""FactorizedKD through its train_net.py on the CPU, as a user runs it: a partial teacher trained
and evaluated on its view, an FD student trained with it, and that student's checkpoint evaluated
as the plain student it deploys as."""

import json
import os
import subprocess
import sys

import pytest
import torch
from fastreid.modeling import build_model

from factorized_kd import FKDTrainer
from kdreid.benchmark import count_parameters
from kdreid.config import get_cfg, merge_from_file, merge_from_list

from ...conftest import REPO

TRAIN_NET = os.path.join(REPO, "projects", "FactorizedKD", "train_net.py")
SYNTHETIC = os.path.join(REPO, "configs", "FactorizedKD", "Synthetic")
TINY_TEACHER = os.path.join(SYNTHETIC, "tiny_teacher.yml")
TINY_STUDENT = os.path.join(SYNTHETIC, "tiny_student.yml")
TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
# tiny_student.yml deploys as FastReID's Baseline of tiny.yml with its last stride.
PLAIN_OPTS = ("MODEL.BACKBONE.LAST_STRIDE", "1")
ONE_EPOCH = ("SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "[1]", "KDREID.PROGRESS", "False")


def _run(config, *opts, datasets_root):
    env = dict(os.environ, FASTREID_DATASETS=str(datasets_root), CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", config, *opts],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def _record(run_dir):
    with open(os.path.join(run_dir, "speed_accuracy.json")) as f:
        return json.load(f)


def _last_results(log):
    """The last results table FastReID printed in ``log``: ``{column: float}``."""
    lines = log.splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("| Dataset"))
    names = [c.strip() for c in lines[header].strip("|").split("|")]
    values = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    return {n: float(v) for n, v in zip(names[1:], values[1:])}


def test_train_net_uses_the_partial_view_trainer(load_script):
    module = load_script("projects/FactorizedKD/train_net.py")  # its __main__ guard: no launch
    assert module.FKDTrainer is FKDTrainer
    assert "trainer_cls=FKDTrainer" in open(TRAIN_NET).read()


@pytest.fixture(scope="module")
def teacher_run(datasets_root, tmp_path_factory):
    """The Dn1 teacher, its view named on the command line as the issue's command does."""
    out = tmp_path_factory.mktemp("fkd_teacher") / "Dn1"
    proc = _run(TINY_TEACHER, "MODEL.FKD.VIEW", "Dn1", "OUTPUT_DIR", str(out), *ONE_EPOCH,
                datasets_root=datasets_root)  # fmt: skip
    return out, proc


@pytest.mark.slow
def test_teacher_trains_and_evaluates_on_its_view(teacher_run):
    out, proc = teacher_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    # The crop is in front of both the training and the test transforms.
    crop = "ViewCrop(view='Dn1', rows=[1/2, 1))"
    assert f"Training images: {crop}" in log and f"Test images: {crop}" in log
    cfg = get_cfg()
    merge_from_file(cfg, str(out / "config.yaml"))  # the run's config records the view
    assert cfg.MODEL.FKD.VIEW == "Dn1"
    assert _last_results(log)["mAP"] > 0  # evaluated at the end of training


@pytest.mark.slow
def test_fd_student_trains_and_deploys_as_the_plain_student(teacher_run, datasets_root, tmp_path):
    teacher, proc = teacher_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "student"
    teachers = ("KD.MODEL_CONFIG", repr([str(teacher / "config.yaml")]),
                "KD.MODEL_WEIGHTS", repr([str(teacher / "model_final.pth")]))  # fmt: skip
    proc = _run(TINY_STUDENT, *teachers, "OUTPUT_DIR", str(out), *ONE_EPOCH,
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    for term in ("loss_fkd_feature", "loss_fkd_map", "loss_cls", "loss_triplet"):
        assert f"{term}: " in log, term
    fd_map = _last_results(log)["mAP"]

    # The checkpoint holds the training-only modules under "distill." and no teacher.
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    extra = {k.split(".")[1] for k in state if k.startswith("distill.")}
    assert extra and not any(k.startswith("teacher") for k in state)

    # Evaluated with the plain config: the plain Baseline's parameters, the accuracy the FD
    # training printed.
    proc = _run(TINY, "--eval-only", *PLAIN_OPTS, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                "OUTPUT_DIR", str(tmp_path / "eval"), "KDREID.PROGRESS", "False",
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = _record(tmp_path / "eval")
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    merge_from_list(cfg, [*PLAIN_OPTS, "MODEL.DEVICE", "cpu"])
    plain_params = count_parameters(build_model(cfg))
    assert record["params"] == plain_params
    # The accuracy the training run printed for its own model (2 decimals).
    assert record["metrics"]["mAP"] == pytest.approx(fd_map, abs=0.006)


@pytest.mark.slow
def test_teacher_of_another_input_size_is_named(teacher_run, datasets_root, tmp_path):
    """The student refuses a teacher whose config disagrees with its checkpoint, naming it."""
    teacher, proc = teacher_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = tmp_path / "config.yaml"
    cfg = get_cfg()
    merge_from_file(cfg, str(teacher / "config.yaml"))
    cfg.MODEL.FKD.VIEW_SIZE = [24, 24]  # the view size no longer matches INPUT.SIZE_*
    bad.write_text(cfg.dump())
    proc = _run(TINY_STUDENT, "KD.MODEL_CONFIG", repr([str(bad)]),
                "KD.MODEL_WEIGHTS", repr([str(teacher / "model_final.pth")]),
                "OUTPUT_DIR", str(tmp_path / "student"), *ONE_EPOCH,
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(bad) in proc.stderr and "VIEW_SIZE" in proc.stderr
    assert "Traceback" not in proc.stderr
