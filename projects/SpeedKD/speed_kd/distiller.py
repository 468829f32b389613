"""Hinton distillation of a ReID teacher into a fast student, as SpeedKD trains it."""

from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from kdreid.distill import KDReIDDistiller

__all__ = ["SpeedKDDistiller"]


@META_ARCH_REGISTRY.register()
class SpeedKDDistiller(KDReIDDistiller):
    """Student trained on ``(1 − λ)·CE(y, z_s) + λ·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``, plus
    its own triplet loss when configured and an optional feature hint.

    The teacher (``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS``) is frozen, in eval mode, and must have
    been trained on the student's identities unless ``MODEL.SPEEDKD.LAMBDA`` is 0 (the hint alone,
    ``HINT_WEIGHT`` > 0). Keys: ``MODEL.SPEEDKD.{TEMPERATURE, LAMBDA, HINT_WEIGHT}``; the student
    is ``KDREID.DISTILL.STUDENT`` (``Baseline``). The loss keys of ``KDREID.DISTILL``
    (``LOGIT_LOSS``, ``FEATURE_LOSS``, ...) are ``KDReIDDistiller``'s: set here, they are refused
    rather than ignored. The keys are checked by :func:`speed_kd.config.check_speed_kd_config`,
    the teacher's label space by :func:`speed_kd.config.check_speed_kd_built`.

    Reference:
        Ruiz, Raducanu, Mehta, Amores, "Optimizing speed/accuracy trade-off for person
        re-identification via knowledge distillation", Eng. Appl. of AI 87 (2020) 103309;
        Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network", 2015.
    """

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SPEEDKD
        args = super().from_config(cfg)
        args.update(
            ce_weight=1.0 - s.LAMBDA,
            logit_loss="kl",
            temperature=s.TEMPERATURE,
            logit_weight=s.LAMBDA,
            feature_loss="l2" if s.HINT_WEIGHT > 0 else "none",
            feature_weight=s.HINT_WEIGHT,
            relation_weight=0.0,
        )
        return args
