"""kdreid.cli: what the scripts share (output folders, KEY VALUE options, argparse ranges, the
inference model of a config)."""

import argparse
import os

import pytest
import torch

from kdreid.cli import (
    at_least,
    build_inference_model,
    check_output_dir,
    finite_above,
    finite_at_least,
    parse_with_opts,
)
from kdreid.errors import ConfigError, OutputDirError, WeightsError

from .conftest import REPO

TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")


def _parser():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--views", nargs="+", default=[])
    parser.add_argument("--runs", type=at_least(1), default=1)
    parser.add_argument("--tolerance", type=finite_at_least(0), default=0.0)
    parser.add_argument("--scale", type=finite_above(0), default=1.0)
    return parser


def test_key_value_options_start_at_the_first_config_key():
    args = parse_with_opts(_parser(), ["--views", "Up1", "Dn1", "SOLVER.MAX_EPOCH", "1"])
    assert args.views == ["Up1", "Dn1"] and args.opts == ["SOLVER.MAX_EPOCH", "1"]
    args = parse_with_opts(_parser(), ["--views", "Up1", "--", "SOLVER.MAX_EPOCH", "1"])
    assert args.views == ["Up1"] and args.opts == ["SOLVER.MAX_EPOCH", "1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["SOLVER.MAX_EPOCH"], "options come in KEY VALUE pairs"),
        (["--runs", "0"], "argument --runs: must be 1 or more, got 0"),
        (["--runs", "two"], "argument --runs: expected an integer, got 'two'"),
        (["--tolerance", "-1"], "argument --tolerance: must be a finite number of 0 or more"),
        (["--tolerance", "nan"], "argument --tolerance: must be a finite number of 0 or more"),
        (["--scale", "0"], "argument --scale: must be a finite number above 0, got 0"),
    ],
)
def test_bad_command_lines_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_with_opts(_parser(), argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_an_output_dir_is_checked_and_nothing_is_left(tmp_path):
    deep = tmp_path / "a" / "b"
    check_output_dir(str(deep))
    assert not (tmp_path / "a").exists()  # made when the first file is written, not now
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match="--out: Cannot write the output folder"):
        check_output_dir(str(tmp_path / "file" / "x"), "--out")


def test_the_inference_model_of_a_config(tmp_path):
    """Built as --eval-only builds it: checked, no ImageNet weights, MODEL.WEIGHTS loaded
    strictly, evaluation mode; ``check`` sees the merged config before anything is built."""
    cfg, model = build_inference_model(TINY, ["MODEL.HEADS.NUM_CLASSES", "4"], load_weights=False)
    assert cfg.is_frozen() and not cfg.MODEL.BACKBONE.PRETRAIN and not model.training
    weights = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, weights)
    opts = ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.WEIGHTS", str(weights)]
    seen = []
    _, loaded = build_inference_model(TINY, opts, device="cpu", check=seen.append)
    assert seen and seen[0].MODEL.WEIGHTS == str(weights)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  loaded.state_dict().values()))  # fmt: skip
    with pytest.raises(WeightsError, match="No weights given"):
        build_inference_model(TINY)
    with pytest.raises(ConfigError, match="TEST.METRIC 'l2'"):  # stage 1 of the validation
        build_inference_model(TINY, ["TEST.METRIC", "l2"])
    with pytest.raises(ConfigError, match="comes after the KEY VALUE config options"):
        build_inference_model(TINY, ["MODEL.WEIGHTS", "w.pth", "--eval-only"])
