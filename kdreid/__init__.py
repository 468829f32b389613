"""kdreid: knowledge distillation for person re-identification, as a FastReID plugin.

Importing :mod:`kdreid` repairs fastreid 1.4.0 for today's Python/torch/numpy and for the CPU
(:mod:`kdreid.compat`), makes FastReID's data errors name their files
(:mod:`kdreid.engine.validation.datasets`) and registers kdreid's datasets (:mod:`kdreid.data`)
and its generic distiller meta-architecture (:mod:`kdreid.distill`).
"""

from kdreid import compat

compat.apply()

from kdreid.engine.validation import datasets  # noqa: E402

datasets.install()

import kdreid.data  # noqa: E402, F401  (imported for registration: SynthReID datasets)
import kdreid.distill  # noqa: E402, F401  (imported for registration: KDReIDDistiller)

__version__ = "0.1.0"
