"""kdreid.config: one get_cfg with every extension, clear errors for unknown keys, device choice."""

import glob
import logging
import os

import pytest
import torch

from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.errors import ConfigError

from .conftest import REPO


def test_get_cfg_applies_every_extension():
    cfg = get_cfg()
    for node in ("MDPR", "FKD", "SPEEDKD"):
        assert node in cfg.MODEL, node
    assert cfg.KDREID.LOG_PERIOD > 0
    assert cfg.MODEL.DEVICE == "auto"


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yml"), recursive=True))
)
def test_every_committed_config_loads(path):
    from fastreid.data.datasets import DATASET_REGISTRY

    cfg = get_cfg()
    merge_from_file(cfg, path)
    for name in (*cfg.DATASETS.NAMES, *cfg.DATASETS.TESTS):
        assert DATASET_REGISTRY.get(name)  # raises KeyError on a misspelt dataset


def test_leaf_configs_inherit_from_bases():
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, "configs", "Market1501", "sbs_R50.yml"))
    assert cfg.MODEL.BACKBONE.WITH_IBN and cfg.MODEL.HEADS.CLS_LAYER == "CircleSoftmax"
    assert cfg.MODEL.LOSSES.CE.EPSILON == 0.1  # from Base-bagtricks, two levels up


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("MODEL:\n  BACKBONE:\n    DEPHT: 18x\n")
    with pytest.raises(ConfigError) as info:
        merge_from_file(get_cfg(), str(path))
    message = str(info.value)
    assert "MODEL.BACKBONE.DEPHT" in message and "bad.yml" in message
    assert "MODEL.BACKBONE.DEPTH" in message  # the suggestion


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(ConfigError, match="SOLVER.MAX_EPOCHS"):
        merge_from_list(get_cfg(), ["SOLVER.MAX_EPOCHS", "3"])
    with pytest.raises(ConfigError, match="SOLVER.MAX_EPOCH"):
        merge_from_list(get_cfg(), ["SOLVER.MAX_EPOCH", "three"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        merge_from_list(get_cfg(), ["SOLVER.MAX_EPOCH"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nope.yml"):
        merge_from_file(get_cfg(), "nope.yml")


def test_device_auto(monkeypatch, caplog):
    cfg = get_cfg()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="kdreid.config"):
        assert resolve_device(cfg) == "cpu"
    assert sum("Running on cpu" in r.message for r in caplog.records) == 1

    cfg = get_cfg()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    assert resolve_device(cfg) == "cuda"


def test_cuda_without_gpu_falls_back_and_amp_is_switched_off(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda"
    cfg.SOLVER.AMP.ENABLED = True
    with caplog.at_level(logging.WARNING, logger="kdreid.config"):
        assert resolve_device(cfg) == "cpu"
    assert "no GPU" in caplog.text
    assert cfg.SOLVER.AMP.ENABLED is False


def test_bad_device_name():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "gpu0"
    with pytest.raises(ConfigError, match="gpu0"):
        resolve_device(cfg)
