"""SpeedKD's distiller: registration, Hinton's loss via MODEL.SPEEDKD, the hint term, bad input
(training through train_net.py: test_train_net.py)."""

import os

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils.events import EventStorage

import speed_kd
from kdreid.config import get_cfg, merge_from_file, resolve_device
from kdreid.distill import kd_kl_loss
from kdreid.engine.validation import check_built, check_config
from kdreid.errors import ConfigError

from ...conftest import REPO

TINY_KD = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_kd.yml")


def test_importing_the_package_registers_its_models():
    assert BACKBONE_REGISTRY.get("build_speedkd_mobilenetv1_backbone")
    assert META_ARCH_REGISTRY.get("SpeedKDDistiller") is speed_kd.SpeedKDDistiller
    assert {"TEMPERATURE", "LAMBDA", "HINT_WEIGHT"} <= set(get_cfg().MODEL.SPEEDKD)


def _cfg(tiny_teacher, **speedkd):
    cfg = get_cfg()
    merge_from_file(cfg, TINY_KD)
    state = torch.load(tiny_teacher[1], weights_only=True)["model"]
    cfg.MODEL.HEADS.NUM_CLASSES = state["heads.weight"].shape[0]
    cfg.KD.MODEL_CONFIG = [tiny_teacher[0]]
    cfg.KD.MODEL_WEIGHTS = [tiny_teacher[1]]
    for key, value in speedkd.items():
        cfg.MODEL.SPEEDKD[key] = value
    resolve_device(cfg)
    return cfg


def test_hinton_loss(tiny_teacher):
    """L = (1 - lambda) CE + lambda T^2 KL(p_t || p_s) + triplet: with lambda = 0.3 and T = 2,
    loss_cls is 0.7 times the plain CE and loss_kd_logits 0.3 times kd_kl_loss at T = 2."""
    torch.manual_seed(0)
    model = build_model(_cfg(tiny_teacher, LAMBDA=0.3, TEMPERATURE=2.0)).train()
    assert (model.ce_weight, model.logit_weight, model.temperature) == pytest.approx((0.7, 0.3, 2))
    assert len(model.distill) == 0  # no hint by default
    images = torch.rand(8, 3, 64, 32) * 255
    targets = torch.arange(4).repeat_interleave(2)
    with EventStorage():
        losses = model({"images": images.clone(), "targets": targets})
        student = model.student
        x = (images - student.pixel_mean) / student.pixel_std
        outputs = student.heads(student.backbone(x), targets)
        plain = student.losses(outputs, targets)
    t_logits = model.teachers[0](images).logits
    torch.testing.assert_close(losses["loss_cls"], 0.7 * plain["loss_cls"])
    torch.testing.assert_close(
        losses["loss_kd_logits"], 0.3 * kd_kl_loss(outputs["pred_class_logits"], t_logits, 2.0)
    )


def test_hint_term(tiny_teacher):
    model = build_model(_cfg(tiny_teacher, HINT_WEIGHT=0.5)).train()
    assert model.feature_loss == "l2" and model.feature_weight == 0.5
    proj = model.distill["feature_proj"][0]
    assert (proj.in_features, proj.out_features) == (256, 512)  # MobileNet 0.25x -> ResNet-18
    with EventStorage():
        losses = model({"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(8) % 4})
    assert losses["loss_kd_feature"] > 0


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TEMPERATURE", 0.0, "MODEL.SPEEDKD.TEMPERATURE must be > 0, got 0.0"),
        ("TEMPERATURE", -1.0, "MODEL.SPEEDKD.TEMPERATURE must be > 0"),
        ("LAMBDA", 1.5, r"MODEL.SPEEDKD.LAMBDA must be in \[0, 1\]"),
        ("HINT_WEIGHT", -0.1, "MODEL.SPEEDKD.HINT_WEIGHT must be >= 0"),
    ],
)
def test_bad_values(tiny_teacher, key, value, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(tiny_teacher, **{key: value}))


@pytest.fixture(scope="module")
def teacher_of_150_ids(tmp_path_factory):
    """A ResNet-18 checkpoint (untrained) with a classifier over 150 identities: ``(config,
    checkpoint)``."""
    config = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
    cfg = get_cfg()
    merge_from_file(cfg, config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = 150
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher150") / "model_final.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return config, str(path)


def _cfg_16_ids(teacher, *opts):
    """tiny_kd.yml with a student of 16 identities, the teacher given and ``KEY VALUE`` options."""
    cfg = get_cfg()
    merge_from_file(cfg, TINY_KD)
    cfg.MODEL.HEADS.NUM_CLASSES = 16
    cfg.KD.MODEL_CONFIG = [teacher[0]]
    cfg.KD.MODEL_WEIGHTS = [teacher[1]]
    cfg.merge_from_list(list(opts))
    resolve_device(cfg)
    return cfg


def _train_step(model):
    model.train()
    with EventStorage():
        return model({"images": torch.rand(8, 3, 64, 32) * 255, "targets": torch.arange(8) % 4})


def test_teacher_of_another_label_space_names_the_keys_that_work(teacher_of_150_ids):
    """The advice names SpeedKD's keys, and each configuration it names does train."""
    cfg = _cfg_16_ids(teacher_of_150_ids)
    with pytest.raises(ConfigError) as info:
        check_built(cfg, build_model(cfg))
    message = str(info.value)
    assert "trained on 150 identities but the student's training set has 16" in message
    assert "MODEL.SPEEDKD.LAMBDA 0 MODEL.SPEEDKD.HINT_WEIGHT 1" in message
    generic = (
        "MODEL.META_ARCHITECTURE KDReIDDistiller KDREID.DISTILL.LOGIT_LOSS none "
        "KDREID.DISTILL.FEATURE_LOSS l2 KDREID.DISTILL.FEATURE_WEIGHT 1"
    )
    assert generic in message
    for advice in ("MODEL.SPEEDKD.LAMBDA 0 MODEL.SPEEDKD.HINT_WEIGHT 1", generic):
        losses = _train_step(build_model(_cfg_16_ids(teacher_of_150_ids, *advice.split())))
        assert "loss_kd_logits" not in losses and losses["loss_kd_feature"] > 0


@pytest.mark.parametrize(
    "key, value", [("LOGIT_LOSS", "none"), ("LOGIT_WEIGHT", 0.0), ("FEATURE_LOSS", "l2")]
)
def test_generic_distiller_keys_are_refused_not_ignored(teacher_of_150_ids, key, value):
    """SpeedKDDistiller sets its loss from MODEL.SPEEDKD: KDREID.DISTILL.LOGIT_LOSS none used to
    be ignored (and the label-space error came back unchanged)."""
    cfg = _cfg_16_ids(teacher_of_150_ids, f"KDREID.DISTILL.{key}", str(value))
    with pytest.raises(ConfigError, match=f"does not read KDREID.DISTILL.{key}") as info:
        check_config(cfg)
    assert "MODEL.SPEEDKD.LAMBDA 0" in str(info.value)
    assert "MODEL.META_ARCHITECTURE KDReIDDistiller" in str(info.value)
