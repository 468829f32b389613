"""Stage 1, the config alone: values that FastReID accepts and then fails on late, obscurely, or
never (a sampler that loops forever), refused before anything is built with an error naming the
key."""

import torch
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.modeling.backbones import BACKBONE_REGISTRY
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm

from kdreid.config import check_device
from kdreid.distill.distiller import FEATURE_LOSSES, LOGIT_LOSSES, KDReIDDistiller
from kdreid.engine.validation.values import (
    at_least,
    check_registered,
    image_size,
    number,
    one_of,
    positive,
    registered,
)
from kdreid.errors import ConfigError
from kdreid.meta_arch import contract

__all__ = [
    "check_core_config",
    "check_distiller",
    "check_opts",
    "check_processes",
    "SYNC_NORMS",
    "FASTREID_LOSSES",
    "IDENTITY_SAMPLERS",
    "LR_SCHEDULERS",
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


LR_SCHEDULERS = ("MultiStepLR", "CosineAnnealingLR")
"""``SOLVER.SCHED`` values FastReID's ``build_lr_scheduler`` builds."""

FASTREID_LOSSES = ("CrossEntropyLoss", "TripletLoss", "CircleLoss", "Cosface")
"""``MODEL.LOSSES.NAME`` entries FastReID's ``Baseline.losses`` knows; it ignores any other name,
and with none known, trains on a loss of ``0`` (which fails at the first ``backward``)."""


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


def check_core_config(cfg, training=True, world_size=None):
    """Refuse values of FastReID's and kdreid's keys that cannot work.

    Always: ``TEST.IMS_PER_BATCH`` >= 1, ``DATASETS.TESTS`` registered, ``TEST.METRIC`` one the
    evaluator ranks with, ``INPUT.SIZE_TEST`` a ``[height, width]``. For training also:
    ``INPUT.SIZE_TRAIN`` a ``[height, width]``,
    ``SOLVER.IMS_PER_BATCH`` and ``SOLVER.MAX_EPOCH`` >= 1, ``DATASETS.NAMES`` registered, a known
    ``DATALOADER.SAMPLER_TRAIN``, and for identity samplers a batch that splits evenly over the
    processes and then into ``DATALOADER.NUM_INSTANCE`` images per identity. On several processes,
    what :func:`check_processes` checks.

    Args:
        cfg: the merged config.
        training (bool): the run trains (not ``--eval-only``).
        world_size (int): the processes the run will have (default: the process group's).

    Raises:
        ConfigError: naming the key, its value and what would work.
    """
    world = comm.get_world_size() if world_size is None else world_size
    positive(cfg, "TEST.IMS_PER_BATCH")
    check_processes(cfg, world, training)
    image_size(cfg, "INPUT.SIZE_TEST")
    at_least(cfg, "DATALOADER.NUM_WORKERS", 0)
    one_of(cfg, "KDREID.CPU_AMP", ("native", "always"))
    if str(cfg.MODEL.DEVICE) != "auto":
        check_device(str(cfg.MODEL.DEVICE))
    registered(META_ARCH_REGISTRY, "MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE, "model")
    registered(BACKBONE_REGISTRY, "MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, "backbone")
    if training and not contract(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)).trainable:
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} is an evaluation-only model: "
            "run it with --eval-only."
        )
    if cfg.TEST.RERANK.ENABLED:
        positive(cfg, "TEST.RERANK.K1")
        positive(cfg, "TEST.RERANK.K2")
        number(cfg, "TEST.RERANK.LAMBDA", 0.0, 1.0)
    if cfg.TEST.AQE.ENABLED:
        positive(cfg, "TEST.AQE.QE_TIME")
        positive(cfg, "TEST.AQE.QE_K")
        number(cfg, "TEST.AQE.ALPHA", 0.0)
    check_registered(DATASET_REGISTRY, list(cfg.DATASETS.TESTS), "DATASETS.TESTS", "dataset")
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
    image_size(cfg, "INPUT.SIZE_TRAIN")
    batch = positive(cfg, "SOLVER.IMS_PER_BATCH")
    positive(cfg, "SOLVER.MAX_EPOCH")
    positive(cfg, "SOLVER.CHECKPOINT_PERIOD")
    at_least(cfg, "TEST.EVAL_PERIOD", 0)
    at_least(cfg, "SOLVER.WARMUP_ITERS", 0)
    number(cfg, "SOLVER.BASE_LR", 0.0, low_open=True)
    for key in ("SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.MOMENTUM"):
        number(cfg, key, 0.0)
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
    check_registered(DATASET_REGISTRY, list(cfg.DATASETS.NAMES), "DATASETS.NAMES", "dataset")
    sampler = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler not in TRAINING_SAMPLERS:
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN '{sampler}' is not a training sampler of FastReID's; use "
            f"one of {', '.join(TRAINING_SAMPLERS)}."
        )
    if batch % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} (the global batch) does not split evenly over {world} "
            f"processes: use a multiple of {world}."
        )
    if sampler not in IDENTITY_SAMPLERS:
        return
    instances = positive(cfg, "DATALOADER.NUM_INSTANCE")
    per_process = batch // world
    if per_process % instances:
        where = f" per process ({batch} / {world})" if world > 1 else ""
        raise ConfigError(
            f"{sampler} fills each batch with DATALOADER.NUM_INSTANCE {instances} images per "
            f"identity, which does not divide the batch of {per_process}{where} "
            f"(SOLVER.IMS_PER_BATCH): the sampler would never complete a batch. Use a multiple "
            f"of {instances} for the batch, or a NUM_INSTANCE that divides {per_process}."
        )


