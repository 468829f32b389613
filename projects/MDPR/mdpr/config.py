"""Config keys of the MDPR project, under ``MODEL.MDPR``."""

from fastreid.config import CfgNode

__all__ = ["add_mdpr_config"]


def add_mdpr_config(cfg):
    """Add the ``MODEL.MDPR`` node (its keys arrive with the project's models).

    Args:
        cfg (CfgNode): a config, modified in place.
    """
    cfg.MODEL.MDPR = CfgNode()
