"""Distillation building blocks shared by every kdreid project: frozen teachers, KD losses, and a
distiller meta-architecture (registered as ``KDReIDDistiller``) that any FastReID model can be the
student of."""

from kdreid.distill.distiller import KDReIDDistiller
from kdreid.distill.losses import (
    feature_mimic_loss,
    kd_js_loss,
    kd_kl_loss,
    kd_symmetric_kl_loss,
    relation_loss,
)
from kdreid.distill.teacher import FrozenTeacher, TeacherOutput, build_teachers

__all__ = [
    "FrozenTeacher",
    "KDReIDDistiller",
    "TeacherOutput",
    "build_teachers",
    "feature_mimic_loss",
    "kd_js_loss",
    "kd_kl_loss",
    "kd_symmetric_kl_loss",
    "relation_loss",
]
