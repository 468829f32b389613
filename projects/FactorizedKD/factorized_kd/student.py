"""The FD-style holistic student: an ordinary FastReID model taught by frozen partial teachers.

``MODEL.META_ARCHITECTURE: FKDStudent`` wraps the student named by ``KDREID.DISTILL.STUDENT``
(``Baseline``) as kdreid's :class:`~kdreid.distill.KDReIDDistiller` does, and adds the two
factorization terms of our design (``/work/shared/methods/FactorizedKD.md``, items 4-8), "FD-style"
because the paper's available text names them but does not define them:

- retrieval-feature factorization (``loss_fkd_feature``, weight ``MODEL.FKD.FEAT_WEIGHT``): the
  student's training feature ``f`` (N, D) gives one factor per teacher, ``W_k f`` with a
  training-only ``Linear(D, D_k)`` (``FACTOR_MODE linear``), or the k-th consecutive group of
  ``D_k`` channels of ``f`` (``split``: no parameters; the teachers' dims must add up to ``D``, so
  K teachers of equal dim split ``f`` evenly and need ``D`` divisible by K); each factor mimics
  teacher k's retrieval feature (:func:`~factorized_kd.losses.feature_factorization_loss`);
- feature-map factorization (``loss_fkd_map``, weight ``MODEL.FKD.MAP_WEIGHT``): the student's
  last feature map S (N, C, h, w), read by a forward hook on the head's input, gives for teacher k
  its view's rows ``S[:, :, rows_k]`` (``view_rows(view_k, h)``), a training-only 1x1 convolution
  ``A_k`` (C -> C_k, no bias), a bilinear resample to teacher k's map size, and
  :func:`~factorized_kd.losses.map_factorization_loss` against teacher k's last map.

Both are summed over the teachers and multiplied by their weight and by ``kd_scale`` (kdreid's
distillation warm-up). A weight of 0 builds no module and does no work for its term.

Teachers (``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS``, as for every kdreid distiller) are
:class:`~kdreid.distill.FrozenTeacher` s: frozen, in eval mode, outside the checkpoint. Teacher
k's view and input size are its own config's ``MODEL.FKD.VIEW`` and ``INPUT.SIZE_TEST``; it is fed
``crop_view`` of the very batch the student sees (after the loader's augmentation), computed on
the device without gradients. Their label space does not matter: nothing here uses their logits.

Checkpoints and inference are the plain student's: the state dict has the student's own keys plus
the factor heads and adapters under ``distill.``, which a plain model skips on load; in evaluation
and in :meth:`deployed_model` the model is the student alone, so ``--eval-only`` with the plain
student's config loads an FD checkpoint and measures the plain student's speed. So does
``--eval-only`` with the FD student's own config: its teachers are training-only
(``teachers_at_inference`` False), so it is built without them, and without factor heads or
adapters, whose keys the load skips.

The config is checked before anything is built (:func:`factorized_kd.config.check_fkd_config`,
the teachers' own configs included); the loader names a teacher without a checkpoint or with one
that does not fit.
"""

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from factorized_kd.losses import feature_factorization_loss, map_factorization_loss
from factorized_kd.views import HOLISTIC, crop_view, view_fractions, view_rows
from kdreid.distill import FrozenTeacher, KDReIDDistiller, TeacherOutput
from kdreid.distill.teacher import embedding_dim
from kdreid.errors import ConfigError, WeightsError

__all__ = ["FACTOR_MODES", "FKDStudent", "build_fkd_teachers"]

logger = logging.getLogger(__name__)

FACTOR_MODES = ("linear", "split")
"""How the student's feature is factorized per teacher (``MODEL.FKD.FACTOR_MODE``)."""


