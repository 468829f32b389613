"""Config keys of the SpeedKD project, under ``MODEL.SPEEDKD``, and the project's checks.

The checks are the project's part of kdreid's validation layer (:mod:`kdreid.engine.validation`):
:func:`check_speed_kd_config` before anything is built (stage 1), :func:`check_speed_kd_built` once
the model exists (stage 2).
"""

from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from kdreid.config import get_cfg
from kdreid.engine.validation.values import is_registered
from kdreid.errors import ConfigError
from kdreid.meta_arch import unwrap
from kdreid.projects import Project
from speed_kd.distiller import SpeedKDDistiller
from speed_kd.imagenet_weights import pretrained_state
from speed_kd.mobilenet_v1 import WIDTH_MULTIPLIERS, output_channels

__all__ = ["PROJECT", "add_speed_kd_config", "check_speed_kd_built", "check_speed_kd_config"]

MOBILENET_V1 = "build_speedkd_mobilenetv1_backbone"
"""``MODEL.BACKBONE.NAME`` of the MobileNet v1 backbone (:mod:`speed_kd.mobilenet_v1`)."""

# KDReIDDistiller's loss keys, which SpeedKDDistiller sets from MODEL.SPEEDKD instead.
_OVERRIDDEN_KEYS = (
    "CE_WEIGHT",
    "LOGIT_LOSS",
    "TEMPERATURE",
    "LOGIT_WEIGHT",
    "FEATURE_LOSS",
    "FEATURE_WEIGHT",
    "RELATION_WEIGHT",
)
# What works when the teacher's identities are not the student's (checked on SynthReID-tiny).
_FEATURES_ONLY = (
    "MODEL.SPEEDKD.LAMBDA 0 MODEL.SPEEDKD.HINT_WEIGHT 1 (SpeedKD's feature hint alone), or "
    "MODEL.META_ARCHITECTURE KDReIDDistiller KDREID.DISTILL.LOGIT_LOSS none "
    "KDREID.DISTILL.FEATURE_LOSS l2 KDREID.DISTILL.FEATURE_WEIGHT 1"
)


