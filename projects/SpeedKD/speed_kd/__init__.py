"""SpeedKD (Ruiz et al., 2020): the speed/accuracy trade-off of person ReID, moved by distillation.

Importing the package registers (imports marked "registration" exist for that):
- ``build_speedkd_mobilenetv1_backbone``: MobileNet v1 at width multipliers 1.0/0.75/0.5/0.25;
- ``SpeedKDDistiller``: Hinton distillation of a frozen teacher into a student;
- the ``MODEL.SPEEDKD`` config keys (also applied by :func:`kdreid.config.get_cfg`).

LOMO + XQDA, the classical baseline, is in :mod:`speed_kd.lomo` and :mod:`speed_kd.xqda`; published
ImageNet MobileNet weights are renamed for the backbones by :mod:`speed_kd.imagenet_weights`.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from speed_kd import mobilenet_v1  # noqa: F401  (registration: the MobileNet v1 backbone)
from speed_kd.config import add_speed_kd_config
from speed_kd.distiller import SpeedKDDistiller
from speed_kd.lomo import LOMO
from speed_kd.mobilenet_v1 import MobileNetV1
from speed_kd.xqda import XQDA

__all__ = ["LOMO", "MobileNetV1", "SpeedKDDistiller", "XQDA", "add_speed_kd_config"]
