"""The one validation layer: every check of a config, of the built model and of the data.

Two stages, each run once by the engine, each the core's checks then every installed project's
(:class:`kdreid.projects.Project`), so the core never names a project:

1. :func:`check_config`, **before anything is built**: the merged config alone (values that cannot
   work, unknown registered names, a training run of an evaluation-only model). Run by
   :func:`kdreid.engine.setup` and by the inference builder of the scripts
   (:func:`kdreid.cli.build_inference_model`).
2. :func:`check_built`, **once the model and the training set exist**: what only they can tell (the
   model's modules, the training set's size, the teachers' label spaces). Run by
   :class:`kdreid.engine.Trainer` before training starts.

Where the model is built, :func:`check_pretrained` checks ``MODEL.BACKBONE.PRETRAIN_PATH`` against
the backbone (:mod:`.pretrained`). As FastReID reads a dataset, :mod:`.datasets` names a missing
folder, an unreadable image or a misnamed file. Every error is a
:class:`~kdreid.errors.UserInputError` naming the key or file and what was expected.
"""

from kdreid import projects
from kdreid.engine.validation.built import check_batch_fits, check_freeze_layers, check_teachers
from kdreid.engine.validation.config import (
    IDENTITY_SAMPLERS,
    TEST_METRICS,
    TRAINING_SAMPLERS,
    check_core_config,
    check_distiller,
    check_opts,
    check_processes,
)
from kdreid.engine.validation.pretrained import (
    check_pretrained,
    load_error,
    pretrained_url,
    resolve_pretrained,
)
from kdreid.engine.validation.values import check_registered, registered_names

__all__ = [
    "IDENTITY_SAMPLERS",
    "TEST_METRICS",
    "TRAINING_SAMPLERS",
    "check_batch_fits",
    "check_built",
    "check_config",
    "check_opts",
    "check_processes",
    "check_pretrained",
    "check_registered",
    "load_error",
    "pretrained_url",
    "registered_names",
    "resolve_pretrained",
]


def check_config(cfg, training=True, world_size=None):
    """Stage 1: refuse a config that cannot work, before any model or data loader is built.

    Args:
        cfg: the merged config.
        training (bool): the run trains (False: ``--eval-only`` or an inference tool, which ignore
            the training keys).
        world_size (int): the processes the run will have (default: the process group's; the
            launcher checks before it starts them).

    Raises:
        ConfigError: naming the key, its value and what would work.
    """
    check_core_config(cfg, training, world_size)
    check_distiller(cfg, training)
    for project in projects.installed():
        if project.check_config is not None:
            project.check_config(cfg, training)


def check_built(cfg, model, train_set=None):
    """Stage 2: refuse a model and training set that cannot be trained together.

    Each project's checks run first: a project's message, which knows its keys, is more useful
    than the core's general one for the same problem.

    Args:
        cfg: the config the model was built from (``MODEL.HEADS.NUM_CLASSES`` set from the data).
        model: the built model (possibly in a DDP wrapper).
        train_set: the training set (a FastReID dataset), or None when the model is not trained
            (a distiller then needs no teacher).

    Raises:
        ConfigError: naming the key and what would work.
    """
    for project in projects.installed():
        if project.check_built is not None:
            project.check_built(cfg, model, train_set)
    check_freeze_layers(cfg, model)
    check_teachers(cfg, model, training=train_set is not None)
    if train_set is not None:
        check_batch_fits(cfg, train_set)