def add_speed_kd_config(cfg):
    """Add the ``MODEL.SPEEDKD`` node: Hinton distillation as :class:`SpeedKDDistiller` trains.

    The paper's values of T and lambda were not available to us (only its abstract); the defaults
    are ours: lambda 0.9 did better than 0.5 on SynthReID over three seeds (see
    projects/SpeedKD/README.md), T 4 is Hinton et al.'s usual range.

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.SPEEDKD = CfgNode()
    # Temperature T of the softened distributions (> 0); the KD term is scaled by T^2.
    cfg.MODEL.SPEEDKD.TEMPERATURE = 4.0
    # lambda in L = (1 - lambda) CE(y, z_s) + lambda T^2 KL(p_t || p_s) (+ triplet), in [0, 1].
    cfg.MODEL.SPEEDKD.LAMBDA = 0.9
    # Weight of the optional hint: L2 between a linear projection of the student's embedding and
    # the teacher's (0: off, the paper's formulation).
    cfg.MODEL.SPEEDKD.HINT_WEIGHT = 0.0


def check_speed_kd_config(cfg, training=True):
    """Stage 1: SpeedKD's keys, before anything is built.

    With ``MODEL.BACKBONE.NAME`` the MobileNet v1 backbone: a known ``DEPTH`` (width), a
    ``LAST_STRIDE`` of 1 or 2 and a ``FEAT_DIM`` equal to its output channels. With
    ``MODEL.META_ARCHITECTURE`` a :class:`~speed_kd.distiller.SpeedKDDistiller`:
    ``MODEL.SPEEDKD.TEMPERATURE`` > 0 (the distiller is not built without one, even for
    evaluation), and for training ``LAMBDA`` in [0, 1], ``HINT_WEIGHT`` >= 0 and the loss keys of
    ``KDREID.DISTILL`` left at their defaults (SpeedKD's loss is set by ``MODEL.SPEEDKD``: a change
    there would be ignored).

    Args:
        cfg: the merged config.
        training (bool): the run trains (False: ``--eval-only`` or an inference tool).

    Raises:
        ConfigError: naming the key, its value and what would work.
    """
    if cfg.MODEL.BACKBONE.NAME == MOBILENET_V1:
        _check_mobilenet_v1(cfg.MODEL.BACKBONE)
    arch = cfg.MODEL.META_ARCHITECTURE
    if not (is_registered(META_ARCH_REGISTRY, arch)
            and issubclass(META_ARCH_REGISTRY.get(arch), SpeedKDDistiller)):  # fmt: skip
        return
    s = cfg.MODEL.SPEEDKD
    if s.TEMPERATURE <= 0:
        raise ConfigError(f"MODEL.SPEEDKD.TEMPERATURE must be > 0, got {s.TEMPERATURE}.")
    if not training:
        return
    if not 0.0 <= s.LAMBDA <= 1.0:
        raise ConfigError(f"MODEL.SPEEDKD.LAMBDA must be in [0, 1], got {s.LAMBDA}.")
    if s.HINT_WEIGHT < 0:
        raise ConfigError(f"MODEL.SPEEDKD.HINT_WEIGHT must be >= 0, got {s.HINT_WEIGHT}.")
    defaults = get_cfg().KDREID.DISTILL
    changed = [k for k in _OVERRIDDEN_KEYS if cfg.KDREID.DISTILL[k] != defaults[k]]
    if changed:
        raise ConfigError(
            f"SpeedKDDistiller does not read KDREID.DISTILL.{changed[0]} (set to "
            f"{cfg.KDREID.DISTILL[changed[0]]!r}): its loss is set by "
            "MODEL.SPEEDKD.{LAMBDA, TEMPERATURE, HINT_WEIGHT}. To distil features only use "
            f"{_FEATURES_ONLY}; to set KDREID.DISTILL.* use MODEL.META_ARCHITECTURE "
            "KDReIDDistiller."
        )


def _check_mobilenet_v1(b):
    """``MODEL.BACKBONE`` (``b``) of the MobileNet v1 backbone."""
    if b.DEPTH not in WIDTH_MULTIPLIERS:
        raise ConfigError(
            f"MODEL.BACKBONE.DEPTH '{b.DEPTH}' is not a MobileNet v1 width; use one of "
            f"{', '.join(WIDTH_MULTIPLIERS)}."
        )
    if b.LAST_STRIDE not in (1, 2):
        raise ConfigError(f"MODEL.BACKBONE.LAST_STRIDE must be 1 or 2, got {b.LAST_STRIDE}.")
    channels = output_channels(WIDTH_MULTIPLIERS[b.DEPTH])
    if b.FEAT_DIM != channels:
        raise ConfigError(
            f"MODEL.BACKBONE.FEAT_DIM is {b.FEAT_DIM} but MobileNet v1 {b.DEPTH} outputs "
            f"{channels} channels: set MODEL.BACKBONE.FEAT_DIM {channels}."
        )


def check_speed_kd_built(cfg, model, train_set):
    """Stage 2: Hinton's term (``MODEL.SPEEDKD.LAMBDA`` > 0) compares the teacher's and the
    student's identity logits, so every teacher of a :class:`~speed_kd.distiller.SpeedKDDistiller`
    must have been trained on the student's identities.

    Runs before the core's label-space check, whose advice names ``KDREID.DISTILL`` keys that
    SpeedKD refuses; this one names the setups that work with SpeedKD.

    Args:
        cfg: the config the model was built from.
        model: the built model (possibly in a DDP wrapper).
        train_set: the training set, or None (unused: the teachers and the student tell).

    Raises:
        ConfigError: a teacher of another number of identities than the student's classifier.
    """
    model = unwrap(model)
    lam = cfg.MODEL.SPEEDKD.LAMBDA
    if not isinstance(model, SpeedKDDistiller) or lam <= 0:
        return
    for teacher in model.teachers:
        if teacher.num_classes != model.num_classes:
            raise ConfigError(
                f"Teacher '{teacher.name}' was trained on {teacher.num_classes} "
                f"identities but the student's training set has {model.num_classes}: "
                f"SpeedKD's logit distillation (MODEL.SPEEDKD.LAMBDA {lam:g} > 0) "
                "needs the same label space. Train the teacher on the student's dataset "
                f"(DATASETS.NAMES), or distil features only: {_FEATURES_ONLY}."
            )


PROJECT = Project(
    add_config=add_speed_kd_config,
    check_config=check_speed_kd_config,
    check_built=check_speed_kd_built,
    pretrained_state=pretrained_state,
)
"""What the project plugs into kdreid (its ``kdreid.projects`` entry point)."""
