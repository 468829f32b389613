"""MDPR's config checks (mdpr.config.check_mdpr_config, stage 1 of kdreid's validation) and the
arguments MDPR's constructor refuses; MDPR's place in kdreid's model contract."""

import os

import pytest
import torch
from fastreid.modeling.backbones import build_backbone
from torch import nn

import mdpr
from kdreid.config import get_cfg
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError
from kdreid.meta_arch import MetaArchitecture, contract, deployed_model, distils
from kdreid.projects import installed
from mdpr.config import PROJECT, builds_mdpr, check_mdpr_config
from mdpr.modeling import MDPR, final_map_rows

from ...conftest import REPO, set_keys

TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")  # 64x32, last stride 1
BASELINE = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")


def _cfg(config=TINY, **opts):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    return set_keys(cfg, **opts)


def test_the_project_declares_its_checks():
    assert PROJECT.check_config is check_mdpr_config
    assert any(project is PROJECT for project in installed())


def test_the_tiny_and_official_configs_pass():
    for name in ("Synthetic/tiny.yml", "DukeMTMC.yml", "Market1501.yml", "MSMT17.yml"):
        cfg = _cfg(os.path.join(REPO, "configs", "MDPR", name))
        check_config(cfg)
        check_config(cfg, training=False)


def test_other_models_are_not_checked():
    """A Baseline config with values MDPR could not use passes MDPR's checks untouched."""
    cfg = _cfg(BASELINE, **{"MODEL.MDPR.NUM_STRIPES": 0, "MODEL.MDPR.MASS_WEIGHT": -1.0})
    assert not builds_mdpr(cfg)
    check_mdpr_config(cfg)
    check_config(cfg)


def test_an_mdpr_student_of_a_distiller_is_checked():
    """``KDReIDDistiller`` builds ``KDREID.DISTILL.STUDENT`` from the same config: an MDPR student
    reads ``MODEL.MDPR``; a Baseline student does not."""
    opts = {"MODEL.META_ARCHITECTURE": "KDReIDDistiller", "MODEL.MDPR.NUM_PARTS": 0}
    with pytest.raises(ConfigError, match="MODEL.MDPR.NUM_PARTS must be at least 1, got 0"):
        check_config(_cfg(**opts, **{"KDREID.DISTILL.STUDENT": "MDPR"}))
    cfg = _cfg(**opts, **{"KDREID.DISTILL.STUDENT": "Baseline"})
    assert not builds_mdpr(cfg)
    check_mdpr_config(cfg)


def test_evaluation_checks_the_test_size_and_ignores_training_keys():
    """A 16-pixel height leaves 1 row after the trunk (16 -> conv1 8 -> max-pool 4 -> layer2 2 ->
    layer3 1, last stride 1): too few for the 2 stripes. Evaluation reads INPUT.SIZE_TEST, not
    INPUT.SIZE_TRAIN, and no loss weight."""
    assert final_map_rows(16, 1) == 1
    short_train = _cfg(**{"INPUT.SIZE_TRAIN": [16, 8]})
    with pytest.raises(ConfigError, match="for INPUT.SIZE_TRAIN height 16"):
        check_mdpr_config(short_train)
    check_mdpr_config(short_train, training=False)
    short_test = _cfg(**{"INPUT.SIZE_TEST": [16, 8]})
    for training in (True, False):
        with pytest.raises(ConfigError, match="more than the 1 rows .* INPUT.SIZE_TEST height 16"):
            check_mdpr_config(short_test, training)
    negative = _cfg(**{"MODEL.MDPR.BAP_WEIGHT": -0.5})
    with pytest.raises(ConfigError, match="MODEL.MDPR.BAP_WEIGHT must be >= 0, got -0.5"):
        check_mdpr_config(negative)
    check_mdpr_config(negative, training=False)


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"MODEL.MDPR.EMBEDDING_DIM": 0}, "MODEL.MDPR.EMBEDDING_DIM must be at least 1, got 0"),
        ({"MODEL.BACKBONE.LAST_STRIDE": 2}, "LAST_STRIDE 1"),  # fusion, needed to evaluate too
        ({"MODEL.BACKBONE.WITH_NL": True}, "WITH_NL False"),
    ],
)
def test_what_building_needs_is_checked_for_evaluation_too(opts, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(**opts), training=False)


def _trunk(**opts):
    return build_backbone(_cfg(**opts))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone": nn.Identity()}, "backbone must be a FastReID ResNet.*got a Identity"),
        ({"num_stripes": 0}, "num_stripes must be at least 1, got 0"),
        ({"num_parts": 0}, "num_parts must be at least 1, got 0"),
        ({"embedding_dim": 0}, "embedding_dim must be at least 1, got 0"),
    ],
)
def test_the_constructor_refuses_arguments_it_cannot_build(kwargs, message):
    """Its own arguments, named as such: no config key in the message (those are the config
    checks' business)."""
    args = {"backbone": _trunk(), "num_classes": 6, "pixel_mean": [0] * 3, "pixel_std": [1] * 3}
    with pytest.raises(ValueError, match=message) as info:
        MDPR(**{**args, **kwargs})
    assert "MODEL." not in str(info.value)


def test_the_constructor_refuses_a_trunk_with_non_local_blocks():
    """FastReID's ResNet-18 with WITH_NL has (empty) NL_1 ... NL_4 children."""
    trunk = _trunk(**{"MODEL.BACKBONE.WITH_NL": True})
    with pytest.raises(ValueError, match=r"non-local blocks \(NL_1, NL_2, NL_3, NL_4\)") as info:
        MDPR(backbone=trunk, num_classes=6, pixel_mean=[0] * 3, pixel_std=[1] * 3)
    assert "MODEL." not in str(info.value)


def test_mdpr_is_a_meta_architecture_that_deploys_without_its_training_only_modules():
    assert issubclass(mdpr.MDPR, MetaArchitecture) and contract(mdpr.MDPR) is mdpr.MDPR
    assert mdpr.MDPR.trainable and mdpr.MDPR.needs_weights
    assert not mdpr.MDPR.teachers_at_inference and mdpr.MDPR.kd_scale is None
    torch.manual_seed(0)
    model = MDPR(backbone=_trunk(), num_classes=6, pixel_mean=[0] * 3, pixel_std=[1] * 3)
    assert not distils(model)
    deployed = deployed_model(nn.parallel.DataParallel(model))
    assert deployed is not model and not deployed.training
    names = {name for name, _ in deployed.named_modules()}
    assert "predictor1" not in names and "generate.attention_maker4" not in names
    images = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        torch.testing.assert_close(deployed(images), model.eval()(images))
