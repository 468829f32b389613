"""Hooks for FastReID's training loop: distillation's warm-up, and one model on every rank."""

from fastreid.engine.train_loop import HookBase

from kdreid.engine import distributed
from kdreid.meta_arch import unwrap

__all__ = ["DistillationWarmup", "SyncReplicas"]


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
