"""Config values that FastReID accepts and then fails on late, obscurely, or never (a sampler that
loops forever): checked once, before anything is built, with an error naming the key."""

import numbers

import torch
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm

from kdreid.config import check_device
from kdreid.errors import ConfigError

__all__ = [
    "check_config",
    "check_opts",
    "check_registered",
    "IDENTITY_SAMPLERS",
    "TEST_METRICS",
    "TRAINING_SAMPLERS",
]

IDENTITY_SAMPLERS = ("NaiveIdentitySampler", "BalancedIdentitySampler", "SetReWeightSampler")
"""FastReID's samplers that draw ``NUM_INSTANCE`` images of each identity in a batch; each yields a
batch only once it holds exactly the per-process batch, so one that ``NUM_INSTANCE`` does not
divide never comes and training hangs."""

TEST_METRICS = ("cosine", "euclidean")
"""``TEST.METRIC`` values the evaluator ranks with (FastReID's ``build_dist``)."""

TRAINING_SAMPLERS = ("TrainingSampler", "ImbalancedDatasetSampler", *IDENTITY_SAMPLERS)
"""``DATALOADER.SAMPLER_TRAIN`` values FastReID's training loader knows."""


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _at_least(cfg, key, low):
    """An integer ``>= low``."""
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive integer" if low == 1 else f"an integer of at least {low}"
        raise ConfigError(f"{key} must be {what}, got {value!r}.")
    return value


def _positive(cfg, key):
    return _at_least(cfg, key, 1)


def _number(cfg, key, low, high=None, low_open=False):
    """A real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    value = _value(cfg, key)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        where = f"{'above' if low_open else 'at least'} {low}" + (
            f" and at most {high}" if high is not None else ""
        )
        raise ConfigError(f"{key} must be a number {where}, got {value!r}.")
    return value


def _registered(registry, key, value, what):
    known = sorted(registry._obj_map)
    if value not in known:
        raise ConfigError(
            f"{key} '{value}' is not a registered {what}; registered: {', '.join(known)}."
        )


LR_SCHEDULERS = ("MultiStepLR", "CosineAnnealingLR")
"""``SOLVER.SCHED`` values FastReID's ``build_lr_scheduler`` builds."""

FASTREID_LOSSES = ("CrossEntropyLoss", "TripletLoss", "CircleLoss", "Cosface")
"""``MODEL.LOSSES.NAME`` entries FastReID's ``Baseline.losses`` knows; it ignores any other name,
and with none known, trains on a loss of ``0`` (which fails at the first ``backward``)."""


def _image_size(cfg, key):
    """``INPUT.SIZE_*``: FastReID resizes every image to ``[height, width]``."""
    size = cfg.INPUT[key.split(".")[-1]]
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size)
    ):
        raise ConfigError(
            f"{key} must be [height, width] in pixels, two positive integers (e.g. [256, 128]); "
            f"got {size!r}."
        )


def check_registered(names, key):
    """Every name in ``names`` is a registered dataset; ``key`` says where they came from.

    Raises:
        ConfigError: an unknown or no name, listing the registered ones.
    """
    known = sorted(DATASET_REGISTRY._obj_map)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(
            f"{key} names {', '.join(repr(n) for n in unknown)}, which is not a registered "
            f"dataset; registered: {', '.join(known)}."
        )
    if not names:
        raise ConfigError(f"{key} is empty: name at least one dataset ({', '.join(known)}).")


def check_opts(opts):
    """``KEY VALUE`` overrides come last on a command line and take everything after them: a flag
    among them (``... MODEL.WEIGHTS w.pth --eval-only``) was meant for the parser.

    Raises:
        ConfigError: naming the flag and where it goes.
    """
    flags = [item for item in opts if str(item).startswith("--")]
    if flags:
        raise ConfigError(
            f"'{flags[0]}' comes after the KEY VALUE config options, which take everything that "
            "follows them: put the flags first, then the KEY VALUE pairs."
        )


