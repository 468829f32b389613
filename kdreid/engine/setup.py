"""kdreid's setup step, each part once: the config and its checks, the output folder, logging and
the environment, the device, the seed; and, once a run's model, data and weights have passed
their checks, its ``config.yaml``.

FastReID's ``default_setup`` seeds with a random value, writes ``config.yaml`` before anything is
checked and logs to its own logger only; :func:`setup` replaces it.
"""

import logging
import os

import numpy as np
import torch
from fastreid.utils import comm
from fastreid.utils.collect_env import collect_env_info
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from kdreid import projects
from kdreid.checkpoint import atomic_write, prepare_output_dir, read_checkpoint
from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine import validation
from kdreid.errors import UserInputError

__all__ = ["default_output_dir", "load_config", "resumed_epoch", "seed", "setup", "write_config"]

logger = logging.getLogger(__name__)


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
            # mapped, not read: the tensors (optimizer state included) are loaded by the resume
            checkpoint = read_checkpoint(os.path.join(output_dir, f.read().strip()), mmap=True)
    except (OSError, UserInputError):
        return 0
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return epoch + 1 if isinstance(epoch, int) else 0


def seed(cfg, epoch=0):
    """Seed Python's, numpy's and torch's generators, differently on each process.

    With ``KDREID.SEED`` >= 0: ``KDREID.SEED + rank``, or for a run resumed at ``epoch`` > 0 a
    value drawn from (``KDREID.SEED``, epoch, rank): seeded as at its start, it would draw again
    the batches and augmentations of its first epochs. With a negative ``KDREID.SEED``: a random
    value, which FastReID's ``seed_all_rng`` logs.
    """
    if cfg.KDREID.SEED < 0:
        seed_all_rng(None)
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


def _log_start(cfg, args):
    """Console and ``OUTPUT_DIR/log.txt`` for FastReID's, kdreid's and every project's loggers;
    then the process, the environment, the command line and the config, once."""
    rank = comm.get_rank()
    for name in ("fastreid", *projects.logger_names()):
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name=name)
    logger.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    if torch.distributed.is_initialized():
        logger.info(
            "Process group: backend %s, world size %d, rank %d (local rank %d of %d), %d CPU "
            "threads",
            torch.distributed.get_backend(),
            comm.get_world_size(),
            rank,
            comm.get_local_rank(),
            comm.get_local_size(),
            torch.get_num_threads(),
        )
    logger.info("Environment info:\n%s", collect_env_info())
    logger.info("Command line arguments: %s", args)
    if args.config_file:
        with open(args.config_file, encoding="utf-8") as f:
            logger.info("Contents of args.config_file=%s:\n%s", args.config_file, f.read())


def load_config(args, world_size=None):
    """The merged config of ``--config-file`` and the command-line options, checked
    (:func:`kdreid.engine.validation.check_config`), mutable, nothing written.

    Args:
        args: the parsed command line.
        world_size (int): the processes the run will have (default: the process group's).
    """
    cfg = get_cfg()
    if args.config_file:
        merge_from_file(cfg, args.config_file)
    validation.check_opts(args.opts or [])
    merge_from_list(cfg, args.opts or [])
    validation.check_config(cfg, training=not args.eval_only, world_size=world_size)
    return cfg


def setup(args):
    """The frozen config of a run from ``--config-file`` and the command-line options.

    Merges and checks the config (:func:`kdreid.engine.validation.check_config`) before anything
    is written, prepares ``OUTPUT_DIR``, sets up logging and logs the environment, resolves
    ``MODEL.DEVICE``, and seeds once (:func:`seed`; a ``--resume`` run from the epoch it resumes
    at). ``config.yaml`` is written later, by :func:`write_config`.

    Raises:
        ConfigError: the file is missing, a key is unknown or a value cannot work.
        OutputDirError: ``OUTPUT_DIR`` cannot be created or written.
    """
    cfg = load_config(args)
    derived = os.path.normpath(cfg.OUTPUT_DIR) == "logs" and bool(args.config_file)
    if derived:
        cfg.OUTPUT_DIR = default_output_dir(args.config_file, args.eval_only)
    prepare_output_dir(cfg.OUTPUT_DIR)
    _log_start(cfg, args)
    if derived:
        logger.info("OUTPUT_DIR not set: writing to %s", cfg.OUTPUT_DIR)
    resolve_device(cfg)
    logger.info("Running with full config:\n%s", cfg)
    seed(cfg, resumed_epoch(cfg.OUTPUT_DIR) if args.resume and not args.eval_only else 0)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK  # its cost pays off in training
    cfg.freeze()
    return cfg


def write_config(cfg):
    """Write ``OUTPUT_DIR/config.yaml``, the run's full config (on the main process, atomically).

    Called once the config, the model, the data and the weights have passed their checks, so a
    refused run leaves the folder's record of the run that made its checkpoints as it was.
    """
    if not comm.is_main_process():
        return
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    atomic_write(path, lambda f: f.write(cfg.dump()), mode="w")
    logger.info("Full config saved to %s", os.path.abspath(path))
