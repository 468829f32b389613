"""KDReIDDistiller: the student's checkpoint, the distillation terms, the warm-up, end to end."""

import json
import os

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.events import EventStorage

from kdreid.checkpoint import fit_state_dict
from kdreid.config import get_cfg, merge_from_file, resolve_device
from kdreid.distill import FrozenTeacher, KDReIDDistiller, kd_kl_loss
from kdreid.engine import Trainer, main
from kdreid.engine.validation import check_built, check_config
from kdreid.errors import ConfigError

from ..conftest import REPO
from ..engine.test_trainer import _args

TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")


def _cfg(tiny_teacher, output_dir="", **distill):
    config, weights = tiny_teacher
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    cfg.MODEL.META_ARCHITECTURE = "KDReIDDistiller"
    cfg.MODEL.HEADS.NUM_CLASSES = _num_classes(weights)
    cfg.KD.MODEL_CONFIG = [config]
    cfg.KD.MODEL_WEIGHTS = [weights]
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.KDREID.PROGRESS = False
    for key, value in distill.items():
        cfg.KDREID.DISTILL[key] = value
    resolve_device(cfg)
    return cfg


def _num_classes(weights):
    return torch.load(weights, weights_only=True)["model"]["heads.weight"].shape[0]


def _batch(n=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(n, 3, 64, 32, generator=g) * 255,
        "targets": torch.arange(classes).repeat_interleave(n // classes),
    }


def test_checkpoint_is_the_students(tiny_teacher):
    """Same keys as the plain student (so a distilled checkpoint deploys with the student's
    config); training-only projections under ``distill.``; no teacher weights."""
    cfg = _cfg(tiny_teacher, FEATURE_LOSS="l2", FEATURE_WEIGHT=1.0)
    distiller = build_model(cfg)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "Baseline"
    plain = build_model(plain_cfg)
    keys = set(distiller.state_dict())
    assert keys - set(plain.state_dict()) == {"distill.feature_proj.0.weight"}
    assert set(plain.state_dict()) <= keys
    # The distilled weights load into the plain student (projection skipped) and back.
    with torch.no_grad():
        distiller.student.heads.weight.fill_(0.5)
    skipped = fit_state_dict(plain, distiller.state_dict(), "distiller")
    assert skipped == ["distill.feature_proj.0.weight"]
    assert torch.all(plain.heads.weight == 0.5)
    fresh = build_model(cfg)
    fresh.load_state_dict(distiller.state_dict())
    assert torch.all(fresh.student.heads.weight == 0.5)
    # The optimizer sees the student and the projection, never the teacher.
    n_student = sum(p.numel() for p in plain.parameters())
    n_proj = distiller.distill.feature_proj[0].weight.numel()
    assert sum(p.numel() for p in distiller.parameters()) == n_student + n_proj


def test_losses_are_the_students_plus_hand_computed_kd(tiny_teacher):
    """loss_cls is the student's times CE_WEIGHT; loss_kd_logits is
    LOGIT_WEIGHT * T^2 KL(p_t || p_s), recomputed here from the student and teacher alone."""
    cfg = _cfg(tiny_teacher, CE_WEIGHT=0.25, LOGIT_WEIGHT=0.75, TEMPERATURE=3.0)
    torch.manual_seed(0)
    distiller = build_model(cfg).train()
    batch = _batch()
    with EventStorage():  # FastReID's losses log the batch accuracy
        losses = distiller({k: v.clone() for k, v in batch.items()})
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_kd_logits"}

    student = distiller.student
    images = (batch["images"] - student.pixel_mean) / student.pixel_std
    outputs = student.heads(student.backbone(images), batch["targets"])
    with EventStorage():
        plain = student.losses(outputs, batch["targets"])
    teacher_logits = distiller.teachers[0](batch["images"]).logits
    expected = 0.75 * kd_kl_loss(outputs["pred_class_logits"], teacher_logits, 3.0)
    torch.testing.assert_close(losses["loss_kd_logits"], expected)
    torch.testing.assert_close(losses["loss_cls"], 0.25 * plain["loss_cls"])
    torch.testing.assert_close(losses["loss_triplet"], plain["loss_triplet"])

    sum(losses.values()).backward()
    assert student.heads.weight.grad is not None
    assert all(p.grad is None for p in distiller.teachers[0].model.parameters())


def test_feature_and_relation_terms(tiny_teacher):
    cfg = _cfg(
        tiny_teacher,
        LOGIT_LOSS="none",
        FEATURE_LOSS="cosine",
        FEATURE_WEIGHT=2.0,
        RELATION_WEIGHT=1.0,
    )
    with EventStorage():
        losses = build_model(cfg).train()(_batch())
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_kd_feature", "loss_kd_relation"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_evaluation_is_the_student(tiny_teacher):
    distiller = build_model(_cfg(tiny_teacher)).eval()
    images = _batch()["images"]
    torch.testing.assert_close(
        distiller({"images": images.clone()}), distiller.student({"images": images.clone()})
    )
    assert distiller.deployed_model() is distiller.student


def test_bad_input(tiny_teacher):
    with pytest.raises(ConfigError, match="trained on 16 identities.*has 5.*same label space"):
        cfg = _cfg(tiny_teacher)
        cfg.MODEL.HEADS.NUM_CLASSES = 5
        check_built(cfg, build_model(cfg))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        check_config(_cfg(tiny_teacher, TEMPERATURE=0.0))
    with pytest.raises(ConfigError, match="valid: kl, skl, js, none"):
        check_config(_cfg(tiny_teacher, LOGIT_LOSS="hinton"))
    with pytest.raises(ValueError, match="temperature must be > 0"):  # the module itself
        build_model(_cfg(tiny_teacher, TEMPERATURE=0.0))
    cfg = _cfg(tiny_teacher)
    cfg.KD.MODEL_CONFIG, cfg.KD.MODEL_WEIGHTS = [], []
    distiller = build_model(cfg).train()
    with pytest.raises(ConfigError, match="no teacher"), EventStorage():
        distiller(_batch())


@pytest.mark.slow
def test_train_distil_and_deploy(tiny_teacher, fastreid_root, tmp_path):
    """Train through the trainer with a warm-up; the checkpoint evaluates with the plain
    student's config, and --eval-only writes the speed/accuracy record."""
    (tmp_path / "kd").mkdir()
    cfg = _cfg(tiny_teacher, tmp_path / "kd", WARMUP_ITERS=8)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert isinstance(trainer.model, KDReIDDistiller)
    assert isinstance(trainer.model.teachers[0], FrozenTeacher)
    trainer.train()
    with open(tmp_path / "kd" / "metrics.json") as f:
        logged = [json.loads(line) for line in f if "loss_kd_logits" in line]
    assert logged and all(0 < e["kd_scale"] <= 1 for e in logged)
    assert torch.isfinite(torch.tensor([e["loss_kd_logits"] for e in logged])).all()

    weights = str(tmp_path / "kd" / "model_final.pth")
    state = torch.load(weights, weights_only=True)["model"]
    assert not any(k.startswith(("student.", "teachers.")) for k in state)
    out = tmp_path / "eval"
    results = main(
        _args(
            eval_only=True,
            opts=[
                "MODEL.WEIGHTS",
                weights,
                "OUTPUT_DIR",
                str(out),
                "KDREID.PROGRESS",
                "False",
                "KDREID.NAME",
                "kd-student",
            ],
        )
    )
    with open(out / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["name"] == "kd-student" and record["kind"] == "deep"
    for key in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"):  # numpy and Python numbers
        assert record["metrics"][key] == pytest.approx(results[key])
    assert record["params"] == sum(
        v.numel()
        for k, v in state.items()
        if not k.startswith("heads.weight")
        and "running" not in k
        and "num_batches" not in k
        and "pixel_" not in k
    )
    assert record["macs"] > 0 and record["latency_ms"] > 0 and record["throughput"] > 0
