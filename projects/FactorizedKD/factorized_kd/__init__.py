"""FactorizedKD (Ren & Li, 2018: factorized distillation from partial-view teachers).

The views (``views``: the one view table, the row rule, the batched device-side crop and the
per-image transform), the config keys and their checks (``config``), the partial-view trainer
(``data``), with which ``train_net.py`` trains and evaluates a teacher on its view, the teachers'
ensemble evaluated as one model (``ensemble``), and the FD-style holistic student (``student``,
with its two factorization losses in ``losses``).

Importing the package registers ``FKDEnsemble`` and ``FKDStudent`` in FastReID's
``META_ARCH_REGISTRY`` (a teacher is a plain FastReID model); the config keys and their checks
reach the core (``kdreid.config.get_cfg``, :mod:`kdreid.engine.validation`) through
``factorized_kd.config.PROJECT``, the ``kdreid.projects`` entry point in ``setup.py``.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from factorized_kd.config import add_factorized_kd_config, check_fkd_config, check_fkd_keys
from factorized_kd.data import FKDTrainer, build_transforms
from factorized_kd.ensemble import FKDEnsemble, evaluate_ensemble  # registers FKDEnsemble
from factorized_kd.losses import feature_factorization_loss, map_factorization_loss
from factorized_kd.student import FKDStudent, build_fkd_teachers  # registers FKDStudent
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
    "FKDEnsemble",
    "FKDStudent",
    "FKDTrainer",
    "READINGS",
    "VIEW_NAMES",
    "VIEW_TABLES",
    "ViewCrop",
    "add_factorized_kd_config",
    "build_fkd_teachers",
    "build_transforms",
    "check_fkd_config",
    "check_fkd_keys",
    "crop_view",
    "evaluate_ensemble",
    "feature_factorization_loss",
    "map_factorization_loss",
    "view_fractions",
    "view_rows",
]
