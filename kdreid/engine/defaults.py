"""What every project's ``train_net.py`` runs: FastReID's flags, the config, training or testing.

A project's ``train_net.py`` is::

    import mdpr  # noqa: F401  (registers the project's models)
    from kdreid.engine import default_argument_parser, launch_main

    if __name__ == "__main__":
        launch_main(default_argument_parser().parse_args())
"""

import logging
import sys

import torch
from fastreid.engine import default_argument_parser, default_setup, launch
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine.checkpoint import load_weights_strict
from kdreid.engine.trainer import Trainer
from kdreid.errors import UserInputError

__all__ = [
    "default_argument_parser",
    "seed",
    "setup",
    "main",
    "launch_main",
    "report_user_errors",
    "user_message",
]

logger = logging.getLogger(__name__)


def seed(cfg):
    """Seed every generator with ``KDREID.SEED`` (plus the rank), unless it is negative."""
    if cfg.KDREID.SEED >= 0:
        seed_all_rng(cfg.KDREID.SEED + comm.get_rank())
        logger.info("Seeded the random generators with %d", cfg.KDREID.SEED + comm.get_rank())


def setup(args):
    """Build the frozen config from ``--config-file`` and the command-line options, set up logging.

    Raises:
        ConfigError: the file is missing or a key is unknown.
    """
    cfg = get_cfg()
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    merge_from_list(cfg, args.opts or [])
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="kdreid")
    seed(cfg)
    resolve_device(cfg)
    cfg.freeze()
    return cfg


def main(args, trainer_cls=Trainer):
    """Train (or with ``--eval-only`` evaluate) the model the config describes.

    Returns:
        dict: the evaluation results.
    """
    cfg = setup(args)
    if args.eval_only:
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False
        cfg.freeze()
        model = trainer_cls.build_model(cfg)
        load_weights_strict(model, cfg.MODEL.WEIGHTS)
        return trainer_cls.test(cfg, model)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def user_message(exc):
    """The message of a :class:`UserInputError`, without the worker traceback that a data loader
    process prepends when it re-raises the error in the training process."""
    message = str(exc)
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last
    return message


def report_user_errors(fn, *args):
    """Call ``fn(*args)``; bad input ends the process with one ``error:`` line and status 2."""
    try:
        return fn(*args)
    except UserInputError as exc:
        logger.debug("User input error", exc_info=True)
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)


def _main_reporting_errors(args, trainer_cls):
    return report_user_errors(main, args, trainer_cls)


def launch_main(args, trainer_cls=Trainer):
    """Run :func:`main` on ``args.num_gpus`` processes per machine, as FastReID launches it.

    Bad input (:class:`kdreid.errors.UserInputError`) is printed as one message, exit status 2.
    """
    available = torch.cuda.device_count()
    if args.num_gpus > 1 and args.num_gpus > available:
        print(
            f"error: --num-gpus {args.num_gpus} but torch sees {available} GPU(s); "
            "use --num-gpus 1 to train on one device (or the CPU).",
            file=sys.stderr,
        )
        sys.exit(2)
    launch(
        _main_reporting_errors,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, trainer_cls),
    )
