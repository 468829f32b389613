"""FactorizedKD (Ren & Li, 2018: factorized distillation from partial-view teachers).

The project's models, losses and config keys arrive with the FactorizedKD issue; for now the package
only declares its config node, and its ``train_net.py`` already trains any FastReID config.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from factorized_kd.config import add_factorized_kd_config

__all__ = ["add_factorized_kd_config"]
