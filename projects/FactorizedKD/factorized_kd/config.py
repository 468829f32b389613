"""Config keys of the FactorizedKD project, under ``MODEL.FKD``.

A partial teacher is an ordinary FastReID model whose config sets ``MODEL.FKD.VIEW``; the keys of
the holistic student (teachers, loss weights, factorization) are declared here for the FD-style
student and used by it.
"""

from fastreid.config import CfgNode

from factorized_kd.views import HOLISTIC, VIEW_NAMES, VIEW_TABLES, view_fractions
from kdreid.errors import ConfigError

__all__ = ["FACTOR_MODES", "add_factorized_kd_config", "check_fkd_config", "is_partial"]

FACTOR_MODES = ("linear", "split")


def add_factorized_kd_config(cfg):
    """Add the ``MODEL.FKD`` node with its defaults.

    Args:
        cfg (CfgNode): a config, modified in place.
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

    # The FD-style holistic student (declared for it; a teacher leaves them empty).
    # Config files of the partial (and optionally holistic) teachers, one per factor k; each
    # teacher's view is its own config's MODEL.FKD.VIEW.
    f.TEACHERS = []
    # Checkpoints of those teachers, one per config, same order (give them on the command line).
    f.TEACHER_WEIGHTS = []
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


def check_fkd_config(cfg):
    """Check the ``MODEL.FKD`` keys that a run depends on.

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
