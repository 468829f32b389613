"""Config keys of the FactorizedKD project, under ``MODEL.FKD``, and the project's checks.

A partial teacher is an ordinary FastReID model whose config sets ``MODEL.FKD.VIEW``; the keys of
the holistic student's terms (loss weights, factorization) are declared here for the FD-style
student. The teachers of the student and the members of the ensemble are named as every kdreid
distiller's are, by FastReID's ``KD.MODEL_CONFIG`` (each teacher run's ``config.yaml``, which
records its view) and ``KD.MODEL_WEIGHTS`` (its checkpoint), one per factor k.

:func:`check_fkd_config` is the project's stage-1 check (:mod:`kdreid.engine.validation`): a config
that cannot work is refused before anything is built, the teachers' own configs included (read,
not built). What only the files can tell (a missing or unfitting checkpoint) is reported by the
loaders that read them (:func:`factorized_kd.student.build_fkd_teachers`,
:meth:`factorized_kd.ensemble.FKDEnsemble.from_config`).
"""

from fastreid.config import CfgNode
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from factorized_kd.ensemble import FKDEnsemble
from factorized_kd.student import FACTOR_MODES, FKDStudent
from factorized_kd.views import HOLISTIC, VIEW_NAMES, VIEW_TABLES, view_fractions
from kdreid.config import get_cfg, merge_from_file
from kdreid.distill.teacher import embedding_dim
from kdreid.engine.validation.values import is_registered
from kdreid.errors import ConfigError
from kdreid.projects import Project

__all__ = [
    "FACTOR_MODES",
    "PROJECT",
    "add_factorized_kd_config",
    "check_fkd_config",
    "check_fkd_keys",
    "is_partial",
]


def add_factorized_kd_config(cfg):
    """Add the ``MODEL.FKD`` node with its defaults.

    Args:
        cfg (CfgNode): a config (the root), modified in place.
    """
    cfg.MODEL.FKD = CfgNode()
    f = cfg.MODEL.FKD
    # The view this model sees, in training and in evaluation alike: "" (or "Holistic") for the
    # whole image, else a partial view of the paper's Figure 1: Up1, Mid1, Dn1 (4 stripes), Up2,
    # Mid2, Dn2 (7 stripes). Its rows are cut from the full image before INPUT.SIZE_* resizing.
    f.VIEW = ""
    # How Figure 1's "a/n-b/n" becomes rows (factorized_kd.views): "stripes" = stripes a..b,
    # rows [(a-1)/n, b/n) (Up1 [0, 1/2)); "boundaries" = rows [a/n, b/n) (Up1 [1/4, 1/2)).
    f.VIEW_READING = "stripes"
    # (H, W) every partial view is resized to: the paper's 224x224. FastReID's own Resize does it,
    # so with a partial VIEW, INPUT.SIZE_TRAIN and INPUT.SIZE_TEST must equal this (checked).
    f.VIEW_SIZE = [224, 224]

    # The FD-style holistic student's terms (declared for it; a teacher leaves them as they are).
    # Its teachers, one per factor k, are KD.MODEL_CONFIG (each teacher run's config.yaml: a
    # teacher's view is its own config's MODEL.FKD.VIEW) and KD.MODEL_WEIGHTS (their checkpoints,
    # same order), given on the command line.
    # lambda_feat: weight of the retrieval-feature term L_feat = sum_k (1 - cos(factor_k, t_k)).
    # The paper gives none; 1 had the highest mAP of (1, 1), (3, 1), (0.3, 1), (1, 10) on a tuning
    # seed of SynthReID-small (benchmarks/fkd_weights.py; the figures are in the project README).
    f.FEAT_WEIGHT = 1.0
    # lambda_map: weight of the feature-map term
    # L_map = sum_k mean ||n(A_k(S[rows_k])) - n(T_k)||^2. Chosen with FEAT_WEIGHT.
    f.MAP_WEIGHT = 1.0
    # How the student's pooled feature f is factorized per teacher: "linear" (factor_k = W_k f, a
    # training-only linear map each) or "split" (factor_k = the k-th channel group of f).
    f.FACTOR_MODE = "linear"


