"""Training and evaluation entry points shared by every kdreid project.

``train_net.py`` -> :func:`launch_main` (processes) -> :func:`main`: :func:`setup` (config, stage-1
checks of :mod:`kdreid.engine.validation`, output folder, logging, device, seed), then
:func:`evaluate_only` or a :class:`Trainer` (built, stage-2 checks, weights loaded),
:func:`write_config`, training.
"""

from kdreid.engine.evaluate import evaluate_only, inference_config, inference_model
from kdreid.engine.hooks import DistillationWarmup
from kdreid.engine.launch import default_argument_parser, launch_main, main
from kdreid.engine.setup import default_output_dir, resumed_epoch, seed, setup, write_config
from kdreid.engine.trainer import ProgressLoader, Trainer

__all__ = [
    "DistillationWarmup",
    "ProgressLoader",
    "Trainer",
    "default_argument_parser",
    "default_output_dir",
    "evaluate_only",
    "inference_config",
    "inference_model",
    "launch_main",
    "main",
    "resumed_epoch",
    "seed",
    "setup",
    "write_config",
]