def build_fkd_teachers(config_files, weights):
    """Build the teachers of ``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS`` and read their views.

    The configs were checked before (:func:`factorized_kd.config.check_fkd_config`: a view each,
    the student's reading); here the checkpoints are read.

    Args:
        config_files (Sequence[str]): one config per teacher. Name the ``config.yaml`` a teacher's
            run wrote to its ``OUTPUT_DIR``: it records the view given on its command line.
        weights (Sequence[str]): one checkpoint per config, same order.

    Returns:
        tuple[list[FrozenTeacher], list[str]]: the teachers and their views (none for no config:
        a student built for evaluation).

    Raises:
        ValueError: ``config_files`` and ``weights`` of different lengths.
        WeightsError: a teacher without a checkpoint, or one that does not fit its config.
    """
    teachers, views = [], []
    for config_file, path in zip(config_files, weights, strict=True):
        if not path:
            raise WeightsError(
                f"Teacher '{config_file}' has no checkpoint: KD.MODEL_WEIGHTS must name one per "
                "KD.MODEL_CONFIG entry."
            )
        teacher = FrozenTeacher.from_config(config_file, path)
        views.append(teacher.cfg.MODEL.FKD.VIEW)
        teachers.append(teacher)
    repeated = sorted({v for v in views if views.count(v) > 1})
    if repeated:
        logger.warning(
            "Several teachers share the view(s) %s: if each teacher config was meant for another "
            "view, name the config.yaml of each teacher's run, which records its view.",
            ", ".join(repeated),
        )
    return teachers, views