def is_partial(cfg):
    """Whether ``cfg`` describes a partial-view model (a view other than the whole image)."""
    return cfg.MODEL.FKD.VIEW not in ("", HOLISTIC)


def check_fkd_keys(cfg):
    """Check the ``MODEL.FKD`` keys of one config (a run's, a teacher's, a member's).

    Args:
        cfg (CfgNode): a config with the ``MODEL.FKD`` node.

    Raises:
        ConfigError: an unknown view or reading (listing the valid ones), a partial view whose
            ``INPUT.SIZE_TRAIN`` / ``INPUT.SIZE_TEST`` differ from ``VIEW_SIZE``, or an unknown
            ``FACTOR_MODE``.
    """
    f = cfg.MODEL.FKD
    if f.VIEW_READING not in VIEW_TABLES:
        raise ConfigError(
            f"MODEL.FKD.VIEW_READING '{f.VIEW_READING}' is not one of: {', '.join(VIEW_TABLES)}."
        )
    if f.VIEW and f.VIEW not in VIEW_NAMES:
        raise ConfigError(
            f"MODEL.FKD.VIEW '{f.VIEW}' is not a view; valid views: {', '.join(VIEW_NAMES)} "
            "(or '' for the whole image)."
        )
    if f.FACTOR_MODE not in FACTOR_MODES:
        raise ConfigError(
            f"MODEL.FKD.FACTOR_MODE '{f.FACTOR_MODE}' is not one of: {', '.join(FACTOR_MODES)}."
        )
    if not is_partial(cfg):
        return
    size = list(f.VIEW_SIZE)
    for key in ("SIZE_TRAIN", "SIZE_TEST"):
        if list(cfg.INPUT[key]) != size:
            top, bottom = view_fractions(f.VIEW, f.VIEW_READING)
            raise ConfigError(
                f"MODEL.FKD.VIEW {f.VIEW} (rows [{top}, {bottom})) is resized to "
                f"MODEL.FKD.VIEW_SIZE {size}, but INPUT.{key} is {list(cfg.INPUT[key])}: set "
                f"INPUT.SIZE_TRAIN and INPUT.SIZE_TEST to {size} (as the configs under "
                "configs/FactorizedKD/ do), or change MODEL.FKD.VIEW_SIZE with them."
            )


def check_fkd_config(cfg, training=True):
    """Stage 1 (:func:`kdreid.engine.validation.check_config`): refuse a config that cannot work,
    before anything is built.

    Every config: its ``MODEL.FKD`` keys (:func:`check_fkd_keys`). An :class:`FKDStudent`: a
    holistic view of its own, ``FEAT_WEIGHT`` and ``MAP_WEIGHT`` >= 0, one checkpoint per teacher
    config and, for training, at least one teacher, each teacher config with a view, sound
    ``MODEL.FKD`` keys and the student's view reading, and with ``FACTOR_MODE split`` teachers'
    dims adding up to the student's. (``--eval-only`` builds the student alone: the core drops
    its teachers.) An :class:`FKDEnsemble`: no ``MODEL.WEIGHTS``, at least one member, one
    checkpoint per member config, and sound ``MODEL.FKD`` keys in each member's config.

    Args:
        cfg (CfgNode): the merged config.
        training (bool): the run trains (False: ``--eval-only`` or an inference tool).

    Raises:
        ConfigError: naming the key (and the teacher config), its value and what would work.
    """
    check_fkd_keys(cfg)
    name = cfg.MODEL.META_ARCHITECTURE
    if not is_registered(META_ARCH_REGISTRY, name):
        return  # the core's check names it
    arch = META_ARCH_REGISTRY.get(name)
    if issubclass(arch, FKDStudent):
        _check_student(cfg, training)
    elif issubclass(arch, FKDEnsemble):
        _check_ensemble(cfg)


