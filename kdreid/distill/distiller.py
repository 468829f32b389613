"""A generic distiller: any FastReID model as the student of one or more frozen teachers.

``MODEL.META_ARCHITECTURE: KDReIDDistiller`` wraps the meta-architecture named by
``KDREID.DISTILL.STUDENT`` (``Baseline`` by default, any registered one works) and adds
distillation terms to the student's own losses:

- logit KD (``loss_kd_logits``): Hinton's KL at temperature T, FastReID's symmetric KL, or
  Jensen–Shannon, between the student's and each teacher's identity logits;
- feature mimicking (``loss_kd_feature``): L2 or cosine between a linear projection of the
  student's feature and each teacher's retrieval feature;
- relation KD (``loss_kd_relation``): the batch's pairwise similarity matrices.

The student's outputs are read with a forward hook on its head (``KDREID.DISTILL.HEAD``), so the
student's own forward and losses run unchanged. Terms from several teachers are averaged.

Checkpoints: the distiller's state dict is the student's (same keys as the plain student model,
so a distilled checkpoint deploys with the student's own config) plus training-only modules under
``distill.`` (projections), which a plain model skips when loading. Teachers are not in it
(:class:`~kdreid.distill.FrozenTeacher`). In evaluation the distiller is the student.
"""

import logging
from collections.abc import Sequence

from fastreid.config import configurable
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from kdreid.distill import losses as L
from kdreid.distill.teacher import FrozenTeacher, TeacherOutput, build_teachers, embedding_dim
from kdreid.errors import ConfigError
from kdreid.meta_arch import MetaArchitecture

__all__ = ["KDReIDDistiller", "LOGIT_LOSSES", "FEATURE_LOSSES"]

logger = logging.getLogger(__name__)

LOGIT_LOSSES = {
    "kl": L.kd_kl_loss,
    "skl": L.kd_symmetric_kl_loss,
    "js": L.kd_js_loss,
    "none": None,
}
FEATURE_LOSSES = ("l2", "cosine", "none")

_STUDENT = "student."
_TRAINING_ONLY = "distill."


