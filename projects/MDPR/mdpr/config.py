"""Config keys of the MDPR project, under ``MODEL.MDPR``, and their checks.

The official code keeps these as uncommented root-level keys (``ATTN_NUM``, ``PART_NUM``,
``ATTN_GUIDED``, ``FUSION_ENABLE``, ``DISTILLATION_ENABLE``); here they live under ``MODEL.MDPR``
with their meaning written beside them. The per-head cross-entropy and triplet terms keep
FastReID's keys (``MODEL.LOSSES.CE.*``, ``MODEL.LOSSES.TRI.*``) and the heads FastReID's
``MODEL.HEADS.*`` (pooling, classifier, scale, margin, BN-neck), as the official configs do.

:func:`check_mdpr_config` is the project's stage-1 check (:mod:`kdreid.engine.validation`): the
values that :class:`~mdpr.modeling.MDPR` cannot be built or run with, refused before anything is.
"""

from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from kdreid.distill import KDReIDDistiller
from kdreid.engine.validation.values import is_registered
from kdreid.errors import ConfigError
from kdreid.projects import Project
from mdpr.modeling import MDPR, final_map_rows

__all__ = ["PROJECT", "add_mdpr_config", "builds_mdpr", "check_mdpr_config"]

LOSS_WEIGHTS = ("DIVERSITY_WEIGHT", "MASS_WEIGHT", "DISTILLATION_WEIGHT", "BAP_WEIGHT")
"""The ``MODEL.MDPR`` keys that weigh loss terms: training keys, each ``>= 0``."""


