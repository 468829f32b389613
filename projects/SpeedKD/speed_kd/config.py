"""Config keys of the SpeedKD project, under ``MODEL.SPEEDKD``."""

from fastreid.config import CfgNode

__all__ = ["add_speed_kd_config"]


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