def _teacher_lists(cfg, nobody):
    """``KD.MODEL_CONFIG`` and ``KD.MODEL_WEIGHTS``, one checkpoint per config; ``nobody``: the
    message for no config (None: none is allowed)."""
    configs, weights = list(cfg.KD.MODEL_CONFIG), list(cfg.KD.MODEL_WEIGHTS)
    if not configs and nobody is not None:
        raise ConfigError(nobody)
    if len(weights) != len(configs):
        raise ConfigError(
            f"KD.MODEL_CONFIG names {len(configs)} config(s) but KD.MODEL_WEIGHTS "
            f"{len(weights)} checkpoint(s): give one checkpoint per config, in the same order."
        )
    return configs


def _read_config(path, who):
    """The config file ``path`` of a teacher or member (``who``, for messages), its
    ``MODEL.FKD`` keys checked."""
    cfg = get_cfg()
    merge_from_file(cfg, path)
    try:
        check_fkd_keys(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{who}: {exc}") from None
    return cfg


def _check_student(cfg, training):
    f = cfg.MODEL.FKD
    if is_partial(cfg):
        raise ConfigError(
            f"The FD-style student is holistic, but its MODEL.FKD.VIEW is '{f.VIEW}': leave it "
            "'' (the view belongs in each teacher's config)."
        )
    for key in ("FEAT_WEIGHT", "MAP_WEIGHT"):
        if not f[key] >= 0:
            raise ConfigError(f"MODEL.FKD.{key} must be >= 0 (0 turns its term off), got {f[key]}.")
    configs = _teacher_lists(
        cfg,
        "FKDStudent has no teacher: name the teachers' configs in KD.MODEL_CONFIG and their "
        "checkpoints in KD.MODEL_WEIGHTS."
        if training
        else None,
    )
    if not training:
        return
    dims = []
    for path in configs:
        teacher = _read_config(path, f"Teacher '{path}'")
        t = teacher.MODEL.FKD
        if not t.VIEW:
            raise ConfigError(
                f"Teacher '{path}' has no view (its MODEL.FKD.VIEW is ''): name the config.yaml "
                "its training run wrote, which records the view given on the command line; a "
                "holistic teacher says MODEL.FKD.VIEW Holistic."
            )
        if t.VIEW_READING != f.VIEW_READING:
            raise ConfigError(
                f"Teacher '{path}' was trained with MODEL.FKD.VIEW_READING '{t.VIEW_READING}' but "
                f"the student reads views as '{f.VIEW_READING}': its crops and the student's rows "
                "would differ. Use the same reading for both."
            )
        dims.append(embedding_dim(teacher))
    student_dim = embedding_dim(cfg)
    if f.FEAT_WEIGHT > 0 and f.FACTOR_MODE == "split" and sum(dims) != student_dim:
        raise ConfigError(
            f"MODEL.FKD.FACTOR_MODE split cuts the student's {student_dim}-d feature into one "
            f"channel group per teacher, of the teachers' dims {dims}, which add up to "
            f"{sum(dims)}: make them add up to {student_dim} (MODEL.HEADS.EMBEDDING_DIM of the "
            "teachers or of the student), or use FACTOR_MODE linear."
        )


def _check_ensemble(cfg):
    if cfg.MODEL.WEIGHTS:
        raise ConfigError(
            f"MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' is not used by FKDEnsemble: its weights are its "
            "members', KD.MODEL_WEIGHTS. Leave MODEL.WEIGHTS empty."
        )
    configs = _teacher_lists(
        cfg,
        "FKDEnsemble has no member: name the teachers' config files in KD.MODEL_CONFIG and "
        "their checkpoints in KD.MODEL_WEIGHTS.",
    )
    for path in configs:
        _read_config(path, f"Ensemble member '{path}'")


PROJECT = Project(add_config=add_factorized_kd_config, check_config=check_fkd_config)
"""What the project plugs into kdreid (its ``kdreid.projects`` entry point)."""
