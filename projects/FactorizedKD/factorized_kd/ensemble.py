"""The teacher ensemble evaluated as one model: the partial teachers' features, concatenated.

The "ensemble of partial ReID models" the holistic student is compared with (its upper bound).
For a batch of holistic images (``INPUT.SIZE_TEST`` of the ensemble's config, e.g. 256x128),
member k (a teacher whose config sets ``MODEL.FKD.VIEW``) sees ``crop_view`` of its view resized
to its own ``INPUT.SIZE_TEST`` (224x224), computed on the device from the very batch, and returns
its retrieval feature t_k (D_k). The ensemble's descriptor is

    e = [t_1 / |t_1|, ..., t_K / |t_K|]        (sum_k D_k)

an unweighted concatenation of unit-norm blocks, so for two images ``e . e' = sum_k cos_k``,
``|e| = sqrt(K)``: the cosine of two descriptors is the mean of the members' cosines and their
squared Euclidean distance is ``2K - 2 sum_k cos_k``. Both metrics rank the gallery alike, and
every member weighs the same whatever its feature dimension.

A member whose view is ``""`` or ``Holistic`` (e.g. a plain FastReID model) sees the whole image:
that is how the ensemble includes a holistic model. Members are :class:`FrozenTeacher` s, held
outside the module tree, so the ensemble has no weights of its own (an empty state dict); its
weights are those of its members. Members are named as every kdreid model's teachers are
(``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS``); they are part of the model in evaluation
(``teachers_at_inference``), so ``--eval-only`` builds them.

Reference:
    Ren & Li, "Factorized Distillation: Training Holistic Person Re-identification Model by
    Distilling an Ensemble of Partial ReID Models", arXiv 1811.08073 (2018).
"""

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from fastreid.config import configurable
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from factorized_kd.data import FKDTrainer
from factorized_kd.views import HOLISTIC, crop_view
from kdreid.distill.teacher import FrozenTeacher
from kdreid.engine import evaluate_only
from kdreid.errors import ConfigError, WeightsError
from kdreid.meta_arch import MetaArchitecture

__all__ = ["DeployedEnsemble", "FKDEnsemble", "evaluate_ensemble", "member_view"]

logger = logging.getLogger(__name__)


def member_view(teacher_cfg):
    """The view and reading of an ensemble member, from its own config (checked before, by
    :func:`factorized_kd.config.check_fkd_config`).

    Args:
        teacher_cfg (CfgNode): the member's full config (``FrozenTeacher.cfg``).

    Returns:
        tuple[str, str]: ``(view, reading)``, the view being ``"Holistic"`` for ``""``.
    """
    return teacher_cfg.MODEL.FKD.VIEW or HOLISTIC, teacher_cfg.MODEL.FKD.VIEW_READING


