"""Frozen teachers: trained ReID models that a student learns from.

A :class:`FrozenTeacher` wraps a model built from its own config file (through kdreid's
:func:`~kdreid.config.get_cfg`, so a teacher trained by any kdreid project loads) and its weights.
It is frozen (no gradients), always in eval mode (``train()`` cannot change that), moves with
``.to()`` / ``.cuda()`` / ``.half()`` like any submodule, and is **not part of the student's
checkpoint**: the wrapped network is held outside the module tree, so the teacher contributes no
parameters, buffers or state-dict keys to the model that owns it, and no parameters to its
optimizer. ``_apply`` (what ``.to()`` and friends call) is forwarded to it explicitly.
"""

import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from fastreid.modeling import build_model
from torch import nn

from kdreid.checkpoint import fit_state_dict, read_state_dict
from kdreid.config import get_cfg, merge_from_file, merge_from_list
from kdreid.errors import ConfigError, WeightsError

__all__ = ["TeacherOutput", "FrozenTeacher", "build_teachers", "embedding_dim"]

logger = logging.getLogger(__name__)


class TeacherOutput(NamedTuple):
    """What a teacher computes for a batch of N images.

    Attributes:
        features: (N, D) its retrieval feature (what it returns in evaluation).
        logits: (N, C) its identity logits, as FastReID's ``pred_class_logits`` (before any
            margin, times the classifier's scale); ``None`` if it has no classifier.
        feature_map: (N, C', h, w) the backbone's output.
    """

    features: torch.Tensor
    logits: torch.Tensor | None
    feature_map: torch.Tensor


def embedding_dim(cfg):
    """Dimension of the feature a FastReID ``EmbeddingHead`` built from ``cfg`` returns."""
    return cfg.MODEL.HEADS.EMBEDDING_DIM or cfg.MODEL.BACKBONE.FEAT_DIM


