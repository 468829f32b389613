"""Config keys of the SpeedKD project, under ``MODEL.SPEEDKD``."""

from fastreid.config import CfgNode

__all__ = ["add_speed_kd_config"]


def add_speed_kd_config(cfg):
    """Add the ``MODEL.SPEEDKD`` node (its keys arrive with the project's models).

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.SPEEDKD = CfgNode()
