"""The validation layer's building blocks: registered names read through FastReID's public
``Registry.get`` only, and value checks naming the key."""

import pytest
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils.registry import Registry

from kdreid.config import get_cfg
from kdreid.engine.validation.values import (
    at_least,
    check_registered,
    is_registered,
    number,
    one_of,
    registered_names,
)
from kdreid.errors import ConfigError


@pytest.mark.parametrize(
    "registry, some, count",
    [
        (DATASET_REGISTRY, {"Market1501", "DukeMTMC", "MSMT17", "SynthReIDTiny", "VeRi"}, 33),
        (BACKBONE_REGISTRY, {"build_resnet_backbone", "build_speedkd_mobilenetv1_backbone"}, 12),
        (META_ARCH_REGISTRY, {"Baseline", "Distiller", "KDReIDDistiller", "MDPR", "FKDStudent"}, 9),
    ],
)
def test_registered_names_list_fastreids_and_the_projects(registry, some, count):
    """FastReID 1.4.0 registers 30 datasets, 11 backbones, 4 meta-architectures; kdreid and the
    projects 3, 1 and 5."""
    get_cfg()  # loads every project: their models are registered too
    names = registered_names(registry)
    assert some <= set(names) and names == sorted(set(names))
    assert all(is_registered(registry, name) for name in names)
    assert len(names) == count


def test_a_registry_of_its_own():
    registry = Registry("TEST")

    @registry.register()
    class Mine:
        pass

    assert is_registered(registry, "Mine") and not is_registered(registry, "Other")
    with pytest.raises(ConfigError, match="KEY names 'Other', which is not a registered thing"):
        check_registered(registry, ["Mine", "Other"], "KEY", "thing")
    with pytest.raises(ConfigError, match="KEY is empty"):
        check_registered(registry, [], "KEY", "thing")


def test_values_name_their_key():
    cfg = get_cfg()
    cfg.SOLVER.MAX_EPOCH = 0
    with pytest.raises(ConfigError, match="SOLVER.MAX_EPOCH must be a positive integer, got 0"):
        at_least(cfg, "SOLVER.MAX_EPOCH", 1)
    cfg.SOLVER.BASE_LR = True  # a bool is not a number here
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR must be a number above 0"):
        number(cfg, "SOLVER.BASE_LR", 0.0, low_open=True)
    assert one_of(cfg, "TEST.METRIC", ("cosine", "euclidean")) == "cosine"
    with pytest.raises(ConfigError, match="TEST.METRIC 'cosine' is not one of: a, b"):
        one_of(cfg, "TEST.METRIC", ("a", "b"))
