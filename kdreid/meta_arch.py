"""What kdreid's engine asks of a meta-architecture, declared once.

A meta-architecture is what ``MODEL.META_ARCHITECTURE`` names in FastReID's
``META_ARCH_REGISTRY``. The engine trains it, evaluates it, benchmarks the part of it that is
deployed, and ramps its distillation terms; kdreid's own meta-architectures say how by subclassing
:class:`MetaArchitecture` and overriding what differs. FastReID's meta-architectures
(``Baseline``, ``MGN``, ...) do not subclass it: the engine treats them as this class's defaults
(:func:`contract`).
"""

from typing import ClassVar

from torch import nn

__all__ = [
    "MetaArchitecture",
    "contract",
    "deployed_model",
    "distils",
    "record_extras",
    "unwrap",
]


class MetaArchitecture(nn.Module):
    """Base class of kdreid's meta-architectures: the engine's questions, with default answers.

    Subclasses are FastReID meta-architectures as usual (``@META_ARCH_REGISTRY.register()``, a
    ``from_config`` classmethod, training losses as a dict, the descriptor in evaluation); what they
    declare here is read by the engine instead of guessing from attributes.
    """

    trainable: ClassVar[bool] = True
    """Whether ``train_net.py`` can train it; False: ``--eval-only`` only (e.g. an ensemble of
    models trained elsewhere). Training an architecture that is not is refused up front."""

    needs_weights: ClassVar[bool] = True
    """Whether ``--eval-only`` loads ``MODEL.WEIGHTS`` into it (strictly); False: it is complete
    once built from its config (an ensemble loads its members' checkpoints itself), and
    ``MODEL.WEIGHTS`` must stay empty."""

    teachers_at_inference: ClassVar[bool] = False
    """Whether the models named by ``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS`` are part of it in
    evaluation too (an ensemble's members). False: they are training-only teachers, and
    ``--eval-only`` builds the model without them."""

    kd_scale: float | None = None
    """Factor on every distillation term, ramped from 0 to 1 by the
    :class:`~kdreid.engine.hooks.DistillationWarmup` hook (``KDREID.DISTILL.WARMUP_ITERS``). None:
    the model has no distillation terms, and the ramp does not apply."""

    def deployed_model(self) -> nn.Module:
        """What is deployed and benchmarked: by default the model itself; a distiller returns its
        student (training-only teachers and adapters left out)."""
        return self

    def record_extras(self) -> dict:
        """Fields added to the ``--eval-only`` speed/accuracy record (JSON values), e.g. an
        ensemble's members. By default none."""
        return {}


def contract(arch) -> type[MetaArchitecture]:
    """The answers of the meta-architecture class (or instance) ``arch``: its own where it is a
    :class:`MetaArchitecture`, the defaults for any other (FastReID's)."""
    cls = arch if isinstance(arch, type) else type(unwrap(arch))
    return cls if issubclass(cls, MetaArchitecture) else MetaArchitecture


def unwrap(model: nn.Module) -> nn.Module:
    """``model`` without a ``(Distributed)DataParallel`` wrapper."""
    if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return model.module
    return model


def deployed_model(model: nn.Module) -> nn.Module:
    """The deployed part of ``model`` (:meth:`MetaArchitecture.deployed_model`; a FastReID model
    is deployed whole)."""
    model = unwrap(model)
    return model.deployed_model() if isinstance(model, MetaArchitecture) else model


def record_extras(model: nn.Module) -> dict:
    """The fields ``model`` adds to its speed/accuracy record
    (:meth:`MetaArchitecture.record_extras`; none for a FastReID model)."""
    model = unwrap(model)
    return model.record_extras() if isinstance(model, MetaArchitecture) else {}


def distils(model: nn.Module) -> bool:
    """Whether ``model`` has distillation terms scaled by ``kd_scale``."""
    model = unwrap(model)
    return isinstance(model, MetaArchitecture) and model.kd_scale is not None
