"""Training and evaluation entry points shared by every kdreid project."""

from kdreid.engine.checkpoint import AtomicCheckpointer, load_weights_strict
from kdreid.engine.defaults import (
    default_argument_parser,
    evaluate_only,
    launch_main,
    main,
    seed,
    setup,
)
from kdreid.engine.hooks import DistillationWarmup
from kdreid.engine.trainer import ProgressLoader, Trainer

__all__ = [
    "AtomicCheckpointer",
    "DistillationWarmup",
    "ProgressLoader",
    "Trainer",
    "default_argument_parser",
    "evaluate_only",
    "launch_main",
    "load_weights_strict",
    "main",
    "seed",
    "setup",
]
