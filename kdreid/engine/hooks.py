"""Hooks for FastReID's training loop: distillation's warm-up, one model on every rank, and the
evaluation's metrics in the metric files."""

import json

from fastreid.engine.train_loop import HookBase
from fastreid.evaluation.testing import flatten_results_dict
from fastreid.utils.events import JSONWriter, TensorboardXWriter

from kdreid.engine import distributed
from kdreid.meta_arch import unwrap

__all__ = ["DistillationWarmup", "EvalResultsWriter", "SyncReplicas"]


class DistillationWarmup(HookBase):
    """Ramp the distillation terms in linearly over the first ``warmup_iters`` iterations.

    Early in training the student's logits are noise and a full-weight KD term can dominate its
    own losses; the ramp sets the model's ``kd_scale`` (which multiplies every distillation term
    of :class:`~kdreid.distill.KDReIDDistiller`) to ``(iter + 1) / warmup_iters``, capped at 1,
    before each step. The scale is a function of the iteration alone, so ``--resume`` continues it.

    Args:
        model: a model with distillation terms (:func:`kdreid.meta_arch.distils`), possibly in a
            DDP wrapper.
        warmup_iters (int): length of the ramp (> 0).
    """

    def __init__(self, model, warmup_iters):
        if warmup_iters <= 0:
            raise ValueError(f"warmup_iters must be > 0, got {warmup_iters}")
        self.model = unwrap(model)
        self.warmup_iters = warmup_iters

    def scale(self, iteration):
        """The factor on the distillation terms at ``iteration`` (0-based)."""
        return min(1.0, (iteration + 1) / self.warmup_iters)

    def before_step(self):
        self.model.kd_scale = self.scale(self.trainer.iter)
        self.trainer.storage.put_scalar("kd_scale", self.model.kd_scale, smoothing_hint=False)


class SyncReplicas(HookBase):
    """At the end of every epoch, make the ranks' models one: average their BatchNorm statistics
    (:func:`kdreid.engine.distributed.sync_buffers`; DDP keeps the weights equal, not the
    buffers) and check that weights and buffers are identical byte for byte
    (:func:`~kdreid.engine.distributed.check_replicas`, logged). Registered before the hooks that
    evaluate and save the model, so what is evaluated during training is what is saved.

    Args:
        model: the model in its DDP wrapper.
    """

    def __init__(self, model):
        self.model = model

    def after_epoch(self):
        distributed.sync_buffers(self.model)
        distributed.check_replicas(self.model, f"Epoch {self.trainer.epoch + 1}")


class EvalResultsWriter(HookBase):
    """Write each evaluation's metrics to ``metrics.json`` and TensorBoard, the final one included.

    FastReID's ``EvalHook`` puts the metrics into the event storage at the current iteration, and
    its JSON and TensorBoard writers skip scalars of an iteration they have already written. So an
    evaluation at the end of an epoch whose last step was logged never reaches the files; the
    final one never does (the last step is always logged, and an evaluation after training, as
    ``TEST.EVAL_PERIOD 0`` runs it, finds the writers only closing). Placed after ``EvalHook`` and
    before ``PeriodicWriter`` (on the main process), this hook writes such metrics itself; those
    the writers will still write are left to them, so no line is doubled.

    Args:
        writers: the ``PeriodicWriter``'s writers (the same objects).
        results: called without arguments, the last evaluation's results (a nested dict), or None.
    """

    def __init__(self, writers, results):
        self._writers = writers
        self._results = results
        self._written = None

    def _write(self, after_train):
        results = self._results()
        if results is None or results is self._written:
            return
        self._written = results
        scalars = {k: float(v) for k, v in flatten_results_dict(results).items()}
        iteration = self.trainer.storage.iter
        for writer in self._writers:
            if not isinstance(writer, JSONWriter | TensorboardXWriter):
                continue  # the console printer: the evaluation logs its own table
            if not after_train and iteration > writer._last_write:
                continue  # the PeriodicWriter writes this iteration next, metrics included
            if isinstance(writer, JSONWriter):
                line = json.dumps({**scalars, "iteration": iteration}, sort_keys=True)
                writer._file_handle.write(line + "\n")
                writer._file_handle.flush()
            elif isinstance(writer, TensorboardXWriter):
                for key, value in scalars.items():
                    writer._writer.add_scalar(key, value, iteration)
                writer._writer.flush()

    def after_epoch(self):
        self._write(after_train=False)

    def after_train(self):
        self._write(after_train=True)