@META_ARCH_REGISTRY.register()
class FKDStudent(KDReIDDistiller):
    """A holistic FastReID student with FD-style retrieval-feature and feature-map factorization.

    ``L = L_student + kd_scale * (FEAT_WEIGHT * L_feat + MAP_WEIGHT * L_map)``, with
    ``L_student`` the student's own losses (FastReID's CE + triplet) and, over teachers k,
    ``L_feat = sum_k mean_i (1 - cos(factor_k(f_i), t_k(crop_k(x_i))))`` and
    ``L_map = sum_k mean ||n(R_k(A_k(S[rows_k]))) - n(T_k(crop_k(x)))||^2`` (``R_k``: bilinear
    resample to teacher k's map, ``n``: L2 over channels).

    Args:
        student: a FastReID meta-architecture; its head (``head``) takes the last feature map
            (N, C, h, w) and returns FastReID's training outputs with ``features`` (N, D).
        teachers: K frozen teachers, each with its ``input_size`` (h_k, w_k); none builds the
            student alone, for evaluation (it cannot be trained).
        views: K view names (:data:`~factorized_kd.views.VIEW_NAMES`), teacher k's view.
        teacher_map_channels: K channel counts C_k of the teachers' last feature maps.
        student_dim: D, the dimension of the student's ``features``.
        student_map_channels: C, the channels of the student's last feature map.
        num_classes: identities of the student's classifier (the teachers' may differ).
        head: name of the student's submodule whose input and output are read.
        reading: how views become rows (``MODEL.FKD.VIEW_READING``).
        factor_mode: ``"linear"`` or ``"split"`` (module docstring).
        feat_weight: weight of ``L_feat`` (0: off).
        map_weight: weight of ``L_map`` (0: off).

    The config keys are checked by :func:`factorized_kd.config.check_fkd_config`.

    Raises:
        ValueError: mismatched lengths, a teacher without an input size, a negative weight, an
            unknown factor mode, or ``split`` with teachers' dims not adding up to D.

    Reference:
        Ren & Li, "Factorized Distillation: Training Holistic Person Re-identification Model by
        Distilling an Ensemble of Partial ReID Models", arXiv 1811.08073 (2018).
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teachers: Sequence[FrozenTeacher],
        views: Sequence[str],
        teacher_map_channels: Sequence[int],
        student_dim: int,
        student_map_channels: int,
        num_classes: int,
        head: str = "heads",
        reading: str = "stripes",
        factor_mode: str = "linear",
        feat_weight: float = 1.0,
        map_weight: float = 1.0,
    ):
        _check_arguments(
            teachers, views, teacher_map_channels, factor_mode, feat_weight, map_weight
        )
        super().__init__(
            student=student,
            teachers=teachers,
            student_dim=student_dim,
            num_classes=num_classes,
            head=head,
            logit_loss="none",
            feature_loss="none",
            relation_weight=0.0,
        )
        for view in views:
            view_fractions(view, reading)
        self.views = tuple(views)
        self.reading = reading
        self.factor_mode = factor_mode
        self.feat_weight = feat_weight
        self.map_weight = map_weight
        dims = [t.feature_dim for t in self.teachers]
        self.split_sizes = dims
        if feat_weight > 0 and factor_mode == "linear":
            self.distill["feature_factors"] = nn.ModuleList(
                nn.Linear(student_dim, d, bias=False) for d in dims
            )
        if feat_weight > 0 and factor_mode == "split" and dims and sum(dims) != student_dim:
            raise ValueError(
                f"factor_mode 'split' cuts the {student_dim}-d student feature into the teachers' "
                f"dims {dims}, which add up to {sum(dims)}, not to student_dim {student_dim}"
            )
        if map_weight > 0:
            self.distill["map_adapters"] = nn.ModuleList(
                nn.Conv2d(student_map_channels, c, kernel_size=1, bias=False)
                for c in teacher_map_channels
            )
            getattr(self.student, head).register_forward_hook(self._keep_head_input)
        self._feature_map = None
        self._rows = {}  # map height -> [(start, stop)] per teacher, checked once per height
        logger.info("FD-style student: %s", self.extra_repr())

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FKD
        teachers, views = build_fkd_teachers(cfg.KD.MODEL_CONFIG, cfg.KD.MODEL_WEIGHTS)
        return {
            "student": META_ARCH_REGISTRY.get(cfg.KDREID.DISTILL.STUDENT)(cfg),
            "teachers": teachers,
            "views": views,
            "teacher_map_channels": [t.cfg.MODEL.BACKBONE.FEAT_DIM for t in teachers],
            "student_dim": embedding_dim(cfg),
            "student_map_channels": cfg.MODEL.BACKBONE.FEAT_DIM,
            "num_classes": cfg.MODEL.HEADS.NUM_CLASSES,
            "head": cfg.KDREID.DISTILL.HEAD,
            "reading": f.VIEW_READING,
            "factor_mode": f.FACTOR_MODE,
            "feat_weight": f.FEAT_WEIGHT,
            "map_weight": f.MAP_WEIGHT,
        }

    def extra_repr(self):
        teachers = ", ".join(
            f"{v} ({'x'.join(map(str, t.input_size))})" for v, t in zip(self.views, self.teachers)
        )
        return (
            f"teachers=[{teachers}], factor_mode={self.factor_mode}, "
            f"feat_weight={self.feat_weight}, map_weight={self.map_weight}"
        )

    @property
    def uses_teachers(self) -> bool:
        """Whether any factorization term is on (else the teachers are not run)."""
        return self.feat_weight > 0 or self.map_weight > 0

    def _keep_head_input(self, module, inputs, output):
        if self.training:  # in evaluation nothing reads it: keep no reference to the batch
            self._feature_map = inputs[0]

    def forward(self, batched_inputs):
        """The student's output in evaluation; in training its losses plus ``loss_fkd_*``."""
        if not self.training:
            return self.student(batched_inputs)
        if len(self.teachers) == 0:
            raise ConfigError(
                "FKDStudent has no teacher to learn from: name the teachers' configs in "
                "KD.MODEL_CONFIG and their checkpoints in KD.MODEL_WEIGHTS."
            )
        teacher_outputs = None
        if self.uses_teachers:
            # Teachers first: FastReID's preprocessing normalises the batch in place.
            crops = self.teacher_inputs(batched_inputs["images"])
            teacher_outputs = [t(x) for t, x in zip(self.teachers, crops)]
        losses = self.student(batched_inputs)
        outputs, self._head_output = self._head_output, None
        feature_map, self._feature_map = self._feature_map, None
        if teacher_outputs is not None:
            losses.update(
                self.factorization_losses(outputs["features"], feature_map, teacher_outputs)
            )
        return losses

    @torch.no_grad()
    def teacher_inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Teacher k's input: view k's rows of the batch, resized to its input size, on the device.

        Args:
            images: (N, 3, H, W) the student's batch as the loader gives it (0-255, augmented).

        Returns:
            K tensors, the k-th ``(N, 3, h_k, w_k)`` = ``crop_view(images, view_k, (h_k, w_k))``.
        """
        images = images.to(self.device, torch.float32)
        return [
            crop_view(images, view, teacher.input_size, self.reading)
            for view, teacher in zip(self.views, self.teachers)
        ]

    def factors(self, features: torch.Tensor) -> list[torch.Tensor]:
        """The student feature's K factors.

        Args:
            features: (N, D) the student's training feature.

        Returns:
            K tensors, the k-th ``(N, D_k)`` with D_k teacher k's feature dim.
        """
        if self.factor_mode == "linear":
            return [factor(features) for factor in self.distill["feature_factors"]]
        return list(torch.split(features, self.split_sizes, dim=1))

    def map_rows(self, height: int) -> list[tuple[int, int]]:
        """The rows ``[start, stop)`` of each teacher's view in a student map of ``height`` rows.

        Raises:
            ConfigError: a partial view takes every row of the map, so the map is too short to tell
                that view from the whole image (a warning when two different views share rows).
        """
        if height in self._rows:
            return self._rows[height]
        rows = [view_rows(view, height, self.reading) for view in self.views]
        for view, (start, stop) in zip(self.views, rows):
            if view != HOLISTIC and (start, stop) == (0, height):
                top, bottom = view_fractions(view, self.reading)
                raise ConfigError(
                    f"The student's last feature map has {height} row(s): view {view} (rows "
                    f"[{top}, {bottom}) of the image) takes all of them, "
                    "so its factor would see the whole image. Make the map taller (a larger "
                    "INPUT.SIZE_TRAIN, or MODEL.BACKBONE.LAST_STRIDE 1)."
                )
        for i, (view, r) in enumerate(zip(self.views, rows)):
            for other, s in zip(self.views[:i], rows[:i]):
                if other != view and r == s:
                    logger.warning(
                        "Views %s and %s take the same rows %s of the student's %d-row map: "
                        "their map factors see the same part.",
                        other,
                        view,
                        r,
                        height,
                    )
        self._rows[height] = rows
        return rows

    def adapted_maps(self, feature_map, sizes):
        """The student map's K adapted factors ``R_k(A_k(S[:, :, rows_k]))``.

        Args:
            feature_map: (N, C, h, w) the student's last feature map S.
            sizes: K sizes (h'_k, w'_k) of the teachers' maps.

        Returns:
            K tensors, the k-th ``(N, C_k, h'_k, w'_k)``.
        """
        out = []
        rows = self.map_rows(feature_map.shape[-2])
        for adapter, (start, stop), size in zip(self.distill["map_adapters"], rows, sizes):
            adapted = adapter(feature_map[:, :, start:stop])
            if tuple(adapted.shape[-2:]) != tuple(size):
                adapted = F.interpolate(adapted, size=size, mode="bilinear", align_corners=False)
            out.append(adapted)
        return out

    def factorization_losses(
        self,
        features: torch.Tensor,
        feature_map: torch.Tensor,
        teacher_outputs: Sequence[TeacherOutput],
    ) -> dict:
        """The FD-style terms that are on, weighted and scaled by ``kd_scale``.

        Args:
            features: (N, D) the student's training feature.
            feature_map: (N, C, h, w) the student's last feature map.
            teacher_outputs: K teacher outputs on their crops of the batch.

        Returns:
            dict[str, Tensor]: ``loss_fkd_feature`` and/or ``loss_fkd_map``.
        """
        out = {}
        if self.feat_weight > 0:
            targets = [t.features for t in teacher_outputs]
            term = feature_factorization_loss(self.factors(features), targets)
            out["loss_fkd_feature"] = term * (self.feat_weight * self.kd_scale)
        if self.map_weight > 0:
            maps = [t.feature_map for t in teacher_outputs]
            adapted = self.adapted_maps(feature_map, [m.shape[-2:] for m in maps])
            term = sum(map_factorization_loss(a, m) for a, m in zip(adapted, maps))
            out["loss_fkd_map"] = term * (self.map_weight * self.kd_scale)
        return out


def _check_arguments(teachers, views, map_channels, factor_mode, feat_weight, map_weight):
    if not len(views) == len(map_channels) == len(teachers):
        raise ValueError(
            f"FKDStudent needs one view and one map width per teacher: {len(teachers)} "
            f"teacher(s), {len(views)} view(s), {len(map_channels)} map width(s)"
        )
    missing = [t.name for t in teachers if t.input_size is None]
    if missing:
        raise ValueError(f"teacher(s) {', '.join(missing)} have no input size to crop to")
    if factor_mode not in FACTOR_MODES:
        raise ValueError(
            f"factor_mode must be one of {', '.join(FACTOR_MODES)}; got {factor_mode!r}"
        )
    for name, value in (("feat_weight", feat_weight), ("map_weight", map_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0 (0 turns its term off), got {value}")
