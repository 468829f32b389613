"""The trainer every kdreid project uses: FastReID's ``DefaultTrainer`` with kdreid's guarantees.

Compared with ``DefaultTrainer`` it checks the model and the training set before training
(:func:`kdreid.engine.validation.check_built`) and ImageNet weights before the model is built,
writes checkpoints atomically, evaluates with kdreid's exact vectorised evaluator and shows
extraction progress, logs every ``KDREID.LOG_PERIOD`` iterations, stops its data loader's
background work on failure, and reports how far ``--resume`` got.
"""

import contextlib
import json
import logging
import numbers
import queue
import re
import sys
import threading
import time

import numpy as np
import torch
from fastreid.data.build import (
    _test_loader_from_config,
    build_reid_test_loader,
    build_reid_train_loader,
)
from fastreid.data.transforms import build_transforms as fastreid_transforms
from fastreid.engine import DefaultTrainer, hooks
from fastreid.engine.train_loop import SimpleTrainer, TrainerBase
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.events import get_event_storage
from fastreid.utils.logger import setup_logger
from fastreid.utils.params import ContiguousParams

from kdreid.checkpoint import AtomicCheckpointer
from kdreid.compat import CheckpointLoadError
from kdreid.config import autocast_dtype
from kdreid.engine import distributed, validation
from kdreid.engine.hooks import DistillationWarmup, EvalResultsWriter, SyncReplicas
from kdreid.errors import UserInputError, WeightsError
from kdreid.evaluation import ReidEvaluator
from kdreid.meta_arch import distils, unwrap
from kdreid.progress import progress

__all__ = [
    "AutocastForward",
    "MixedPrecisionLoop",
    "TrainLoop",
    "Trainer",
    "ProgressLoader",
    "autocast",
    "stop_prefetching",
]

logger = logging.getLogger(__name__)


class ProgressLoader:
    """Wraps a finite data loader so that iterating it draws a progress bar (log lines where
    stderr is not a terminal: :func:`kdreid.progress.progress`).

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
            progress(
                self.loader,
                desc=self.desc,
                total=len(self.loader),
                unit="batch",
                enabled=self.enabled,
            )
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


def autocast(device, enabled=True):
    """Autocast on ``device`` in its mixed-precision type (:func:`kdreid.config.autocast_dtype`):
    float16 on CUDA, bfloat16 on the CPU; a no-op context when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    device = torch.device(device)
    return torch.autocast(device.type, dtype=autocast_dtype(device.type))


class AutocastForward(torch.nn.Module):
    """``model`` whose forward runs under :func:`autocast` and returns float32: the features are
    extracted in mixed precision, then ranked in float32.

    Args:
        model: the model (its ``train()`` / ``eval()`` pass through).
        device (str): its device.
    """

    def __init__(self, model, device):
        super().__init__()
        self.model = model
        self.device = device

    def forward(self, inputs):
        with autocast(self.device):
            outputs = self.model(inputs)
        return outputs.float() if torch.is_tensor(outputs) else outputs