def add_mdpr_config(cfg):
    """Add the ``MODEL.MDPR`` node with the official model's defaults.

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.MDPR = CfgNode()
    m = cfg.MODEL.MDPR
    # Hard content branch: number of equal horizontal stripes of the final map (P; official
    # PART_NUM). Each stripe gets its own embedding, head and descriptor slice (top stripe first).
    m.NUM_STRIPES = 2
    # Soft content branch: number of foreground attention maps (M; official ATTN_NUM). The attention
    # makers output M + 1 maps, the last being the background.
    m.NUM_PARTS = 2
    # Width E of every branch embedding (hard global, stripes, attention levels 4 and 3, each BAP
    # part); the fused map has 4E channels. 512 in the official configs.
    m.EMBEDDING_DIM = 512
    # Guide the level-3 attention with the (upsampled, 1x1-convolved) level-4 attention (official
    # ATTN_GUIDED). Off: level 3 makes its attention from its own features only.
    m.GUIDANCE = True
    # Fuse both branches into one 4E-channel map with its own head, loss and descriptor slice
    # (official FUSION_ENABLE). Off: no fusion modules, the descriptor is 4E shorter.
    m.FUSION = True
    # Mutual distillation between the hard-global and level-4 attention features through two
    # predictors (official DISTILLATION_ENABLE). Off: no predictors, no distillation term.
    m.DISTILLATION = True
    # Attention diversity (cosine between the BAP part vectors) and attention mass terms, per
    # level. The official MDPR meta-architecture ignores its switch for these; this one is honoured.
    m.DIVERSITY = True
    # Weight of each level's diversity term (sum over part pairs of the batch-mean cosine).
    m.DIVERSITY_WEIGHT = 1.0
    # Weight of each level's attention mass term (batch-mean sum of the foreground maps).
    m.MASS_WEIGHT = 0.001
    # Weight of the mutual distillation term (-1/2 of the two predictor-to-target cosines).
    m.DISTILLATION_WEIGHT = 1.0
    # Weight of the cross-entropy of the two BAP heads (each also scaled by MODEL.LOSSES.CE.SCALE).
    m.BAP_WEIGHT = 1.0


def builds_mdpr(cfg) -> bool:
    """Whether the model of ``cfg`` is (or, as a distiller's student, holds) an :class:`MDPR`.

    A :class:`~kdreid.distill.KDReIDDistiller` (and its subclasses) builds the student named by
    ``KDREID.DISTILL.STUDENT`` from the same config, so an MDPR student reads ``MODEL.MDPR`` too.
    """
    names = [cfg.MODEL.META_ARCHITECTURE]
    if is_registered(META_ARCH_REGISTRY, names[0]) and issubclass(
        META_ARCH_REGISTRY.get(names[0]), KDReIDDistiller
    ):
        names.append(cfg.KDREID.DISTILL.STUDENT)
    return any(
        is_registered(META_ARCH_REGISTRY, name) and issubclass(META_ARCH_REGISTRY.get(name), MDPR)
        for name in names
    )


def _at_least_one(cfg, key):
    got = cfg.MODEL.MDPR[key]
    if isinstance(got, bool) or not isinstance(got, int) or got < 1:
        raise ConfigError(f"MODEL.MDPR.{key} must be at least 1, got {got}.")
    return got


def check_mdpr_config(cfg, training=True):
    """Stage 1 (:func:`kdreid.engine.validation.check_config`): refuse an MDPR config that cannot
    build or run, before anything is built. Configs of other models pass untouched.

    Always (what building and evaluating need): a FastReID ResNet trunk
    (``MODEL.BACKBONE.NAME build_resnet_backbone``) without non-local blocks, ``NUM_STRIPES``,
    ``NUM_PARTS`` and ``EMBEDDING_DIM`` of at least 1, no more stripes than rows of the final map
    for ``INPUT.SIZE_TEST``, and fusion only with ``MODEL.BACKBONE.LAST_STRIDE 1``. For training
    also: no more stripes than rows for ``INPUT.SIZE_TRAIN``, and loss weights ``>= 0``.

    Args:
        cfg (CfgNode): the merged config.
        training (bool): the run trains (False: ``--eval-only`` or an inference tool).

    Raises:
        ConfigError: naming the key, its value and what would work.
    """
    if not builds_mdpr(cfg):
        return
    m, b = cfg.MODEL.MDPR, cfg.MODEL.BACKBONE
    if b.NAME != "build_resnet_backbone":
        raise ConfigError(
            "MDPR splits a FastReID ResNet trunk after layer2: MODEL.BACKBONE.NAME must be "
            f"build_resnet_backbone, got {b.NAME}."
        )
    if b.WITH_NL:
        raise ConfigError(
            "MDPR's trunk has no non-local blocks (the official model drops them): set "
            "MODEL.BACKBONE.WITH_NL False."
        )
    stripes = _at_least_one(cfg, "NUM_STRIPES")
    _at_least_one(cfg, "NUM_PARTS")
    _at_least_one(cfg, "EMBEDDING_DIM")
    for key in ("SIZE_TRAIN", "SIZE_TEST") if training else ("SIZE_TEST",):
        height = cfg.INPUT[key][0]
        rows = final_map_rows(height, b.LAST_STRIDE)
        if stripes > rows:
            raise ConfigError(
                f"MODEL.MDPR.NUM_STRIPES {stripes} is more than the {rows} rows of the final "
                f"feature map for INPUT.{key} height {height} (LAST_STRIDE {b.LAST_STRIDE}): use "
                f"at most {rows} stripes."
            )
    if m.FUSION and b.LAST_STRIDE != 1:
        raise ConfigError(
            "MODEL.MDPR.FUSION concatenates the level-3 and level-4 maps, which have the same "
            f"size only with MODEL.BACKBONE.LAST_STRIDE 1 (got {b.LAST_STRIDE}); set LAST_STRIDE "
            "1 or FUSION False."
        )
    if not training:
        return
    for key in LOSS_WEIGHTS:
        if m[key] < 0:
            raise ConfigError(f"MODEL.MDPR.{key} must be >= 0, got {m[key]}.")


PROJECT = Project(add_config=add_mdpr_config, check_config=check_mdpr_config)
"""What the project plugs into kdreid (its ``kdreid.projects`` entry point)."""