def check_config(cfg, training=True):
    """Refuse values that cannot work, before any model or data loader is built.

    Always: ``TEST.IMS_PER_BATCH`` >= 1, ``DATASETS.TESTS`` registered, ``TEST.METRIC`` one the
    evaluator ranks with, ``INPUT.SIZE_TEST`` a ``[height, width]``. For training also:
    ``INPUT.SIZE_TRAIN`` a ``[height, width]``,
    ``SOLVER.IMS_PER_BATCH`` and ``SOLVER.MAX_EPOCH`` >= 1, ``DATASETS.NAMES`` registered, a known
    ``DATALOADER.SAMPLER_TRAIN``, and for identity samplers a batch that splits evenly over the
    processes and then into ``DATALOADER.NUM_INSTANCE`` images per identity.

    Args:
        cfg: the merged config.
        training (bool): the run trains (not ``--eval-only``).

    Raises:
        ConfigError: naming the key, its value and what would work.
    """
    _positive(cfg, "TEST.IMS_PER_BATCH")
    _image_size(cfg, "INPUT.SIZE_TEST")
    _at_least(cfg, "DATALOADER.NUM_WORKERS", 0)
    if str(cfg.MODEL.DEVICE) != "auto":
        check_device(str(cfg.MODEL.DEVICE))
    _registered(META_ARCH_REGISTRY, "MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, "model")
    _registered(BACKBONE_REGISTRY, "MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, "backbone")
    if cfg.TEST.RERANK.ENABLED:
        _positive(cfg, "TEST.RERANK.K1")
        _positive(cfg, "TEST.RERANK.K2")
        _number(cfg, "TEST.RERANK.LAMBDA", 0.0, 1.0)
    if cfg.TEST.AQE.ENABLED:
        _positive(cfg, "TEST.AQE.QE_TIME")
        _positive(cfg, "TEST.AQE.QE_K")
        _number(cfg, "TEST.AQE.ALPHA", 0.0)
    check_registered(list(cfg.DATASETS.TESTS), "DATASETS.TESTS")
    if cfg.TEST.METRIC not in TEST_METRICS:
        hint = (
            " (FastReID's 'jaccard' is the re-ranking distance: set TEST.RERANK.ENABLED True)"
            if cfg.TEST.METRIC == "jaccard"
            else ""
        )
        raise ConfigError(
            f"TEST.METRIC '{cfg.TEST.METRIC}' is not one of {', '.join(TEST_METRICS)}{hint}."
        )
    if not training:
        return
    _image_size(cfg, "INPUT.SIZE_TRAIN")
    batch = _positive(cfg, "SOLVER.IMS_PER_BATCH")
    _positive(cfg, "SOLVER.MAX_EPOCH")
    _positive(cfg, "SOLVER.CHECKPOINT_PERIOD")
    _at_least(cfg, "TEST.EVAL_PERIOD", 0)
    _at_least(cfg, "SOLVER.WARMUP_ITERS", 0)
    _number(cfg, "SOLVER.BASE_LR", 0.0, low_open=True)
    for key in ("SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.MOMENTUM"):
        _number(cfg, key, 0.0)
    if cfg.SOLVER.OPT != "SGD" and not isinstance(getattr(torch.optim, cfg.SOLVER.OPT, None), type):
        raise ConfigError(
            f"SOLVER.OPT '{cfg.SOLVER.OPT}' is not an optimizer of torch.optim (e.g. SGD, Adam, "
            "AdamW)."
        )
    if cfg.SOLVER.SCHED not in LR_SCHEDULERS:
        raise ConfigError(
            f"SOLVER.SCHED '{cfg.SOLVER.SCHED}' is not one of FastReID's schedulers: "
            f"{', '.join(LR_SCHEDULERS)}."
        )
    if cfg.MODEL.META_ARCHITECTURE == "Baseline":
        unknown = [name for name in cfg.MODEL.LOSSES.NAME if name not in FASTREID_LOSSES]
        if unknown or not cfg.MODEL.LOSSES.NAME:
            raise ConfigError(
                f"MODEL.LOSSES.NAME {tuple(cfg.MODEL.LOSSES.NAME)!r} names "
                + (f"{', '.join(map(repr, unknown))}, which FastReID's Baseline does not know"
                   if unknown else "no loss")
                + f"; use some of {', '.join(FASTREID_LOSSES)}."
            )  # fmt: skip
    check_registered(list(cfg.DATASETS.NAMES), "DATASETS.NAMES")
    sampler = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler not in TRAINING_SAMPLERS:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{sampler}' is not a training sampler of FastReID's; use "
            f"one of {', '.join(TRAINING_SAMPLERS)}."
        )
    if sampler not in IDENTITY_SAMPLERS:
        return
    instances = _positive(cfg, "DATALOADER.NUM_INSTANCE")
    world = comm.get_world_size()
    if batch % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} does not split evenly over {world} processes."
        )
    per_process = batch // world
    if per_process % instances:
        where = f" per process ({batch} / {world})" if world > 1 else ""
        raise ConfigError(
            f"{sampler} fills each batch with DATALOADER.NUM_INSTANCE {instances} images per "
            f"identity, which does not divide the batch of {per_process}{where} "
            f"(SOLVER.IMS_PER_BATCH): the sampler would never complete a batch. Use a multiple "
            f"of {instances} for the batch, or a NUM_INSTANCE that divides {per_process}."
        )
