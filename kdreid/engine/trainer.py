"""The trainer every kdreid project uses: FastReID's ``DefaultTrainer`` with kdreid's guarantees.

Compared with ``DefaultTrainer`` it evaluates with kdreid's exact vectorised evaluator and shows
extraction progress, writes checkpoints atomically, refuses to start from ImageNet weights that are
not on disk, and reports how far ``--resume`` got.
"""

import contextlib
import logging
import os
import queue
import sys
import threading
import time

from fastreid.data.build import (
    _test_loader_from_config,
    build_reid_test_loader,
    build_reid_train_loader,
)
from fastreid.data.transforms import build_transforms as fastreid_transforms
from fastreid.engine import DefaultTrainer, hooks
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.utils import comm
from torch import nn
from tqdm import tqdm

from kdreid.compat import checkpoint_format_problem
from kdreid.engine.checkpoint import AtomicCheckpointer
from kdreid.engine.hooks import DistillationWarmup
from kdreid.errors import ConfigError, UserInputError, WeightsError
from kdreid.evaluation import ReidEvaluator

__all__ = [
    "Trainer",
    "ProgressLoader",
    "check_batch_fits",
    "check_freeze_layers",
    "check_pretrain_weights",
    "check_pretrain_loaded",
    "stop_prefetching",
]

logger = logging.getLogger(__name__)


class ProgressLoader:
    """Wraps a finite data loader so that iterating it draws a progress bar.

    Args:
        loader: an iterable with ``__len__`` and ``dataset``.
        desc (str): the bar's label.
        enabled (bool): draw the bar (on the main process only).
    """

    def __init__(self, loader, desc, enabled=True):
        self.loader = loader
        self.dataset = loader.dataset
        self.desc = desc
        self.enabled = enabled and comm.is_main_process()

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(
            tqdm(
                self.loader,
                desc=self.desc,
                total=len(self.loader),
                unit="batch",
                disable=not self.enabled,
                dynamic_ncols=True,
                leave=False,
            )
        )


def check_pretrain_weights(cfg):
    """FastReID downloads ImageNet weights when none are named; kdreid never downloads.

    Raises:
        ConfigError: ``MODEL.BACKBONE.PRETRAIN`` is on and ``PRETRAIN_PATH`` is not a file.
        WeightsError: ``PRETRAIN_PATH`` is not a PyTorch checkpoint.
    """
    if not cfg.MODEL.BACKBONE.PRETRAIN:
        return
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.BACKBONE.PRETRAIN is on but MODEL.BACKBONE.PRETRAIN_PATH "
            f"('{path}') is not a file. kdreid downloads nothing: put the ImageNet weights on disk "
            "and name them with MODEL.BACKBONE.PRETRAIN_PATH, or train from scratch with "
            "MODEL.BACKBONE.PRETRAIN False."
        )
    problem = checkpoint_format_problem(path)
    if problem:
        raise WeightsError(
            f"MODEL.BACKBONE.PRETRAIN_PATH '{path}' {problem}: it should hold ImageNet weights "
            f"for {cfg.MODEL.BACKBONE.NAME}."
        )


@contextlib.contextmanager
def _recording_lenient_loads():
    """Record every ``load_state_dict(..., strict=False)`` made inside the block.

    FastReID's backbone builders load ``MODEL.BACKBONE.PRETRAIN_PATH`` that way and only log what
    did not fit. Yields a list of ``(module, keys of the loaded dict, result or None, error or
    None)``; the module method is restored when the block ends.
    """
    calls = []
    original = nn.Module.load_state_dict

    def load_state_dict(self, state_dict, strict=True, *args, **kwargs):
        if strict:
            return original(self, state_dict, strict, *args, **kwargs)
        keys = list(state_dict.keys()) if hasattr(state_dict, "keys") else []
        try:
            result = original(self, state_dict, strict, *args, **kwargs)
        except RuntimeError as exc:  # shapes differ: raised whatever ``strict`` says
            calls.append((self, keys, None, exc))
            raise
        calls.append((self, keys, result, None))
        return result

    nn.Module.load_state_dict = load_state_dict
    try:
        yield calls
    finally:
        nn.Module.load_state_dict = original


