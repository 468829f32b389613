"""ImageNet weights (``MODEL.BACKBONE.PRETRAIN_PATH``): on disk, a checkpoint, the backbone's.

FastReID's backbone builders load the file with ``load_state_dict(strict=False)`` and only log
what did not fit, so a wrong file trains from random weights without a word (and a missing one is
downloaded). :meth:`kdreid.engine.Trainer.build_model` calls :func:`check_pretrained` right before
FastReID builds the model, and turns a failed load into :func:`load_error`'s message.
"""

import os

from fastreid.modeling.backbones import build_backbone

from kdreid.checkpoint import read_checkpoint
from kdreid.compat import checkpoint_format_problem
from kdreid.errors import ConfigError, WeightsError

__all__ = ["check_pretrained", "load_error", "MIN_PROVIDED"]

MIN_PROVIDED = 0.5
"""The least share of the backbone's parameters the file must provide, under the backbone's own
names and shapes (the rest keep their initialisation, as FastReID does)."""

_OPTION = "MODEL.BACKBONE.PRETRAIN_PATH"


def _expected(cfg):
    expected = f"ImageNet weights for MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}"
    if "resnet" in cfg.MODEL.BACKBONE.NAME:
        expected += f" (DEPTH {cfg.MODEL.BACKBONE.DEPTH})"
    return expected


def check_pretrained(cfg):
    """With ``MODEL.BACKBONE.PRETRAIN`` on, the file must be the backbone's weights.

    Reads the file as FastReID's builder does (its top-level dict, no code executed) and compares
    it with the backbone built from ``MODEL.BACKBONE`` without weights: the file must provide at
    least :data:`MIN_PROVIDED` of the backbone's parameters, under their names and shapes.

    Raises:
        ConfigError: ``PRETRAIN_PATH`` is not a file (kdreid downloads nothing).
        WeightsError: it is not a PyTorch checkpoint, or it provides too few of the backbone's
            parameters (the message gives an example name of each).
    """
    if not cfg.MODEL.BACKBONE.PRETRAIN:
        return
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.BACKBONE.PRETRAIN is on but {_OPTION} ('{path}') is not a file. kdreid "
            f"downloads nothing: put the ImageNet weights on disk and name them with {_OPTION}, "
            "or train from scratch with MODEL.BACKBONE.PRETRAIN False."
        )
    problem = checkpoint_format_problem(path)
    if problem:
        raise WeightsError(f"{_OPTION} '{path}' {problem}: it should hold {_expected(cfg)}.")
    content = read_checkpoint(path, _OPTION)
    keys = list(content) if isinstance(content, dict) else []
    probe_cfg = cfg.clone()
    probe_cfg.defrost()
    probe_cfg.MODEL.BACKBONE.PRETRAIN = False
    backbone = build_backbone(probe_cfg)
    shapes = {name: tuple(p.shape) for name, p in backbone.named_parameters()}
    provided = [
        name
        for name, shape in shapes.items()
        if name in content and getattr(content[name], "shape", None) == shape
    ]
    if shapes and len(provided) >= MIN_PROVIDED * len(shapes):
        return
    example_model = next((name for name in shapes if name not in provided), "(none)")
    example_file = next((k for k in keys if k not in shapes), keys[0] if keys else None)
    raise WeightsError(
        f"{_OPTION} '{path}' provides {len(provided)} of the {len(shapes)} parameters of the "
        f"backbone {type(backbone).__name__} (the backbone has e.g. '{example_model}', the file "
        f"has e.g. '{example_file or '(none: the file is empty)'}'). Expected {_expected(cfg)}, "
        "or MODEL.BACKBONE.PRETRAIN False to train from scratch."
    )


def load_error(cfg, exc):
    """The :class:`WeightsError` for ``exc``, a ``RuntimeError`` raised while FastReID built the
    model, when it is the backbone builder's load of ``PRETRAIN_PATH`` failing (weights of other
    shapes); else None."""
    message = str(exc).strip()
    if not (cfg.MODEL.BACKBONE.PRETRAIN and message.startswith("Error(s) in loading state_dict")):
        return None
    module = message.split(" for ", 1)[1].split(":", 1)[0] if " for " in message else "model"
    return WeightsError(
        f"{_OPTION} '{cfg.MODEL.BACKBONE.PRETRAIN_PATH}' does not fit the backbone {module}: "
        f"{message}\nExpected {_expected(cfg)}."
    )
