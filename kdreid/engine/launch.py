"""What every project's ``train_net.py`` runs: FastReID's flags, then training or ``--eval-only``.

A project's ``train_net.py`` is::

    import mdpr  # noqa: F401  (registers the project's models)
    from kdreid.engine import default_argument_parser, launch_main

    if __name__ == "__main__":
        launch_main(default_argument_parser().parse_args())

The walk: :func:`launch_main` starts the processes, each runs :func:`main`: :func:`setup` (config,
checks, logging, seed), then either :func:`evaluate_only` or the :class:`Trainer` (built and
checked), :func:`write_config`, training.
"""

import sys

import torch
from fastreid.engine import default_argument_parser as fastreid_argument_parser
from fastreid.engine import launch

from kdreid.engine.evaluate import evaluate_only
from kdreid.engine.setup import setup, write_config
from kdreid.engine.trainer import Trainer
from kdreid.errors import report_user_errors

__all__ = ["default_argument_parser", "launch_main", "main"]


def default_argument_parser():
    """FastReID's parser, same flags, with a description and where ``KEY VALUE`` options go."""
    parser = fastreid_argument_parser()
    parser.description = (
        "Train the model a FastReID config describes (kdreid: on CPU or GPU, with this "
        "project's models), or evaluate a checkpoint with --eval-only."
    )
    parser.epilog = (
        "KEY VALUE config options come last, after every flag, e.g. --config-file F.yml "
        "--eval-only MODEL.WEIGHTS model.pth OUTPUT_DIR logs/x. OUTPUT_DIR defaults to "
        "logs/<config path under configs/>."
    )
    for action in parser._actions:
        if action.dest == "opts":
            action.help = "config options as KEY VALUE pairs (e.g. SOLVER.MAX_EPOCH 10), last"
    return parser


def main(args, trainer_cls=Trainer):
    """Train (or with ``--eval-only`` evaluate) the model the config describes.

    Returns:
        dict: the evaluation results.
    """
    cfg = setup(args)
    if args.eval_only:
        return evaluate_only(cfg, trainer_cls, config_file=args.config_file)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    write_config(trainer.cfg)  # the model, the data and the weights are in place
    return trainer.train()


def _main_reporting_errors(args, trainer_cls):
    try:
        return report_user_errors(main, args, trainer_cls)
    except KeyboardInterrupt:
        again = "" if args.eval_only or args.resume else ", adding --resume"
        print(
            "\ninterrupted: run the same command again" + again + " to continue from the last "
            "checkpoint (written every SOLVER.CHECKPOINT_PERIOD epochs)."
            if not args.eval_only
            else "\ninterrupted.",
            file=sys.stderr,
        )
        sys.exit(130)


def launch_main(args, trainer_cls=Trainer):
    """Run :func:`main` on ``args.num_gpus`` processes per machine, as FastReID launches it.

    Bad input (:class:`kdreid.errors.UserInputError`) is printed as one message, exit status 2.
    """
    available = torch.cuda.device_count()
    if args.num_machines > 1 and not available:
        print(
            f"error: --num-machines {args.num_machines} needs CUDA (FastReID's multi-machine "
            "launch uses NCCL), and torch sees no GPU here.",
            file=sys.stderr,
        )
        sys.exit(2)
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
