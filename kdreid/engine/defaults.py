"""What every project's ``train_net.py`` runs: FastReID's flags, the config, training or testing.

A project's ``train_net.py`` is::

    import mdpr  # noqa: F401  (registers the project's models)
    from kdreid.engine import default_argument_parser, launch_main

    if __name__ == "__main__":
        launch_main(default_argument_parser().parse_args())
"""

import contextlib
import logging
import numbers
import os
import sys

import numpy as np
import torch
from fastreid.engine import default_argument_parser as fastreid_argument_parser
from fastreid.engine import default_setup, launch
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from kdreid.benchmark import OTHER_LOAD_WARNING, format_record, profile_model, write_record
from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine.checkpoint import (
    atomic_write,
    load_weights_strict,
    prepare_output_dir,
    read_checkpoint,
)
from kdreid.engine.checks import check_config, check_opts
from kdreid.engine.trainer import Trainer
from kdreid.errors import ConfigError, UserInputError

__all__ = [
    "default_argument_parser",
    "deployed_model",
    "evaluate_only",
    "speed_accuracy_record",
    "default_output_dir",
    "resumed_epoch",
    "seed",
    "setup",
    "main",
    "launch_main",
    "report_user_errors",
    "user_message",
]

logger = logging.getLogger(__name__)

# Loggers shown on the console and written to OUTPUT_DIR/log.txt (FastReID sets up its own).
LOGGERS = ("kdreid", "mdpr", "factorized_kd", "speed_kd")


def seed(cfg, epoch=0):
    """Seed every generator with ``KDREID.SEED`` (plus the rank), unless it is negative.

    A run resumed at ``epoch`` > 0 is seeded from (``KDREID.SEED``, epoch, rank) instead: seeded
    as at its start, it would draw again the batches and augmentations of its first epochs.
    """
    if cfg.KDREID.SEED < 0:
        return
    value = cfg.KDREID.SEED + comm.get_rank()
    if epoch > 0:
        entropy = [cfg.KDREID.SEED, epoch, comm.get_rank()]
        value = int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)
    seed_all_rng(value)
    if epoch > 0:
        logger.info("Resuming at epoch %d: seeded the random generators with %d", epoch, value)
    else:
        logger.info("Seeded the random generators with %d", value)


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


def _drop_generated_seed(record):
    return not record.getMessage().startswith("Using a generated random seed")


@contextlib.contextmanager
def _quiet_generated_seed(cfg):
    """FastReID's ``default_setup`` seeds with a random value and logs it; with ``KDREID.SEED``
    set, :func:`seed` seeds again right after, and that line would mislead the reader."""
    env_logger = logging.getLogger("fastreid.utils.env")
    if cfg.KDREID.SEED >= 0:
        env_logger.addFilter(_drop_generated_seed)
    try:
        yield
    finally:
        env_logger.removeFilter(_drop_generated_seed)


def default_output_dir(config_file, eval_only=False):
    """Where a run goes when neither its config nor its command line sets ``OUTPUT_DIR`` (left at
    FastReID's ``logs/``, every run would write over the last one's checkpoints): ``logs/`` and
    the config's path under ``configs/`` (else its name), ``configs/MDPR/DukeMTMC.yml`` ->
    ``logs/MDPR/DukeMTMC``; an ``--eval-only`` run goes to its ``eval/`` subfolder, beside
    the trained run's files rather than over them."""
    parts = os.path.normpath(os.path.abspath(config_file)).split(os.sep)
    below = parts[len(parts) - parts[::-1].index("configs") :] if "configs" in parts else parts[-1:]
    folder = os.path.join("logs", *below[:-1], os.path.splitext(below[-1])[0])
    return os.path.join(folder, "eval") if eval_only else folder


def resumed_epoch(output_dir):
    """The epoch at which ``--resume`` continues the run in ``output_dir`` (0: none to resume,
    or a checkpoint that the checkpointer will report as unreadable)."""
    tag = os.path.join(output_dir, "last_checkpoint")
    try:
        with open(tag) as f:
            checkpoint = read_checkpoint(os.path.join(output_dir, f.read().strip()))
    except (OSError, UserInputError):
        return 0
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return epoch + 1 if isinstance(epoch, int) else 0


@contextlib.contextmanager
def config_kept_on_failure(cfg):
    """``OUTPUT_DIR/config.yaml`` as it was before :func:`setup` wrote this run's over it, put back
    if the body fails: a run refused for bad input (weights, data) leaves the folder's record of
    the run that made its checkpoints as it was."""
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    previous = _previous_configs.pop(os.path.abspath(path), None)
    try:
        yield
    except BaseException:
        if comm.is_main_process():
            if previous is None:
                with contextlib.suppress(OSError):
                    os.remove(path)
            else:
                atomic_write(path, lambda f: f.write(previous))
        raise


_previous_configs = {}
"""``config.yaml`` path -> its bytes before :func:`setup` wrote over it."""


