"""Every SpeedKD config builds a working model, and every KD config names a loadable teacher."""

import glob
import os

import pytest
import torch
from fastreid.modeling import build_model

from kdreid.config import get_cfg, merge_from_file
from kdreid.engine.validation import check_config

from ...conftest import REPO

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "SpeedKD", "**", "*.yml"), recursive=True))
PLAIN = [p for p in CONFIGS if not os.path.basename(p).startswith(("kd_", "tiny_kd"))]
KD = [p for p in CONFIGS if p not in PLAIN]


def _plain(path):
    """A plain config as a test parameter; the ResNet-50/101 teachers (a second or more each to
    build and run on a CPU) are left to ``make test``."""
    marks = pytest.mark.slow if os.path.basename(path).startswith("teacher_R") else ()
    return pytest.param(path, marks=marks, id=os.path.relpath(path, REPO))


def _cfg(path):
    cfg = get_cfg()
    merge_from_file(cfg, path)
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HEADS.NUM_CLASSES = 7
    return cfg


@pytest.mark.parametrize("path", [_plain(p) for p in PLAIN])
def test_model_builds_and_returns_its_feature(path):
    """The feature has FEAT_DIM dimensions at the config's test size (a FEAT_DIM that does not
    match the backbone's width would fail here)."""
    cfg = _cfg(path)
    check_config(cfg)
    model = build_model(cfg).eval()
    with torch.no_grad():
        feature = model(torch.rand(1, 3, *cfg.INPUT.SIZE_TEST) * 255)
    assert feature.shape == (1, cfg.MODEL.BACKBONE.FEAT_DIM)


@pytest.mark.parametrize("path", KD, ids=lambda p: os.path.relpath(p, REPO))
def test_kd_config_names_its_teacher_and_student(path):
    cfg = _cfg(path)
    assert cfg.MODEL.META_ARCHITECTURE == "SpeedKDDistiller"
    assert len(cfg.KD.MODEL_CONFIG) == 1 and not cfg.KD.MODEL_WEIGHTS  # weights: command line
    teacher = get_cfg()
    merge_from_file(teacher, os.path.join(REPO, cfg.KD.MODEL_CONFIG[0]))
    assert teacher.DATASETS.NAMES == cfg.DATASETS.NAMES  # logit KD: the same identities
    student = os.path.join(os.path.dirname(path), os.path.basename(path).replace("kd_", "", 1))
    if os.path.basename(path) == "tiny_kd.yml":
        student = os.path.join(os.path.dirname(path), "tiny_student.yml")
    plain = _cfg(student)
    assert cfg.MODEL.BACKBONE == plain.MODEL.BACKBONE and cfg.INPUT == plain.INPUT
