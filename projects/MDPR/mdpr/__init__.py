"""MDPR (Fu et al., 2024: mutual distillation of hard- and soft-content branches).

The project's models, losses and config keys arrive with the MDPR issue; for now the package only
declares its config node, and its ``train_net.py`` already trains any FastReID config.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from mdpr.config import add_mdpr_config

__all__ = ["add_mdpr_config"]
