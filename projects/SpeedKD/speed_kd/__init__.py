"""SpeedKD (Ruiz et al., 2020: the speed/accuracy trade-off moved by distillation).

The project's models, losses and config keys arrive with the SpeedKD issue; for now the package only
declares its config node, and its ``train_net.py`` already trains any FastReID config.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from speed_kd.config import add_speed_kd_config

__all__ = ["add_speed_kd_config"]
