"""SynthReID, the embedded procedural pedestrian dataset, and its FastReID registration."""

from kdreid.data import datasets  # noqa: F401  (imported for registration: SynthReID datasets)
from kdreid.data.synthreid import SYNTHREID_SIZES, generate_synthreid

__all__ = ["SYNTHREID_SIZES", "generate_synthreid"]
