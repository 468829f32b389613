"""The installed projects, as the core sees them: their config keys, their checks, their loggers.

A project plugs into the core in one place: a :class:`Project` declared as an entry point of the
``kdreid.projects`` group in ``setup.py``::

    "kdreid.projects": ["mdpr = mdpr.config:PROJECT"]

Loading the entry point imports the project's package, which registers its models in FastReID's
registries. The core never names a project: :func:`kdreid.config.get_cfg` adds every project's
keys, the validation layer (:mod:`kdreid.engine.validation`) runs every project's checks, and
every project's logger writes to the run's log.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

__all__ = ["ENTRY_POINT_GROUP", "Project", "installed", "logger_names"]

ENTRY_POINT_GROUP = "kdreid.projects"


@dataclass(frozen=True)
class Project:
    """What one project adds to the core.

    Attributes:
        add_config: ``add_config(cfg)`` adds the project's keys (under ``MODEL.<METHOD>``) to a
            config, in place.
        check_config: ``check_config(cfg, training)``, the project's checks of a merged config
            before anything is built (stage 1 of :mod:`kdreid.engine.validation`); raises
            :class:`~kdreid.errors.ConfigError` naming the key. ``training`` is False for
            ``--eval-only`` and inference tools.
        check_built: ``check_built(cfg, model, train_set)``, the project's checks once the model
            (and, when training, the training set: a FastReID ``CommDataset``, else None) exist
            (stage 2).
        pretrained_state: ``pretrained_state(cfg, content, backbone)``, for a backbone whose
            ImageNet weights are published in other key layouts than its own: ``content`` (the
            top-level dict of ``MODEL.BACKBONE.PRETRAIN_PATH``) under the names of ``backbone``
            (built without weights), as the backbone's builder will load it; raises
            :class:`~kdreid.errors.WeightsError` naming what does not fit (or when the builder
            cannot read that layout). None for a backbone the project does not know.
    """

    add_config: Callable
    check_config: Callable | None = None
    check_built: Callable | None = None
    pretrained_state: Callable | None = None


@dataclass(frozen=True)
class _Installed:
    name: str  # the entry point's name
    package: str  # the top-level package that declares it (its logger's name)
    project: Project


@functools.cache
def _load() -> tuple[_Installed, ...]:
    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        project = ep.load()
        if not isinstance(project, Project):
            raise TypeError(
                f"The {ENTRY_POINT_GROUP} entry point '{ep.name}' ({ep.value}) is a "
                f"{type(project).__name__}, not a kdreid.projects.Project."
            )
        found.append(_Installed(ep.name, ep.module.split(".")[0], project))
    return tuple(found)


def installed() -> list[Project]:
    """Every installed project, in the order of their entry point names."""
    return [item.project for item in _load()]


def logger_names() -> tuple[str, ...]:
    """The loggers a run writes to its console and ``log.txt``: ``kdreid`` and each installed
    project's top-level package."""
    return ("kdreid", *dict.fromkeys(item.package for item in _load()))
