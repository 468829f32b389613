"""kdreid.config: one get_cfg with every extension, clear errors for unknown keys, device choice."""

import glob
import logging
import os

import pytest
import torch

from kdreid import config
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


def test_cuda_without_gpu_falls_back_to_the_cpu(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cuda"
    with caplog.at_level(logging.WARNING, logger="kdreid.config"):
        assert resolve_device(cfg) == "cpu"
    assert "no GPU" in caplog.text


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("cpu_amp", ["native", "always"])
def test_mixed_precision_on_the_cpu_is_bfloat16_where_it_is_native(
    native, cpu_amp, monkeypatch, caplog
):
    """bfloat16 autocast on a CPU with bfloat16 units, or when forced; elsewhere float32, said."""
    monkeypatch.setattr(config, "native_bfloat16", lambda: native)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.AMP.ENABLED = True
    cfg.KDREID.EVAL_AUTOCAST = True
    cfg.KDREID.CPU_AMP = cpu_amp
    with caplog.at_level(logging.INFO, logger="kdreid.config"):
        resolve_device(cfg)
    runs = native or cpu_amp == "always"
    assert cfg.SOLVER.AMP.ENABLED is runs and cfg.KDREID.EVAL_AUTOCAST is runs
    if runs:
        assert "Mixed precision training: torch.bfloat16 autocast." in caplog.text
    else:
        assert "SOLVER.AMP.ENABLED ignored: this CPU" in caplog.text
        assert "KDREID.EVAL_AUTOCAST ignored: this CPU" in caplog.text
    assert config.autocast_dtype("cpu") == torch.bfloat16
    assert config.autocast_dtype("cuda:0") == torch.float16


def test_bad_device_name():
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "gpu0"
    with pytest.raises(ConfigError, match="gpu0"):
        resolve_device(cfg)


def _config_error(path) -> str:
    with pytest.raises(ConfigError) as info:
        merge_from_file(get_cfg(), str(path))
    return str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("MODEL:\n  BACKBONE:\n    DEPTH: 18x\n   NORM: BN\n")
    message = _config_error(path)
    assert f"Config file '{path}' is not valid YAML" in message
    assert "(line 4, column 4)" in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- MODEL\n- SOLVER\n", "hello\n"])
def test_config_file_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "notmap.yml"
    path.write_text(text)
    message = _config_error(path)
    assert f"'{path}'" in message and "mapping of config keys" in message


def test_missing_base_is_named_with_its_resolved_path(tmp_path):
    path = tmp_path / "leaf.yml"
    path.write_text("_BASE_: nothere.yml\nSOLVER:\n  MAX_EPOCH: 3\n")
    message = _config_error(path)
    resolved = os.path.join(str(tmp_path), "nothere.yml")
    assert f"Config file '{path}' names _BASE_ 'nothere.yml' ('{resolved}')" in message
    assert "does not exist" in message


def test_errors_inside_a_base_name_the_base(tmp_path):
    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub" / "base.yml"
    leaf = tmp_path / "leaf.yml"
    leaf.write_text("_BASE_: sub/base.yml\nSOLVER:\n  MAX_EPOCH: 3\n")
    base.write_text("SOLVER:\n  MAX_EPOCH: 3\n IMS_PER_BATCH: 2\n")
    message = _config_error(leaf)
    assert "base.yml' is not valid YAML" in message and "(line 3, column 2)" in message
    base.write_text("SOLVER:\n  MAX_EPOCHS: 3\n")
    message = _config_error(leaf)
    assert "SOLVER.MAX_EPOCHS" in message and "base.yml'" in message and "leaf.yml" not in message


def test_base_loop_is_refused(tmp_path):
    path = tmp_path / "self.yml"
    path.write_text("_BASE_: self.yml\n")
    assert "loop" in _config_error(path)


def test_url_base_is_refused_naming_it(tmp_path):
    # FastReID opens the URL as a path and fails with a FileNotFoundError traceback
    path = tmp_path / "leaf.yml"
    path.write_text("_BASE_: https://example.org/base.yml\n")
    message = _config_error(path)
    assert f"Config file '{path}' has _BASE_ 'https://example.org/base.yml', a URL" in message
    assert "local files only" in message


def test_device_as_base_is_refused(tmp_path):
    # /dev/zero "exists" and reading it never ends; it was reported as "does not exist"
    path = tmp_path / "leaf.yml"
    path.write_text("_BASE_: /dev/zero\n")
    message = _config_error(path)
    assert "'/dev/zero'), which is not a regular file (a character device); expected a" in message
    os.mkfifo(tmp_path / "pipe.yml")
    path.write_text("_BASE_: pipe.yml\n")
    assert "is not a regular file (a named pipe)" in _config_error(path)


def test_directory_as_config_file(tmp_path):
    message = _config_error(tmp_path)
    assert f"'{tmp_path}' is a directory, not a YAML file" in message


def test_int_for_float_key_on_command_line():
    cfg = get_cfg()
    merge_from_list(cfg, ["MODEL.SPEEDKD.TEMPERATURE", "2"])
    assert cfg.MODEL.SPEEDKD.TEMPERATURE == 2.0
    assert type(cfg.MODEL.SPEEDKD.TEMPERATURE) is float


def test_int_for_float_key_in_file(tmp_path):
    path = tmp_path / "int.yml"
    path.write_text("MODEL:\n  SPEEDKD:\n    TEMPERATURE: 2\n")
    cfg = get_cfg()
    merge_from_file(cfg, str(path))
    assert cfg.MODEL.SPEEDKD.TEMPERATURE == 2.0
    assert type(cfg.MODEL.SPEEDKD.TEMPERATURE) is float


def test_bool_for_float_key_is_still_refused():
    with pytest.raises(ConfigError, match="expects a float"):
        merge_from_list(get_cfg(), ["MODEL.SPEEDKD.TEMPERATURE", "True"])


def test_string_for_float_key_is_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        merge_from_list(get_cfg(), ["MODEL.SPEEDKD.TEMPERATURE", "warm"])
    message = str(info.value)
    assert "MODEL.SPEEDKD.TEMPERATURE" in message and "'warm'" in message
    assert "expects a float" in message and "command-line" in message

    base = tmp_path / "base.yml"
    base.write_text("MODEL:\n  SPEEDKD:\n    TEMPERATURE: warm\n")
    leaf = tmp_path / "leaf.yml"
    leaf.write_text("_BASE_: base.yml\n")
    message = _config_error(leaf)
    assert "MODEL.SPEEDKD.TEMPERATURE" in message and "'warm'" in message
    assert "expects a float" in message and f"'{base}'" in message