def check_pretrain_loaded(cfg, calls, min_fraction=0.5):
    """The ImageNet weights the backbone builder loaded must be the backbone's.

    Args:
        cfg: the config (``MODEL.BACKBONE``).
        calls: what :func:`_recording_lenient_loads` recorded while the model was built.
        min_fraction (float): the least share of the backbone's parameters the file must provide.

    Raises:
        WeightsError: the file provides less than ``min_fraction`` of the parameters of the module
            it was loaded into, or weights of other shapes.
    """
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    expected = f"ImageNet weights for MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}"
    if "resnet" in cfg.MODEL.BACKBONE.NAME:
        expected += f" (DEPTH {cfg.MODEL.BACKBONE.DEPTH})"
    for module, keys, result, error in calls:
        if error is not None:
            raise WeightsError(
                f"MODEL.BACKBONE.PRETRAIN_PATH '{path}' does not fit the backbone "
                f"{type(module).__name__}: {str(error).strip()}\nExpected {expected}."
            ) from error
        missing = set(result.missing_keys)
        own = [name for name, _ in module.named_parameters()]
        provided = sum(name not in missing for name in own)
        if not own or provided >= min_fraction * len(own):
            continue
        example_model = next((name for name in own if name in missing), own[0])
        example_file = (result.unexpected_keys or keys or ["(none: the file is empty)"])[0]
        raise WeightsError(
            f"MODEL.BACKBONE.PRETRAIN_PATH '{path}' provides {provided} of the {len(own)} "
            f"parameters of the backbone {type(module).__name__} (the backbone has e.g. "
            f"'{example_model}', the file has e.g. '{example_file}'). Expected {expected}, "
            "or MODEL.BACKBONE.PRETRAIN False to train from scratch."
        )


def stop_prefetching(loader, timeout=60.0):
    """Stop the background thread of FastReID's ``DataLoaderX`` (and its loader's workers).

    ``SimpleTrainer`` starts the thread when the trainer is built, and nothing stops it: a thread
    still loading a batch when the interpreter exits aborts the process ("terminate called without
    an active exception"). Safe to call more than once, and on any loader.
    """
    thread = getattr(loader, "iter", None)
    if not isinstance(thread, threading.Thread):
        return
    exit_event = getattr(thread, "exit_event", None)
    if exit_event is not None:
        exit_event.set()
    deadline = time.monotonic() + timeout
    # The thread stops after handing over the item it is loading: take items until it ends.
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            thread.queue.get(timeout=0.1)
        except queue.Empty:
            pass
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        logger.warning("The training data loader's prefetch thread did not stop in %.0f s", timeout)
        return
    shutdown_workers = getattr(getattr(thread, "generator", None), "_shutdown_workers", None)
    if shutdown_workers is not None:
        shutdown_workers()


