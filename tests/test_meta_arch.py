"""kdreid.meta_arch: the engine's questions to a meta-architecture, and the defaults a FastReID
model gets."""

import torch
from torch import nn

from kdreid.meta_arch import (
    MetaArchitecture,
    contract,
    deployed_model,
    distils,
    record_extras,
    unwrap,
)


class Plain(nn.Module):  # a FastReID meta-architecture: knows nothing of the contract
    def forward(self, x):
        return x


class Ensemble(MetaArchitecture):
    trainable = False
    needs_weights = False
    teachers_at_inference = True

    def __init__(self):
        super().__init__()
        self.member = nn.Linear(2, 2)

    def deployed_model(self):
        return self.member

    def record_extras(self):
        return {"members": 1}


class Distiller(MetaArchitecture):
    def __init__(self):
        super().__init__()
        self.kd_scale = 1.0


def test_a_fastreid_model_gets_the_defaults():
    for arch in (Plain, Plain()):
        answers = contract(arch)
        assert answers is MetaArchitecture
        assert answers.trainable and answers.needs_weights and not answers.teachers_at_inference
    model = Plain()
    assert deployed_model(model) is model and record_extras(model) == {} and not distils(model)


def test_a_subclass_answers_for_itself_through_any_wrapper():
    model = Ensemble()
    wrapped = nn.DataParallel(model)
    assert unwrap(wrapped) is model
    for arch in (Ensemble, model, wrapped):
        answers = contract(arch)
        assert not answers.trainable and not answers.needs_weights
        assert answers.teachers_at_inference
    assert deployed_model(wrapped) is model.member
    assert record_extras(wrapped) == {"members": 1}
    assert not distils(model)  # kd_scale None: nothing to ramp
    assert distils(Distiller()) and contract(Distiller).kd_scale is None


def test_the_distiller_of_the_core_is_a_meta_architecture():
    from kdreid.distill import KDReIDDistiller

    assert issubclass(KDReIDDistiller, MetaArchitecture)
    assert torch.nn.Module in KDReIDDistiller.__mro__
