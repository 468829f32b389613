"""Stage 2, once the model and the training set exist: what only they can tell (the model's
modules, the training set's size, the teachers' label spaces)."""

from kdreid.distill import KDReIDDistiller
from kdreid.errors import ConfigError
from kdreid.meta_arch import unwrap

__all__ = ["check_batch_fits", "check_freeze_layers", "check_teachers"]


def check_freeze_layers(cfg, model):
    """FastReID freezes the top-level children named in ``MODEL.FREEZE_LAYERS`` and silently does
    nothing for a name that is not one (the official MDPR code names ``backbone``, which its model
    does not have at the top level).

    Raises:
        ConfigError: ``SOLVER.FREEZE_ITERS`` > 0 and a name is not a top-level child of ``model``.
    """
    if cfg.SOLVER.FREEZE_ITERS <= 0 or not cfg.MODEL.FREEZE_LAYERS:
        return
    model = unwrap(model)
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in cfg.MODEL.FREEZE_LAYERS if name not in children]
    if unknown:
        raise ConfigError(
            f"MODEL.FREEZE_LAYERS names {unknown}, which {type(model).__name__} does not have; "
            f"its top-level modules are {children} (or set SOLVER.FREEZE_ITERS 0)."
        )


def check_batch_fits(cfg, dataset):
    """A training batch must be drawable from ``dataset``.

    Raises:
        ConfigError: ``SOLVER.IMS_PER_BATCH`` exceeds the training images, or an identity sampler
            needs more identities per batch (``IMS_PER_BATCH / DATALOADER.NUM_INSTANCE``) than the
            training set has (FastReID's identity samplers would then loop forever, yielding
            nothing).
    """
    batch = cfg.SOLVER.IMS_PER_BATCH
    images = len(dataset)
    if batch > images:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} is more than the {images} training images of "
            f"{', '.join(cfg.DATASETS.NAMES)}: use a smaller batch."
        )
    if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and hasattr(dataset, "pids"):
        per_batch = batch // cfg.DATALOADER.NUM_INSTANCE
        identities = len(set(dataset.pids))
        if per_batch > identities:
            raise ConfigError(
                f"{cfg.DATALOADER.SAMPLER_TRAIN} draws SOLVER.IMS_PER_BATCH / "
                f"DATALOADER.NUM_INSTANCE = {batch} / {cfg.DATALOADER.NUM_INSTANCE} = {per_batch} "
                f"identities per batch, but the training set has {identities}: use a smaller "
                "batch or more instances per identity."
            )


def check_teachers(cfg, model, training=True):
    """A distiller being trained has teachers; logit distillation (which compares the student's
    and each teacher's identity logits) needs teachers trained on the student's identities.

    Raises:
        ConfigError: no teacher, or one with another number of identities than the student's
            classifier.
    """
    model = unwrap(model)
    if not isinstance(model, KDReIDDistiller):
        return
    if training and len(model.teachers) == 0:
        raise ConfigError(
            f"{type(model).__name__} has no teacher to learn from: name teacher configs in "
            "KD.MODEL_CONFIG and their checkpoints in KD.MODEL_WEIGHTS."
        )
    if not model.uses_logits:
        return
    for teacher in model.teachers:
        if teacher.num_classes != cfg.MODEL.HEADS.NUM_CLASSES:
            raise ConfigError(
                f"Teacher '{teacher.name}' was trained on {teacher.num_classes} identities but "
                f"the student's training set has {cfg.MODEL.HEADS.NUM_CLASSES}: logit "
                "distillation needs the same label space. Train the teacher on the student's "
                "dataset, or distil features only: KDREID.DISTILL.LOGIT_LOSS none "
                "KDREID.DISTILL.FEATURE_LOSS l2 KDREID.DISTILL.FEATURE_WEIGHT 1."
            )