@META_ARCH_REGISTRY.register()
class KDReIDDistiller(MetaArchitecture):
    """Distil frozen teachers into a student model.

    Args:
        student: a FastReID meta-architecture whose head returns FastReID's training outputs
            (``pred_class_logits``, ``features``).
        teachers: the frozen teachers (may be empty for evaluation; training then fails).
        student_dim: dimension of the student's ``features`` output (for the projections).
        num_classes: identities of the student's classifier (logit KD needs the teachers' to match).
        head: name of the student's submodule whose output is read.
        ce_weight: factor on the student's ``loss_cls`` (``1 − λ`` in Hinton's formulation).
        logit_loss: one of :data:`LOGIT_LOSSES`.
        temperature: T of the logit loss.
        logit_weight: weight of the logit term (λ).
        feature_loss: one of :data:`FEATURE_LOSSES`.
        feature_weight: weight of the feature term.
        relation_weight: weight of the relation term (0: off).

    The config keys are checked by :func:`kdreid.engine.validation.check_config`, the teachers'
    label spaces against the student's by :func:`~kdreid.engine.validation.check_built`.

    Raises:
        ValueError: an unknown loss or a temperature that is not positive.

    Reference:
        Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network", 2015.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teachers: Sequence[FrozenTeacher],
        student_dim: int,
        num_classes: int,
        head: str = "heads",
        ce_weight: float = 1.0,
        logit_loss: str = "kl",
        temperature: float = 4.0,
        logit_weight: float = 1.0,
        feature_loss: str = "none",
        feature_weight: float = 0.0,
        relation_weight: float = 0.0,
    ):
        super().__init__()
        if logit_loss not in LOGIT_LOSSES:
            raise ValueError(
                f"logit_loss must be one of {', '.join(LOGIT_LOSSES)}; got {logit_loss!r}"
            )
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(
                f"feature_loss must be one of {', '.join(FEATURE_LOSSES)}; got {feature_loss!r}"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.student = student
        self.teachers = nn.ModuleList(teachers)
        self.ce_weight = ce_weight
        self.logit_loss = logit_loss
        self.temperature = temperature
        self.logit_weight = logit_weight
        self.feature_loss = feature_loss
        self.feature_weight = feature_weight
        self.relation_weight = relation_weight
        # Multiplies every distillation term; the DistillationWarmup hook ramps it from 0 to 1.
        self.kd_scale = 1.0
        self.num_classes = num_classes
        self.distill = nn.ModuleDict()
        if feature_loss != "none" and feature_weight > 0:
            self.distill["feature_proj"] = nn.ModuleList(
                nn.Linear(student_dim, t.feature_dim, bias=False) for t in self.teachers
            )

        self._head_output = None
        getattr(self.student, head).register_forward_hook(self._keep_head_output)
        self._register_state_dict_hook(_strip_student_prefix)
        self._register_load_state_dict_pre_hook(_add_student_prefix)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.KDREID.DISTILL
        student = META_ARCH_REGISTRY.get(d.STUDENT)(cfg)
        return {
            "student": student,
            "teachers": build_teachers(cfg.KD.MODEL_CONFIG, cfg.KD.MODEL_WEIGHTS),
            "student_dim": embedding_dim(cfg),
            "num_classes": cfg.MODEL.HEADS.NUM_CLASSES,
            "head": d.HEAD,
            "ce_weight": d.CE_WEIGHT,
            "logit_loss": d.LOGIT_LOSS,
            "temperature": d.TEMPERATURE,
            "logit_weight": d.LOGIT_WEIGHT,
            "feature_loss": d.FEATURE_LOSS,
            "feature_weight": d.FEATURE_WEIGHT,
            "relation_weight": d.RELATION_WEIGHT,
        }

    def deployed_model(self) -> nn.Module:
        """What is deployed (and benchmarked): the student alone (teachers and the training-only
        ``distill.`` modules left out)."""
        return self.student

    @property
    def uses_logits(self) -> bool:
        return self.logit_loss != "none" and self.logit_weight > 0

    @property
    def device(self):
        return self.student.device

    def _keep_head_output(self, module, inputs, output):
        if self.training:  # in evaluation nothing reads it: keep no reference to the batch
            self._head_output = output

    def forward(self, batched_inputs):
        if not self.training:
            return self.student(batched_inputs)
        if len(self.teachers) == 0:
            raise ConfigError(
                "KDReIDDistiller has no teacher to learn from: name teacher configs in "
                "KD.MODEL_CONFIG and their checkpoints in KD.MODEL_WEIGHTS."
            )
        # Teachers first: FastReID's preprocessing normalises the images in place.
        images = batched_inputs["images"]
        teacher_outputs = [teacher(images) for teacher in self.teachers]
        losses = self.student(batched_inputs)
        student_outputs, self._head_output = self._head_output, None
        if "loss_cls" in losses and self.ce_weight != 1.0:
            losses["loss_cls"] = losses["loss_cls"] * self.ce_weight
        losses.update(self.distillation_losses(student_outputs, teacher_outputs))
        return losses

    def distillation_losses(self, student_outputs: dict, teacher_outputs: list[TeacherOutput]):
        """The distillation terms, each averaged over the teachers and scaled by ``kd_scale``.

        Args:
            student_outputs: the student head's training outputs (``pred_class_logits`` (N, C),
                ``features`` (N, D)).
            teacher_outputs: one :class:`TeacherOutput` per teacher.

        Returns:
            dict[str, Tensor]: ``loss_kd_logits`` / ``loss_kd_feature`` / ``loss_kd_relation``,
            for the terms that are on.
        """
        n = len(teacher_outputs)
        out = {}
        if self.uses_logits:
            fn = LOGIT_LOSSES[self.logit_loss]
            logits = student_outputs["pred_class_logits"]
            term = sum(
                fn(logits, t.logits.to(logits.dtype), self.temperature) for t in teacher_outputs
            )
            out["loss_kd_logits"] = term * (self.logit_weight * self.kd_scale / n)
        features = student_outputs["features"]
        if "feature_proj" in self.distill:
            term = sum(
                L.feature_mimic_loss(
                    proj(features), t.features.to(features.dtype), self.feature_loss
                )
                for proj, t in zip(self.distill["feature_proj"], teacher_outputs)
            )
            out["loss_kd_feature"] = term * (self.feature_weight * self.kd_scale / n)
        if self.relation_weight > 0:
            term = sum(
                L.relation_loss(features, t.features.to(features.dtype)) for t in teacher_outputs
            )
            out["loss_kd_relation"] = term * (self.relation_weight * self.kd_scale / n)
        return out


def _strip_student_prefix(module, state_dict, prefix, local_metadata):
    """State-dict hook: ``student.backbone.x`` is saved as ``backbone.x``."""
    for key in [k for k in state_dict if k.startswith(prefix + _STUDENT)]:
        state_dict[prefix + key[len(prefix + _STUDENT) :]] = state_dict.pop(key)


def _add_student_prefix(state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """Load pre-hook, the inverse of :func:`_strip_student_prefix`."""
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if not rest.startswith((_STUDENT, _TRAINING_ONLY)):
            state_dict[prefix + _STUDENT + rest] = state_dict.pop(key)