@META_ARCH_REGISTRY.register()
class FKDEnsemble(MetaArchitecture):
    """Frozen teachers, each on its view, evaluated as one model (evaluation only).

    Args:
        teachers: the members, each with its ``input_size`` (what its view is resized to).
        views: each member's view (a name of :data:`factorized_kd.views.VIEW_NAMES`).
        readings: each member's view reading (:data:`factorized_kd.views.READINGS`).

    The config keys are checked by :func:`factorized_kd.config.check_fkd_config`.

    Raises:
        ValueError: no member, or ``teachers``/``views``/``readings`` of different lengths.
    """

    # Evaluation only, built complete from its config (its weights are its members'), and its
    # members are KD.MODEL_CONFIG's models: see evaluate_ensemble.
    trainable = False
    needs_weights = False
    teachers_at_inference = True

    @configurable
    def __init__(
        self,
        *,
        teachers: Sequence[FrozenTeacher],
        views: Sequence[str],
        readings: Sequence[str],
        weights: Sequence[str] = (),
    ):
        super().__init__()
        if not teachers or not len(teachers) == len(views) == len(readings):
            raise ValueError(
                f"FKDEnsemble needs one view and reading per member, at least one member; got "
                f"{len(teachers)} teachers, {len(views)} views, {len(readings)} readings"
            )
        self.teachers = nn.ModuleList(teachers)
        self.views = list(views)
        self.readings = list(readings)
        self.weights = list(weights)  # the members' checkpoints, for the speed/accuracy record
        self.eval()

    @classmethod
    def from_config(cls, cfg):
        """Members from ``KD.MODEL_CONFIG`` (config files) and ``KD.MODEL_WEIGHTS``.

        Raises:
            ValueError: lists of different lengths.
            WeightsError: a member without weights, or weights that do not fit it.
        """
        configs, weights = list(cfg.KD.MODEL_CONFIG), list(cfg.KD.MODEL_WEIGHTS)
        teachers, views, readings = [], [], []
        for i, (config_file, path) in enumerate(zip(configs, weights, strict=True)):
            if not path:
                raise WeightsError(
                    f"KD.MODEL_WEIGHTS[{i}] is empty: name the checkpoint of '{config_file}'."
                )
            teacher = FrozenTeacher.from_config(config_file, path)
            view, reading = member_view(teacher.cfg)
            teachers.append(teacher)
            views.append(view)
            readings.append(reading)
        repeated = sorted({v for v in views if views.count(v) > 1})
        if repeated:
            logger.warning(
                "Several ensemble members see the view(s) %s. If each was meant for another view, "
                "name the config.yaml of each teacher's run (it records the view given on its "
                "command line), not the shared teacher.yml.",
                ", ".join(repeated),
            )
        return {"teachers": teachers, "views": views, "readings": readings, "weights": weights}

    @property
    def device(self) -> torch.device:
        return self.teachers[0].device

    @property
    def feature_dims(self) -> list[int]:
        """D_k of each member; the descriptor has ``sum(feature_dims)`` dimensions."""
        return [t.feature_dim for t in self.teachers]

    def train(self, mode: bool = True):
        """Eval mode only: ``train(True)`` raises.

        Raises:
            ConfigError: ``mode`` is true.
        """
        if mode:
            raise ConfigError(
                "FKDEnsemble is an evaluation model (frozen teachers): it cannot be trained. "
                "Train the teachers with benchmarks/fkd_teachers.py, evaluate the ensemble with "
                "projects/FactorizedKD/evaluate_ensemble.py."
            )
        return super().train(False)

    def forward(self, batched_inputs):
        """The ensemble descriptor of a batch.

        Args:
            batched_inputs (dict | Tensor): FastReID's batch (``"images"``: ``(B, 3, H, W)``,
                0-255, at the ensemble's ``INPUT.SIZE_TEST``) or the image tensor itself.

        Returns:
            Tensor: ``(B, sum_k D_k)``, member k's unit-norm feature in its own block.
        """
        images = batched_inputs["images"] if isinstance(batched_inputs, dict) else batched_inputs
        return self.features(images)

    @torch.no_grad()
    def features(self, images):
        """See :meth:`forward`; ``images`` is ``(B, 3, H, W)``, 0-255, any device."""
        images = images.to(self.device, torch.float32)
        blocks = []
        for teacher, view, reading in zip(self.teachers, self.views, self.readings):
            crop = crop_view(images, view, teacher.input_size, reading=reading)
            blocks.append(F.normalize(teacher(crop).features.float(), dim=1))
        return torch.cat(blocks, dim=1)

    def record_extras(self) -> dict:
        """What ``--eval-only`` adds to the speed/accuracy record: the members."""
        weights = self.weights or [None] * len(self.teachers)
        return {
            "teachers": [
                {"config": t.name, "weights": w, "view": v, "feature_dim": t.feature_dim}
                for t, w, v in zip(self.teachers, weights, self.views)
            ]
        }

    def deployed_model(self) -> "DeployedEnsemble":
        """What is benchmarked: the ensemble with its members' networks in the module tree."""
        return DeployedEnsemble(self)


class DeployedEnsemble(nn.Module):
    """An :class:`FKDEnsemble` whose members' networks are submodules, so that its parameters
    (and what ``.to()`` moves) are all the members'; same forward, same descriptor.

    Args:
        ensemble: the ensemble (shares its networks, copies nothing).
    """

    def __init__(self, ensemble: FKDEnsemble):
        super().__init__()
        self.networks = nn.ModuleList(t.model for t in ensemble.teachers)
        object.__setattr__(self, "_ensemble", ensemble)  # not a second path to the same modules

    def forward(self, batched_inputs):
        """See :meth:`FKDEnsemble.forward`."""
        return self._ensemble(batched_inputs)


def evaluate_ensemble(cfg, trainer_cls=FKDTrainer, config_file=""):
    """Accuracy of the ensemble ``cfg`` describes and, with ``KDREID.SPEED``, its speed.

    The same as ``train_net.py --eval-only`` (:func:`kdreid.engine.evaluate_only`)
    without ``MODEL.WEIGHTS``: the ensemble's weights are its members'. The record
    (``OUTPUT_DIR/speed_accuracy.json``) counts all members' parameters and multiply-adds and lists
    the members under ``"teachers"``.

    Args:
        cfg (CfgNode): a config with ``MODEL.META_ARCHITECTURE`` FKDEnsemble, its device resolved
            and checked (:func:`kdreid.engine.validation.check_config`: no ``MODEL.WEIGHTS``, the
            members named).
        trainer_cls: the trainer whose ``test`` evaluates (its test transforms and evaluator).
        config_file (str): the config's file, for the record.

    Returns:
        dict: the evaluation results.

    Raises:
        ConfigError: another meta-architecture.
    """
    if cfg.MODEL.META_ARCHITECTURE != "FKDEnsemble":
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE is '{cfg.MODEL.META_ARCHITECTURE}': evaluate_ensemble "
            "evaluates FKDEnsemble configs (configs/FactorizedKD/<dataset>/ensemble.yml)."
        )
    return evaluate_only(cfg.clone(), trainer_cls, config_file=config_file)
