"""Hooks for FastReID's training loop that distillation needs."""

from fastreid.engine.train_loop import HookBase

from kdreid.meta_arch import unwrap

__all__ = ["DistillationWarmup"]


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