SYNC_NORMS = ("syncBN",)
"""``*.NORM`` values of FastReID's ``get_norm`` that synchronise statistics across processes
(torch's ``SyncBatchNorm``, which runs on CUDA only)."""


def _requested_device(cfg):
    device = str(cfg.MODEL.DEVICE)
    if device == "auto" or (device.startswith("cuda") and not torch.cuda.is_available()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_processes(cfg, world_size, training=True):
    """What a run on ``world_size`` processes needs: a test batch of at least one image per
    process (FastReID splits ``TEST.IMS_PER_BATCH`` over them) and, on the CPU, no synchronised
    BatchNorm (torch's ``SyncBatchNorm`` is CUDA-only).

    Raises:
        ConfigError: naming the key.
    """
    if world_size <= 1:
        return
    if cfg.TEST.IMS_PER_BATCH < world_size:
        raise ConfigError(
            f"TEST.IMS_PER_BATCH {cfg.TEST.IMS_PER_BATCH} is split over {world_size} processes "
            f"(the global test batch): use at least {world_size}."
        )
    if not training or _requested_device(cfg) != "cpu":
        return
    for key in ("MODEL.BACKBONE.NORM", "MODEL.HEADS.NORM"):
        node, name = cfg, key.split(".")
        for part in name:
            node = getattr(node, part, None)
        if node in SYNC_NORMS:
            raise ConfigError(
                f"{key} {node}: torch's SyncBatchNorm runs on CUDA only, and these "
                f"{world_size} processes train on the CPU; use BN (each process normalises its "
                "own share of the batch)."
            )


def check_distiller(cfg, training=True):
    """``KDREID.DISTILL`` of a :class:`~kdreid.distill.KDReIDDistiller` (or a subclass): a
    registered student, losses it knows and a positive temperature (it is built with them), and
    for training weights and a warm-up that are not negative.

    Raises:
        ConfigError: naming the key and the valid values.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if not issubclass(arch, KDReIDDistiller):
        return
    registered(META_ARCH_REGISTRY, "KDREID.DISTILL.STUDENT", cfg.KDREID.DISTILL.STUDENT, "model")
    d = cfg.KDREID.DISTILL  # the losses and temperature: the distiller is built with them
    if d.LOGIT_LOSS not in LOGIT_LOSSES:
        raise ConfigError(
            f"KDREID.DISTILL.LOGIT_LOSS '{d.LOGIT_LOSS}' is not a logit distillation loss; valid: "
            f"{', '.join(LOGIT_LOSSES)}."
        )
    one_of(cfg, "KDREID.DISTILL.FEATURE_LOSS", FEATURE_LOSSES)
    if not d.TEMPERATURE > 0:
        raise ConfigError(
            f"KDREID.DISTILL.TEMPERATURE: the distillation temperature must be > 0, got "
            f"{d.TEMPERATURE}."
        )
    if not training:
        return
    for key in ("LOGIT_WEIGHT", "FEATURE_WEIGHT", "RELATION_WEIGHT", "CE_WEIGHT"):
        number(cfg, f"KDREID.DISTILL.{key}", 0.0)
    at_least(cfg, "KDREID.DISTILL.WARMUP_ITERS", 0)
