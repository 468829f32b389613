"""Partial-view data: FastReID's transforms and loaders with the view crop in front.

With ``MODEL.FKD.VIEW`` set, every training and test image goes through :class:`ViewCrop` first,
then through FastReID's own transforms (resize to ``INPUT.SIZE_*``, then, in training, the
config's augmentation), so a teacher is trained and evaluated on the same view. The view keys are
checked before anything is built (:func:`factorized_kd.config.check_fkd_config`, stage 1 of every
run).
"""

import logging

import torchvision.transforms as T
from fastreid.data.transforms import build_transforms as build_fastreid_transforms

from factorized_kd.views import ViewCrop
from kdreid.engine import Trainer

__all__ = ["FKDTrainer", "build_transforms"]

logger = logging.getLogger(__name__)


def build_transforms(cfg, is_train=True):
    """FastReID's transforms for ``cfg``, preceded by the crop of ``MODEL.FKD.VIEW`` if set.

    Args:
        cfg (CfgNode): a config with the ``MODEL.FKD`` node.
        is_train (bool): training (with the config's augmentation) or test transforms.

    Returns:
        torchvision.transforms.Compose: PIL image -> ``(3, H, W)`` float tensor (0-255).
    """
    transforms = build_fastreid_transforms(cfg, is_train=is_train)
    if not cfg.MODEL.FKD.VIEW:
        return transforms
    crop = ViewCrop(cfg.MODEL.FKD.VIEW, reading=cfg.MODEL.FKD.VIEW_READING)
    stage = "Training" if is_train else "Test"
    logger.info("%s images: %s, then FastReID's transforms", stage, crop)
    return T.Compose([crop, *transforms.transforms])


class FKDTrainer(Trainer):
    """kdreid's trainer whose training and test images are those of ``MODEL.FKD.VIEW``."""

    @classmethod
    def build_transforms(cls, cfg, is_train):
        """FastReID's transforms behind a crop to ``MODEL.FKD.VIEW`` (:func:`build_transforms`)."""
        return build_transforms(cfg, is_train=is_train)