class _HideUserErrors(logging.Filter):
    """Drops FastReID's "Exception during training" record (with its traceback) when the exception
    is bad input: the entry point prints it as one line and writes the traceback to the log file."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UserInputError)


def check_freeze_layers(cfg, model):
    """FastReID freezes the top-level children named in ``MODEL.FREEZE_LAYERS`` and silently does
    nothing for a name that is not one (the official MDPR code names ``backbone``, which its model
    does not have at the top level).

    Raises:
        ConfigError: ``SOLVER.FREEZE_ITERS`` > 0 and a name is not a top-level child of ``model``.
    """
    if cfg.SOLVER.FREEZE_ITERS <= 0 or not cfg.MODEL.FREEZE_LAYERS:
        return
    model = getattr(model, "module", model)
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in cfg.MODEL.FREEZE_LAYERS if name not in children]
    if unknown:
        raise ConfigError(
            f"MODEL.FREEZE_LAYERS names {unknown}, which {type(model).__name__} does not have; "
            f"its top-level modules are {children} (or set SOLVER.FREEZE_ITERS 0)."
        )


def check_batch_fits(cfg, dataset):
    """A training batch must be drawable from ``dataset``.

    Raises:
        ConfigError: ``SOLVER.IMS_PER_BATCH`` exceeds the training images, or an identity sampler
            needs more identities per batch (``IMS_PER_BATCH / DATALOADER.NUM_INSTANCE``) than the
            training set has.
    """
    batch = cfg.SOLVER.IMS_PER_BATCH
    images = len(dataset)
    if batch > images:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} is more than the {images} training images of "
            f"{', '.join(cfg.DATASETS.NAMES)}: use a smaller batch."
        )
    if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and hasattr(dataset, "pids"):
        per_batch = batch // cfg.DATALOADER.NUM_INSTANCE
        identities = len(set(dataset.pids))
        if per_batch > identities:
            raise ConfigError(
                f"{cfg.DATALOADER.SAMPLER_TRAIN} draws SOLVER.IMS_PER_BATCH / "
                f"DATALOADER.NUM_INSTANCE = {batch} / {cfg.DATALOADER.NUM_INSTANCE} = {per_batch} "
                f"identities per batch, but the training set has {identities}: use a smaller "
                "batch or more instances per identity."
            )


class Trainer(DefaultTrainer):
    """FastReID's default training loop, evaluated by :class:`kdreid.evaluation.ReidEvaluator`."""

    def __init__(self, cfg):
        try:
            super().__init__(cfg)
        except BaseException:
            # The training loader's prefetch thread is started before the hooks are built.
            self.close()
            raise

    def close(self):
        """Stop the training data loader's background work (idempotent)."""
        trainer = self.__dict__.get("_trainer")
        if trainer is not None:
            stop_prefetching(trainer.data_loader)

    @classmethod
    def build_model(cls, cfg):
        """FastReID's model; refused when ``MODEL.BACKBONE.PRETRAIN_PATH`` is missing, not a
        checkpoint, or not weights of this backbone (FastReID would log every key as missing and
        train from random weights)."""
        check_pretrain_weights(cfg)
        if not cfg.MODEL.BACKBONE.PRETRAIN:
            return super().build_model(cfg)
        with _recording_lenient_loads() as calls:
            try:
                model = super().build_model(cfg)
            except RuntimeError:
                check_pretrain_loaded(cfg, calls)  # raises WeightsError for a shape mismatch
                raise
        check_pretrain_loaded(cfg, calls)
        return model

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain Checkpointer just before calling this method.
        old = self.checkpointer
        self.checkpointer = AtomicCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
        )
        check_freeze_layers(self.cfg, self.model)
        ret = super().build_hooks()
        for hook in ret:
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = self.cfg.KDREID.LOG_PERIOD
            if isinstance(hook, hooks.EvalHook) and self.cfg.TEST.EVAL_PERIOD <= 0:
                # TEST.EVAL_PERIOD 0: evaluate once, after the last epoch (FastReID's hook divides
                # by the period and fails on 0).
                hook._period = self.max_epoch + 1
        warmup = self.cfg.KDREID.DISTILL.WARMUP_ITERS
        if warmup > 0 and hasattr(getattr(self.model, "module", self.model), "kd_scale"):
            ret.insert(0, DistillationWarmup(self.model, warmup))
        return ret

    def resume_or_load(self, resume=True):
        try:
            super().resume_or_load(resume=resume)
        except BaseException:
            self.close()
            raise
        if resume and self.start_epoch > 0:
            logger.info(
                "Resumed from %s: continuing at epoch %d (iteration %d) of %d",
                self.checkpointer.get_checkpoint_file(),
                self.start_epoch,
                self.start_epoch * self.iters_per_epoch,
                self.max_epoch,
            )

    def train(self):
        if self.start_epoch >= self.max_epoch:
            self.close()
            logger.info(
                "Training already finished (epoch %d of %d): evaluating the final model.",
                self.start_epoch,
                self.max_epoch,
            )
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results
        train_loop_logger = logging.getLogger("fastreid.engine.train_loop")
        hide = _HideUserErrors()
        train_loop_logger.addFilter(hide)
        try:
            return super().train()
        finally:
            train_loop_logger.removeFilter(hide)
            self.close()

    def after_train(self):
        """After a failed training (FastReID calls this in a ``finally``), the hooks that evaluate
        or save the model are skipped: the model is not the trained one, and a final checkpoint
        would make ``--resume`` believe training finished. The others (writers, timer) close."""
        if sys.exc_info()[0] is None:
            return super().after_train()
        self.storage.iter = self.iter
        for hook in self._hooks:
            if not isinstance(hook, hooks.EvalHook | hooks.PeriodicCheckpointer):
                hook.after_train()
        return None

    @classmethod
    def build_train_loader(cls, cfg):
        """FastReID's training loader, refused when no batch can be drawn from the training set
        (FastReID's identity samplers would then loop forever without yielding)."""
        logger.info("Prepare training set")
        loader = build_reid_train_loader(
            cfg,
            transforms=cls.build_transforms(cfg, is_train=True),
            combineall=cfg.DATASETS.COMBINEALL,
        )
        check_batch_fits(cfg, loader.dataset)
        return loader

    @classmethod
    def build_transforms(cls, cfg, is_train):
        """The image transforms of the training (``is_train``) or test loader: FastReID's.
        Projects that change what the model sees (a view crop, say) override this alone."""
        return fastreid_transforms(cfg, is_train=is_train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """FastReID's test loader, with ``DATALOADER.NUM_WORKERS`` workers (FastReID fixes 4)."""
        kwargs = _test_loader_from_config(
            cfg, dataset_name=dataset_name, transforms=cls.build_transforms(cfg, is_train=False)
        )
        return build_reid_test_loader(**kwargs, num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model):
        """Evaluate ``model`` on every dataset in ``cfg.DATASETS.TESTS``.

        Returns:
            dict: metrics (percent) of the one test set, or a dict of them per test set.
        """
        results = {}
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            loader = ProgressLoader(
                data_loader, f"Extracting {dataset_name}", enabled=cfg.KDREID.PROGRESS
            )
            results_i = inference_on_dataset(
                model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED
            )
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                results_i["dataset"] = dataset_name
                print_csv_format(results_i)
            results[dataset_name] = results_i
        if len(results) == 1:
            results = next(iter(results.values()))
        return results