class FrozenTeacher(nn.Module):
    """A trained model used as a teacher: frozen, in eval mode, outside the owner's checkpoint.

    The teacher takes the images as the data loader gives them (N×3×H×W, 0–255) and applies its own
    normalisation (its ``pixel_mean`` / ``pixel_std``) and, if ``input_size`` is given and differs,
    resizes them first.

    Args:
        model: a FastReID-style model (``backbone``, ``heads`` and ``pixel_mean``/``pixel_std``).
        input_size: (H, W) the teacher was trained at; ``None`` keeps the student's size.
        feature_dim: dimension of its retrieval feature (``TeacherOutput.features``).
        name: a label for logs and messages (e.g. its config file).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: tuple[int, int] | None = None,
        feature_dim: int = 0,
        name: str = "teacher",
    ):
        super().__init__()
        # Held outside the module tree on purpose (see the module docstring).
        object.__setattr__(self, "_model", model)
        model.eval()
        model.requires_grad_(False)
        self.input_size = tuple(input_size) if input_size else None
        self.feature_dim = feature_dim
        self.name = name
        self.cfg = None  # the teacher's config when built by from_config

    @property
    def model(self) -> nn.Module:
        """The wrapped network."""
        return self._model

    @property
    def num_classes(self) -> int:
        """Number of identities its classifier was trained on (0 without a classifier)."""
        weight = getattr(getattr(self._model, "heads", None), "weight", None)
        return int(weight.shape[0]) if weight is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    def train(self, mode: bool = True):
        """Keeps the teacher in eval mode whatever ``mode`` is: it is never trained."""
        super().train(False)
        self._model.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        self._model._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self):
        return (
            f"name={self.name!r}, model={type(self._model).__name__}, "
            f"input_size={self.input_size}, num_classes={self.num_classes}, frozen"
        )

    def _normalise(self, images):
        x = images.to(self.device, torch.float32)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return (x - self._model.pixel_mean) / self._model.pixel_std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> TeacherOutput:
        """Run the teacher on a batch.

        Args:
            images: (N, 3, H, W) images as the data loader gives them (0–255), any device.

        Returns:
            TeacherOutput on the teacher's device, without gradients.
        """
        return self._embedding_head_outputs(self._normalise(images))

    def _embedding_head_outputs(self, x):
        feature_map = self._model.backbone(x)
        heads = self._model.heads
        features = heads(feature_map)  # eval mode: the BNNeck feature
        logits = None
        weight = getattr(heads, "weight", None)
        if weight is not None and weight.numel() > 0:
            # As FastReID's EmbeddingHead computes its pred_class_logits in training.
            if type(heads.cls_layer).__name__ == "Linear":
                logits = F.linear(features, weight)
            else:
                logits = F.linear(F.normalize(features), F.normalize(weight))
            logits = logits * heads.cls_layer.s
        return TeacherOutput(features=features, logits=logits, feature_map=feature_map)

    @classmethod
    def from_config(
        cls, config_file: str, weights: str, opts: Sequence[str] = (), device: str = "cpu"
    ) -> "FrozenTeacher":
        """Build a teacher from its config file and load its weights strictly.

        The number of identities of its classifier comes from the checkpoint when the config
        leaves ``MODEL.HEADS.NUM_CLASSES`` at 0 (as training configs do).

        Args:
            config_file: the teacher's config (any kdreid project's, or FastReID's).
            weights: its checkpoint (a FastReID ``model_*.pth`` or a bare state dict).
            opts: extra ``KEY VALUE`` options for its config.
            device: where to put it.

        Raises:
            ConfigError: the config file is missing or names unknown keys.
            WeightsError: no weights named, or weights that do not fit (keys listed).
        """
        if not weights:
            raise WeightsError(
                f"Teacher config '{config_file}' has no weights: a teacher must be trained; name "
                "its checkpoint in KD.MODEL_WEIGHTS (one per KD.MODEL_CONFIG entry)."
            )
        cfg = get_cfg()
        merge_from_file(cfg, config_file)
        merge_from_list(cfg, list(opts))
        state = read_state_dict(weights, option=f"teacher checkpoint (config '{config_file}')")
        classifier = state.get("heads.weight")
        if cfg.MODEL.HEADS.NUM_CLASSES == 0 and classifier is not None:
            cfg.MODEL.HEADS.NUM_CLASSES = int(classifier.shape[0])
        cfg.MODEL.BACKBONE.PRETRAIN = False
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        fit_state_dict(model, state, f"'{weights}' (teacher '{config_file}')")
        if cfg.KDREID.CHANNELS_LAST:
            model.to(memory_format=torch.channels_last)
        teacher = cls(
            model,
            input_size=tuple(cfg.INPUT.SIZE_TEST),
            feature_dim=embedding_dim(cfg),
            name=config_file,
        )
        cfg.freeze()
        teacher.cfg = cfg  # its full config, for projects that need more of it (a view, say)
        logger.info(
            "Teacher %s: %s from %s, %d identities, input %s",
            config_file,
            cfg.MODEL.META_ARCHITECTURE,
            weights,
            teacher.num_classes,
            "x".join(map(str, teacher.input_size)),
        )
        return teacher.to(device)


def build_teachers(config_files, weights, device="cpu"):
    """Build one :class:`FrozenTeacher` per config file (FastReID's ``KD.MODEL_CONFIG`` /
    ``KD.MODEL_WEIGHTS`` lists).

    Raises:
        ConfigError: more checkpoints than configs.
        WeightsError: a teacher without a checkpoint, or one that does not fit.
    """
    config_files, weights = list(config_files), list(weights)
    if len(weights) > len(config_files):
        raise ConfigError(
            f"KD.MODEL_WEIGHTS names {len(weights)} checkpoint(s) but KD.MODEL_CONFIG only "
            f"{len(config_files)} teacher config(s); give one config per checkpoint."
        )
    weights += [""] * (len(config_files) - len(weights))  # a teacher without weights: an error
    for config_file in config_files:
        if not os.path.isfile(config_file):
            raise ConfigError(
                f"KD.MODEL_CONFIG names '{config_file}', which is not a file (relative paths are "
                f"read from the current folder, '{os.getcwd()}')."
            )
    return [FrozenTeacher.from_config(c, w, device=device) for c, w in zip(config_files, weights)]