class TrainLoop(SimpleTrainer):
    """FastReID's training step whose metrics reach the event storage in batches.

    FastReID's ``SimpleTrainer._write_metrics`` copies every loss to the host (``.item()``) and
    gathers them over the processes at every iteration: on CUDA each copy waits for the GPU to
    finish the step, and MDPR has 21 loss terms. Here each iteration's losses stay on the device
    (detached) until :meth:`flush_metrics`, which the :class:`Trainer` calls every
    ``KDREID.LOG_PERIOD`` iterations and at the end of every epoch, before anything writes or
    reads them: one copy and one gather per flush, and the storage then holds every iteration's
    values, each under its own iteration, as FastReID's would. A non-finite loss stops training
    at the flush, naming the iteration where it first appeared.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending = []

    def _write_metrics(self, loss_dict, data_time):
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        iteration = get_event_storage().iter  # where FastReID's put_scalar would store it
        self._pending.append((iteration, tuple(loss_dict), values, data_time))

    def flush_metrics(self):
        """Put the losses of the iterations since the last flush into the event storage (on the
        main process, averaged over the processes as FastReID's ``_write_metrics`` does)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        values = torch.cat([p[2] for p in pending]).cpu().tolist()  # one device-to-host copy
        records, start = [], 0
        for iteration, names, _, data_time in pending:
            losses = dict(zip(names, values[start : start + len(names)], strict=True))
            records.append((iteration, losses, data_time))
            start += len(names)
        by_rank = comm.gather(records)
        if not comm.is_main_process():
            return
        storage = get_event_storage()
        current = storage.iter
        try:
            for step in zip(*by_rank, strict=True):
                iteration = step[0][0]
                storage.iter = iteration
                storage.put_scalar("data_time", max(s[2] for s in step))
                losses = {k: float(np.mean([s[1][k] for s in step])) for k in step[0][1]}
                total = sum(losses.values())
                if not np.isfinite(total):
                    raise FloatingPointError(
                        f"Loss became infinite or NaN at iteration={iteration}!\n"
                        f"loss_dict = {losses}"
                    )
                storage.put_scalar("total_loss", total)
                if len(losses) > 1:
                    storage.put_scalars(**losses)
        finally:
            storage.iter = current


class MixedPrecisionLoop(TrainLoop):
    """FastReID's training step with the forward and the losses under autocast
    (``SOLVER.AMP.ENABLED``): float16 with gradient scaling on CUDA, as FastReID's ``AMPTrainer``,
    and bfloat16 on the CPU, which needs no scaling (float32's exponent range). FastReID's
    ``AMPTrainer`` is CUDA-only.

    Args:
        model, data_loader, optimizer, param_wrapper: as for ``SimpleTrainer``.
        device (str): the model's device.
    """

    def __init__(self, model, data_loader, optimizer, param_wrapper, device):
        super().__init__(model, data_loader, optimizer, param_wrapper)
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.grad_scaler = torch.amp.GradScaler("cuda") if cuda else None

    def run_step(self):
        if not self.model.training:
            raise RuntimeError("MixedPrecisionLoop: the model was put in eval mode")
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with autocast(self.device):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()
        else:
            self.grad_scaler.scale(losses).backward()
            self._write_metrics(loss_dict, data_time)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        if isinstance(self.param_wrapper, ContiguousParams):
            self.param_wrapper.assert_buffer_is_valid()


MAX_LOSS_TERMS = 6
"""Loss terms (besides ``total_loss``) the training log line shows one by one; with more (MDPR
has 21), it shows them summed by kind (:func:`compact_loss_line`)."""

_LOSS_TERM = re.compile(r"(\S*loss\S*): (\S+)")


def loss_kind(name):
    """The kind of a loss term, from its name: ``loss_hard_part_0_triplet`` -> ``triplet``,
    ``loss_diversity_loss_reg_4`` -> ``diversity``, ``loss_mutual_distillation`` ->
    ``distillation`` (its last word, trailing indices, ``reg`` and ``loss`` left out)."""
    words = [w for w in re.sub(r"(_reg)?(_\d+)*$", "", name).split("_") if w and w != "loss"]
    return words[-1] if words else name


def compact_loss_line(line, max_terms=MAX_LOSS_TERMS):
    """FastReID's training log line with its loss terms summed by :func:`loss_kind` where there
    are more than ``max_terms`` (``total_loss`` kept as is); each kind says how many terms it
    sums. Every term stays in ``metrics.json`` and TensorBoard."""
    terms = [(m, m.group(1), m.group(2)) for m in _LOSS_TERM.finditer(line)]
    parts = [t for t in terms if t[1] != "total_loss"]
    if len(parts) <= max_terms:
        return line
    try:
        values = [(name, float(value)) for _, name, value in parts]
    except ValueError:
        return line
    kinds = {}
    for name, value in values:
        total, count = kinds.get(loss_kind(name), (0.0, 0))
        kinds[loss_kind(name)] = (total + value, count + 1)
    shown = [f"{m.group(0)}" for m, name, _ in terms if name == "total_loss"] + [
        f"{kind}: {total:.4g}" + (f" (sum of {count})" if count > 1 else "")
        for kind, (total, count) in kinds.items()
    ]
    start, end = terms[0][0].start(), terms[-1][0].end()
    return line[:start] + "  ".join(shown) + line[end:]


class _CompactLossLine:
    """The metric printer's logger, its lines passed through :func:`compact_loss_line`."""

    def __init__(self, logger):
        self._logger = logger

    def info(self, message, *args, **kwargs):
        self._logger.info(compact_loss_line(str(message)), *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._logger, name)


class _HideUserErrors(logging.Filter):
    """Drops FastReID's "Exception during training" record (with its traceback) when the exception
    is bad input: the entry point prints it as one line and writes the traceback to the log file."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UserInputError)


class Trainer(DefaultTrainer):
    """FastReID's default training loop, evaluated by :class:`kdreid.evaluation.ReidEvaluator`.

    Built in the order FastReID builds it (training loader, model, optimizer, loop, scheduler,
    checkpointer, hooks), with the model and the training set checked in between
    (:func:`~kdreid.engine.validation.check_built`) and kdreid's
    :class:`~kdreid.checkpoint.AtomicCheckpointer`.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()  # as FastReID's trainer does when nothing set logging up
        data_loader = self.build_train_loader(cfg)
        try:
            self._build(cfg, data_loader)
        except BaseException:
            stop_prefetching(data_loader)  # the loop's loader starts its thread when built
            raise

    def _build(self, cfg, data_loader):
        cfg = self.auto_scale_hyperparams(cfg, data_loader.dataset.num_classes)
        model = self.build_model(cfg)
        validation.check_built(cfg, model, data_loader.dataset)
        optimizer, param_wrapper = self.build_optimizer(cfg, model)
        model = distributed.wrap_model(cfg, model)  # DDP when there is a process group
        if cfg.SOLVER.AMP.ENABLED:
            self._trainer = MixedPrecisionLoop(
                model, data_loader, optimizer, param_wrapper, cfg.MODEL.DEVICE
            )
        else:
            self._trainer = TrainLoop(model, data_loader, optimizer, param_wrapper)
        scaler = getattr(self._trainer, "grad_scaler", None)
        self.iters_per_epoch = len(data_loader.dataset) // cfg.SOLVER.IMS_PER_BATCH
        self.scheduler = self.build_lr_scheduler(cfg, optimizer, self.iters_per_epoch)
        self.checkpointer = AtomicCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            save_to_disk=comm.is_main_process(),
            optimizer=optimizer,
            **self.scheduler,
            **({"grad_scaler": scaler} if scaler is not None else {}),
        )
        self.start_epoch = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.warmup_iters = cfg.SOLVER.WARMUP_ITERS
        self.delay_epochs = cfg.SOLVER.DELAY_EPOCHS
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def run_step(self):
        """FastReID's step; then, every ``KDREID.LOG_PERIOD`` iterations and at the end of every
        epoch (where the metric writers, evaluation and checkpoints run), the step's losses are
        handed to the event storage (:meth:`TrainLoop.flush_metrics`)."""
        super().run_step()
        done = self.iter + 1
        if (
            done % self.cfg.KDREID.LOG_PERIOD == 0
            or done % self.iters_per_epoch == 0
            or done == self.max_iter
        ):
            flush = getattr(self._trainer, "flush_metrics", None)  # FastReID's loop writes itself
            if flush is not None:
                flush()

    def close(self):
        """Stop the training data loader's background work (idempotent)."""
        trainer = self.__dict__.get("_trainer")
        if trainer is not None:
            stop_prefetching(trainer.data_loader)

    @staticmethod
    def auto_scale_hyperparams(cfg, num_classes):
        """``MODEL.HEADS.NUM_CLASSES`` from the training set where the config leaves it 0.

        FastReID's also writes ``config.yaml`` at this point, before the model and the weights are
        known to fit; the engine writes it once, when they are (:func:`kdreid.engine.main`).
        """
        if cfg.MODEL.HEADS.NUM_CLASSES != 0:
            return cfg
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.HEADS.NUM_CLASSES = num_classes
        logger.info("Auto-scaling the num_classes=%d", num_classes)
        if frozen:
            cfg.freeze()
        return cfg

    @classmethod
    def build_model(cls, cfg):
        """FastReID's model, after ``MODEL.BACKBONE.PRETRAIN_PATH`` is checked against the backbone
        (:func:`~kdreid.engine.validation.check_pretrained`: FastReID would log every key as
        missing and train from random weights; an empty one is the ImageNet file FastReID would
        download, from the torch hub cache or downloaded there); a load of weights of other
        shapes is named."""
        cfg = validation.check_pretrained(cfg)
        try:
            model = super().build_model(cfg)
        except CheckpointLoadError as exc:  # a builder's own (weights-only) read of the file
            raise WeightsError(
                f"Cannot load checkpoint '{exc.path}' (MODEL.BACKBONE.PRETRAIN_PATH): it "
                f"{exc.problem}"
            ) from exc
        except RuntimeError as exc:
            error = validation.load_error(cfg, exc)
            if error is None:
                raise
            raise error from exc
        if cfg.KDREID.CHANNELS_LAST:
            model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """FastReID's optimizer (``SOLVER.OPT`` over FastReID's parameter groups: learning rates,
        weight decay, frozen layers, gradient clipping), stepping with torch's multi-tensor
        (``foreach``) implementation instead of over FastReID's flat ``ContiguousParams``
        buffers. The update rule is the same; the parameters keep their own storage, so that
        channels-last weights stay channels-last (a view of a flat buffer is contiguous).

        Returns:
            tuple[torch.optim.Optimizer, None]: the optimizer, and no parameter wrapper.
        """
        optimizer, _ = build_optimizer(cfg, model, contiguous=False)
        optimizer.defaults["foreach"] = True
        for group in optimizer.param_groups:
            group["foreach"] = True
        return optimizer, None

    def build_writers(self):
        """FastReID's writers; the console line of a model with many loss terms sums them by
        kind (:func:`compact_loss_line`; each term is still in ``metrics.json``)."""
        from fastreid.utils.events import CommonMetricPrinter

        writers = super().build_writers()
        for writer in writers:
            if isinstance(writer, CommonMetricPrinter):
                writer.logger = _CompactLossLine(writer.logger)
        return writers

    def build_hooks(self):
        """FastReID's hooks, in its order: timer, LR schedule, precise BN, layer freezing,
        evaluation (every ``TEST.EVAL_PERIOD`` epochs; 0: once, after the last), then on the main
        process checkpoints and metric writers (every ``KDREID.LOG_PERIOD`` iterations); first,
        for a model with distillation terms, :class:`DistillationWarmup`."""
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler(self.optimizer, self.scheduler)]
        warmup = cfg.KDREID.DISTILL.WARMUP_ITERS
        if warmup > 0 and distils(self.model):
            ret.insert(0, DistillationWarmup(self.model, warmup))
        if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model):
            logger.info("Prepare precise BN dataset")
            bn_cfg = cfg.clone()
            bn_cfg.defrost()
            bn_cfg.DATALOADER.NUM_WORKERS = 0  # as FastReID: memory and time
            bn_cfg.DATASETS.NAMES = (cfg.TEST.PRECISE_BN.DATASET,)
            loader = self.build_train_loader(bn_cfg)
            validation.check_batch_fits(bn_cfg, loader.dataset)
            ret.append(hooks.PreciseBN(self.model, loader, cfg.TEST.PRECISE_BN.NUM_ITER))
        if cfg.MODEL.FREEZE_LAYERS and cfg.SOLVER.FREEZE_ITERS > 0:
            ret.append(
                hooks.LayerFreeze(self.model, cfg.MODEL.FREEZE_LAYERS, cfg.SOLVER.FREEZE_ITERS)
            )

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        if comm.get_world_size() > 1:
            ret.append(SyncReplicas(self.model))  # before what evaluates or saves the model
        # FastReID's EvalHook divides by its period: 0 becomes a period past the last epoch.
        period = cfg.TEST.EVAL_PERIOD if cfg.TEST.EVAL_PERIOD > 0 else self.max_epoch + 1
        ret.append(hooks.EvalHook(period, test_and_save_results))
        if comm.is_main_process():
            writers = self.build_writers()
            ret.append(
                EvalResultsWriter(writers, lambda: getattr(self, "_last_eval_results", None))
            )
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicWriter(writers, cfg.KDREID.LOG_PERIOD))
        return ret

    def resume_or_load(self, resume=True):
        try:
            super().resume_or_load(resume=resume)
        except BaseException:
            self.close()
            raise
        if resume and 0 < self.start_epoch < self.max_epoch:
            # start_epoch counts the epochs done; FastReID's own lines ("Starting training from
            # epoch S", "epoch/iter") count epochs from 0, so S is the next epoch's index
            logger.info(
                "Resumed from %s, saved after %d of %d epochs: training continues from iteration "
                "%d (FastReID's epoch %d, counted from 0)",
                self.checkpointer.get_checkpoint_file(),
                self.start_epoch,
                self.max_epoch,
                self.start_epoch * self.iters_per_epoch,
                self.start_epoch,
            )
        elif resume and self.start_epoch >= self.max_epoch:
            logger.info(
                "Resumed from %s, saved after all %d epochs",
                self.checkpointer.get_checkpoint_file(),
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
        """FastReID's training loader, with :meth:`build_transforms`."""
        logger.info("Prepare training set")
        return build_reid_train_loader(
            cfg,
            transforms=cls.build_transforms(cfg, is_train=True),
            combineall=cfg.DATASETS.COMBINEALL,
        )

    @classmethod
    def build_transforms(cls, cfg, is_train):
        """The image transforms of the training (``is_train``) or test loader: FastReID's.
        Projects that change what the model sees (a view crop, say) override this alone."""
        return fastreid_transforms(cfg, is_train=is_train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """FastReID's test loader, with ``DATALOADER.NUM_WORKERS`` workers (FastReID fixes 4)."""
        # FastReID's build_reid_test_loader(cfg, ...) would hand num_workers to the dataset: its
        # from_config gives the arguments of the plain call, which takes the worker count.
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

        On several processes each extracts its share of the images (the model itself, outside
        its DDP wrapper: the shares may differ by a batch) and rank 0 ranks them. Under
        autocast with ``KDREID.EVAL_AUTOCAST``.

        Returns:
            dict: metrics (percent) of the one test set, or a dict of them per test set.
        """
        results = {}
        model = unwrap(model)
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            loader = ProgressLoader(
                data_loader, f"Extracting {dataset_name}", enabled=cfg.KDREID.PROGRESS
            )
            extractor = (
                AutocastForward(model, cfg.MODEL.DEVICE) if cfg.KDREID.EVAL_AUTOCAST else model
            )
            results_i = inference_on_dataset(
                extractor, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED
            )
            if comm.is_main_process():
                exact = {k: float(v) for k, v in results_i.items() if isinstance(v, numbers.Real)}
                logger.info("Evaluation results for %s: %s", dataset_name, json.dumps(exact))
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                results_i["dataset"] = dataset_name
                print_csv_format(results_i)
            results[dataset_name] = results_i
        if len(results) == 1:
            results = next(iter(results.values()))
        return results
