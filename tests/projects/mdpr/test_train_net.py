"""MDPR through its train_net.py on the CPU: trains, evaluates at batch size 1, reports speed."""

import json
import os

import pytest

from ...conftest import REPO, run_script

TRAIN_NET = os.path.join(REPO, "projects", "MDPR", "train_net.py")
TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")


def _run(*argv, datasets_root):
    argv = ("--config-file", TINY, *argv, "KDREID.PROGRESS", "False")
    return run_script(TRAIN_NET, *argv, datasets_root=datasets_root)


@pytest.mark.slow
def test_train_then_evaluate_at_batch_one(datasets_root, tmp_path):
    out = tmp_path / "train"
    proc = _run("OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1",
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    with open(out / "metrics.json") as f:  # every term; the log line sums them by kind
        logged = set().union(*(json.loads(line) for line in f))
    for term in ("loss_hard_part_1_triplet", "loss_attn_bap3_cls", "loss_diversity_loss_reg_4",
                 "loss_mutual_distillation", "loss_fusion_cls"):  # fmt: skip
        assert term in logged
    assert "cls: " in log and "(sum of " in log and "distillation: " in log
    proc = _run("--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                "OUTPUT_DIR", str(tmp_path / "eval"), "TEST.IMS_PER_BATCH", "1",
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert "multiply-adds" in log and "Rank-1" in log
    with open(tmp_path / "eval" / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["metrics"]["mAP"] > 0 and record["latency_ms"] > 0
    assert record["feature_dim"] == 9 * 64  # (2 stripes + 3) E + 4E with E = 64


@pytest.mark.slow
def test_weights_of_another_stripe_count_name_the_keys(datasets_root, tmp_path):
    out = tmp_path / "train"
    proc = _run("OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "0",
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
                "MODEL.MDPR.NUM_STRIPES", "1", "OUTPUT_DIR", str(tmp_path / "eval"),
                datasets_root=datasets_root)  # fmt: skip
    assert proc.returncode == 2
    err = proc.stderr
    assert "generate.embedding_hard_part.1.embedding.weight" in err
    assert "hard_part_head.1" in err
