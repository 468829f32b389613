"""MDPR (Fu et al., 2024): mutual distillation of hard- and soft-content branches.

Importing the package registers (imports marked "registration" exist for that):
- ``MDPR``: the meta-architecture (:mod:`mdpr.modeling`);
- the ``MODEL.MDPR`` config keys and their checks (:mod:`mdpr.config`, the project's
  ``kdreid.projects`` entry point: applied by :func:`kdreid.config.get_cfg` and
  :func:`kdreid.engine.validation.check_config`).

Building blocks are in :mod:`mdpr.layers`, the MDPR-specific loss terms in :mod:`mdpr.losses`.
"""

import kdreid  # noqa: F401  (repairs fastreid before anything imports it)
from mdpr.config import add_mdpr_config, check_mdpr_config
from mdpr.modeling import MDPR

__all__ = ["MDPR", "add_mdpr_config", "check_mdpr_config"]
