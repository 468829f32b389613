"""FactorizedKD (Ren & Li, 2018: factorized distillation from partial-view teachers).

So far: the views (``views``: the one view table, the row rule, the batched device-side crop and
the per-image transform), the config keys (``config``), and the partial-view trainer (``data``),
with which ``train_net.py`` trains and evaluates a teacher on its view. The FD-style student
arrives later.

Nothing is registered in FastReID's registries yet (a teacher is a plain FastReID model), so no
import below is for registration only; the config keys reach ``kdreid.config.get_cfg`` through
the ``kdreid.config_extensions`` entry point in ``setup.py``.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from factorized_kd.config import add_factorized_kd_config, check_fkd_config
from factorized_kd.data import FKDTrainer, build_transforms
from factorized_kd.views import (
    READINGS,
    VIEW_NAMES,
    VIEW_TABLES,
    ViewCrop,
    crop_view,
    view_fractions,
    view_rows,
)

__all__ = [
    "FKDTrainer",
    "READINGS",
    "VIEW_NAMES",
    "VIEW_TABLES",
    "ViewCrop",
    "add_factorized_kd_config",
    "build_transforms",
    "check_fkd_config",
    "crop_view",
    "view_fractions",
    "view_rows",
]
