"""kdreid's setup step, each part once: the config and its checks, the output folder, logging and
the environment, the device, the seed; and, once a run's model, data and weights have passed
their checks, its ``config.yaml``.

FastReID's ``default_setup`` seeds with a random value, writes ``config.yaml`` before anything is
checked and logs to its own logger only; :func:`setup` replaces it.
"""

import contextlib
import fcntl
import logging
import os

import numpy as np
import torch
from fastreid.utils import comm
from fastreid.utils.collect_env import collect_env_info
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from kdreid import projects
from kdreid.checkpoint import (
    atomic_write,
    prepare_output_dir,
    read_checkpoint,
    remove_stale_temporaries,
)
from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine import validation
from kdreid.errors import OutputDirError, UserInputError

__all__ = [
    "claim_output_dir",
    "default_output_dir",
    "load_config",
    "resumed_epoch",
    "run_files",
    "seed",
    "setup",
    "write_config",
]

LOCK_NAME = ".kdreid.lock"
"""The file a training run holds locked (``flock``) in its ``OUTPUT_DIR`` while it runs."""

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


def run_files(output_dir):
    """The files in ``output_dir`` that a training run leaves there: its checkpoints
    (``model_*.pth``) and ``last_checkpoint``, sorted."""
    try:
        names = os.listdir(output_dir)
    except OSError:
        return []
    return sorted(
        n
        for n in names
        if n == "last_checkpoint" or (n.startswith("model_") and n.endswith(".pth"))
    )


@contextlib.contextmanager
def claim_output_dir(output_dir, resume=False, overwrite=False):
    """Hold ``output_dir`` for one training run, on the main process (other ranks do nothing).

    Refuses a folder that another run is training into now (a non-blocking ``flock`` of
    :data:`LOCK_NAME`, which the OS releases when that run ends, however it ends), and, unless
    ``resume`` or ``overwrite``, one that holds another run's checkpoints, which this run would
    replace. Then removes the temporary files a killed writer left there.

    Raises:
        OutputDirError: naming the folder, the other run's pid or its files, and what to do.
    """
    if not comm.is_main_process():
        yield
        return
    path = os.path.join(output_dir, LOCK_NAME)
    try:
        lock = open(path, "a+")  # noqa: SIM115 (held for the run, closed below)
    except OSError as exc:
        raise OutputDirError(f"Cannot lock OUTPUT_DIR '{output_dir}': {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise OutputDirError(
                f"OUTPUT_DIR '{output_dir}' is in use: another run (pid {holder}) is training "
                "into it now. Wait for it to end, or give this run another OUTPUT_DIR."
            ) from None
        found = run_files(output_dir)
        if found and not (resume or overwrite):
            shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
            raise OutputDirError(
                f"OUTPUT_DIR '{output_dir}' holds another run's checkpoints ({shown}), which this "
                "run would replace: add --resume to continue that run, give this one another "
                "OUTPUT_DIR, or add --overwrite to replace them."
            )
        if found and overwrite and not resume:
            logger.warning("--overwrite: replacing the checkpoints in %s (%s)", output_dir, found)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        for name in remove_stale_temporaries(output_dir):
            logger.info("Removed %s, left by an interrupted write", os.path.join(output_dir, name))
        yield
    finally:
        lock.close()  # releases the lock


def write_config(cfg, eval_only=False):
    """Write ``OUTPUT_DIR/config.yaml``, the run's full config (on the main process, atomically).

    Called once the config, the model, the data and the weights have passed their checks, so a
    refused run leaves the folder's record of the run that made its checkpoints as it was. An
    ``--eval-only`` run into a folder that holds a training run's checkpoints writes
    ``config_eval.yaml`` instead, leaving that run's ``config.yaml`` alone.
    """
    if not comm.is_main_process():
        return
    name = "config_eval.yaml" if eval_only and run_files(cfg.OUTPUT_DIR) else "config.yaml"
    path = os.path.join(cfg.OUTPUT_DIR, name)
    atomic_write(path, lambda f: f.write(cfg.dump()), mode="w")
    logger.info("Full config saved to %s", os.path.abspath(path))
