"""Hinton distillation of a ReID teacher into a fast student, as SpeedKD trains it."""

from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from kdreid.config import get_cfg
from kdreid.distill import KDReIDDistiller
from kdreid.errors import ConfigError

__all__ = ["SpeedKDDistiller"]

# KDReIDDistiller's loss keys, which SpeedKDDistiller sets from MODEL.SPEEDKD instead.
_OVERRIDDEN_KEYS = (
    "CE_WEIGHT",
    "LOGIT_LOSS",
    "TEMPERATURE",
    "LOGIT_WEIGHT",
    "FEATURE_LOSS",
    "FEATURE_WEIGHT",
    "RELATION_WEIGHT",
)
# What works when the teacher's identities are not the student's (checked on SynthReID-tiny).
_FEATURES_ONLY = (
    "MODEL.SPEEDKD.LAMBDA 0 MODEL.SPEEDKD.HINT_WEIGHT 1 (SpeedKD's feature hint alone), or "
    "MODEL.META_ARCHITECTURE KDReIDDistiller KDREID.DISTILL.LOGIT_LOSS none "
    "KDREID.DISTILL.FEATURE_LOSS l2 KDREID.DISTILL.FEATURE_WEIGHT 1"
)


@META_ARCH_REGISTRY.register()
class SpeedKDDistiller(KDReIDDistiller):
    """Student trained on ``(1 − λ)·CE(y, z_s) + λ·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``, plus
    its own triplet loss when configured and an optional feature hint.

    The teacher (``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS``) is frozen, in eval mode, and must have
    been trained on the student's identities unless ``MODEL.SPEEDKD.LAMBDA`` is 0 (the hint alone,
    ``HINT_WEIGHT`` > 0). Keys: ``MODEL.SPEEDKD.{TEMPERATURE, LAMBDA, HINT_WEIGHT}``; the student
    is ``KDREID.DISTILL.STUDENT`` (``Baseline``). The loss keys of ``KDREID.DISTILL``
    (``LOGIT_LOSS``, ``FEATURE_LOSS``, ...) are ``KDReIDDistiller``'s: set here, they are refused
    rather than ignored.

    Reference:
        Ruiz, Raducanu, Mehta, Amores, "Optimizing speed/accuracy trade-off for person
        re-identification via knowledge distillation", Eng. Appl. of AI 87 (2020) 103309;
        Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network", 2015.
    """

    @classmethod
    def from_config(cls, cfg):
        s = cfg.MODEL.SPEEDKD
        if s.TEMPERATURE <= 0:
            raise ConfigError(f"MODEL.SPEEDKD.TEMPERATURE must be > 0, got {s.TEMPERATURE}.")
        if not 0.0 <= s.LAMBDA <= 1.0:
            raise ConfigError(f"MODEL.SPEEDKD.LAMBDA must be in [0, 1], got {s.LAMBDA}.")
        if s.HINT_WEIGHT < 0:
            raise ConfigError(f"MODEL.SPEEDKD.HINT_WEIGHT must be >= 0, got {s.HINT_WEIGHT}.")
        defaults = get_cfg().KDREID.DISTILL
        changed = [k for k in _OVERRIDDEN_KEYS if cfg.KDREID.DISTILL[k] != defaults[k]]
        if changed:
            raise ConfigError(
                f"SpeedKDDistiller does not read KDREID.DISTILL.{changed[0]} (set to "
                f"{cfg.KDREID.DISTILL[changed[0]]!r}): its loss is set by "
                "MODEL.SPEEDKD.{LAMBDA, TEMPERATURE, HINT_WEIGHT}. To distil features only use "
                f"{_FEATURES_ONLY}; to set KDREID.DISTILL.* use MODEL.META_ARCHITECTURE "
                "KDReIDDistiller."
            )
        args = super().from_config(cfg)
        if s.LAMBDA > 0:  # Hinton's term compares the teacher's and the student's logits
            for teacher in args["teachers"]:
                if teacher.num_classes != args["num_classes"]:
                    raise ConfigError(
                        f"Teacher '{teacher.name}' was trained on {teacher.num_classes} "
                        f"identities but the student's training set has {args['num_classes']}: "
                        f"SpeedKD's logit distillation (MODEL.SPEEDKD.LAMBDA {s.LAMBDA:g} > 0) "
                        "needs the same label space. Train the teacher on the student's dataset "
                        f"(DATASETS.NAMES), or distil features only: {_FEATURES_ONLY}."
                    )
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