def setup(args):
    """Build the frozen config from ``--config-file`` and the command-line options, set up logging.

    Raises:
        ConfigError: the file is missing, a key is unknown or a value cannot work
            (:func:`kdreid.engine.checks.check_config`).
        OutputDirError: ``OUTPUT_DIR`` cannot be created or written.
    """
    cfg = get_cfg()
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    check_opts(args.opts or [])
    merge_from_list(cfg, args.opts or [])
    check_config(cfg, training=not getattr(args, "eval_only", False))
    derived = os.path.normpath(cfg.OUTPUT_DIR) == "logs" and bool(args.config_file)
    if derived:
        cfg.OUTPUT_DIR = default_output_dir(args.config_file, getattr(args, "eval_only", False))
    prepare_output_dir(cfg.OUTPUT_DIR)
    dumped = os.path.abspath(os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
    _previous_configs.pop(dumped, None)
    if comm.is_main_process() and os.path.isfile(dumped):
        with open(dumped, "rb") as f:
            _previous_configs[dumped] = f.read()
    with _quiet_generated_seed(cfg):
        default_setup(cfg, args)
    for name in LOGGERS:
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name=name)
    if derived:
        logger.info("OUTPUT_DIR not set: writing to %s", cfg.OUTPUT_DIR)
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
        with config_kept_on_failure(cfg):
            return evaluate_only(cfg, trainer_cls, config_file=args.config_file)
    with config_kept_on_failure(cfg):  # until the model, data and weights are in place
        try:
            arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        except KeyError:
            arch = None  # FastReID's build_model reports it
        if not getattr(arch, "trainable", True):
            raise ConfigError(
                f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} is an evaluation-only "
                "model: run it with --eval-only."
            )
        epoch = resumed_epoch(cfg.OUTPUT_DIR) if args.resume else 0
        if epoch:
            seed(cfg, epoch)
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def evaluate_only(cfg, trainer_cls=Trainer, config_file=""):
    """``--eval-only``: accuracy of ``MODEL.WEIGHTS`` and, with ``KDREID.SPEED``, its speed.

    Teachers (``KD.MODEL_CONFIG``) are training-only and are not built: a distiller is evaluated
    as its student. The speed figures are those of the deployed model
    (:func:`kdreid.distill.deployable`) on ``MODEL.DEVICE``; the record (accuracy, params,
    multiply-adds, latency, throughput) is printed and written to
    ``OUTPUT_DIR/speed_accuracy.json``.

    Returns:
        dict: the evaluation results.
    """
    cfg.defrost()
    cfg.MODEL.BACKBONE.PRETRAIN = False
    if cfg.KD.MODEL_CONFIG:
        logger.info("Teachers are training-only: evaluating the student alone.")
        cfg.KD.MODEL_CONFIG = []
        cfg.KD.MODEL_WEIGHTS = []
    cfg.freeze()
    model = trainer_cls.build_model(cfg)
    if getattr(model, "needs_weights", True):
        load_weights_strict(model, cfg.MODEL.WEIGHTS)
    elif cfg.MODEL.WEIGHTS:
        raise ConfigError(
            f"MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' is not used by {type(model).__name__}, which is "
            "built complete from its config: leave MODEL.WEIGHTS empty."
        )
    if cfg.KDREID.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    results = trainer_cls.test(cfg, model)
    if cfg.KDREID.SPEED and comm.is_main_process():
        record = speed_accuracy_record(cfg, deployed_model(model), results, config_file)
        record.update(getattr(model, "record_extras", dict)())
        logger.info("Speed and accuracy:\n%s", format_record(record))
        if (record.get("other_cpu_load") or 0) >= OTHER_LOAD_WARNING:
            logger.warning(
                "Other processes kept %.1f CPUs busy while the speed was measured: the latency "
                "and throughput in %s are unreliable; measure again on an idle machine.",
                record["other_cpu_load"],
                os.path.join(cfg.OUTPUT_DIR, "speed_accuracy.json"),
            )
        path = os.path.join(cfg.OUTPUT_DIR, "speed_accuracy.json")
        write_record(path, record)
        logger.info("Wrote %s", path)
    return results


def deployed_model(model):
    """The part of ``model`` that is deployed: ``model.deployed_model()`` where the model defines
    it (a distiller returns its student; training-only adapters are left out), else ``model``."""
    model = getattr(model, "module", model)  # (Distributed)DataParallel
    return model.deployed_model() if hasattr(model, "deployed_model") else model


def speed_accuracy_record(cfg, model, results, config_file=""):
    """One model's accuracy and speed as a JSON-ready dict (the schema of
    :mod:`kdreid.benchmark`)."""
    tests = list(cfg.DATASETS.TESTS)
    per_dataset = results if len(tests) > 1 else {tests[0]: results}
    metrics = {
        name: {k: float(v) for k, v in res.items() if isinstance(v, numbers.Real)}
        for name, res in per_dataset.items()
    }
    name = cfg.KDREID.NAME or os.path.splitext(os.path.basename(config_file or "model"))[0]
    record = {
        "name": name,
        "kind": "deep",
        "config": config_file or None,
        "weights": cfg.MODEL.WEIGHTS or None,
        "dataset": tests[0],
    }
    record.update(
        profile_model(
            model,
            input_size=tuple(cfg.INPUT.SIZE_TEST),
            device=cfg.MODEL.DEVICE,
            batch_size=cfg.TEST.IMS_PER_BATCH,
        )
    )
    record["metrics"] = metrics[tests[0]]
    if len(tests) > 1:
        record["metrics_by_dataset"] = metrics
    return record


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
        _log_to_files_only("User input error", exc)
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(2)


def _log_to_files_only(message, exc):
    """Write ``message`` with ``exc``'s traceback to the run's log files (``OUTPUT_DIR/log.txt``),
    not to the console, where bad input is one line."""
    record = logger.makeRecord(
        logger.name, logging.DEBUG, __file__, 0, message, None, (type(exc), exc, exc.__traceback__)
    )
    seen = set()
    for name in ("kdreid", "fastreid", ""):
        for handler in logging.getLogger(name).handlers:
            stream = getattr(handler, "stream", None)
            if id(handler) in seen or stream in (sys.stdout, sys.stderr, sys.__stdout__, None):
                continue
            seen.add(id(handler))
            handler.handle(record)


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
