"""Config keys of the FactorizedKD project, under ``MODEL.FKD``."""

from fastreid.config import CfgNode

__all__ = ["add_factorized_kd_config"]


def add_factorized_kd_config(cfg):
    """Add the ``MODEL.FKD`` node (its keys arrive with the project's models).

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.FKD = CfgNode()
