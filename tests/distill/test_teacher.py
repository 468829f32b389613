"""FrozenTeacher: frozen, in eval mode, moved by .to(), outside the checkpoint, loaded strictly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdreid.distill import FrozenTeacher, build_teachers
from kdreid.errors import ConfigError, WeightsError


class _Owner(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.teacher = teacher


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return FrozenTeacher.from_config(*tiny_teacher)


def test_teacher_is_frozen_in_eval_mode_and_outside_the_checkpoint(teacher):
    owner = _Owner(teacher)
    owner.train()
    assert not teacher.training and not teacher.model.training
    assert all(not m.training for m in teacher.model.modules())
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert set(owner.state_dict()) == {"layer.weight", "layer.bias"}
    assert len(list(owner.parameters())) == 2


def test_teacher_moves_with_its_owner(tiny_teacher):
    owner = _Owner(FrozenTeacher.from_config(*tiny_teacher))
    owner.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in owner.teacher.model.parameters())
    assert owner.teacher.model.pixel_mean.dtype == torch.float64


def test_teacher_outputs_match_the_model(teacher, tiny_teacher):
    """Features are the model's evaluation output; logits are its classifier on them (a Linear
    classifier with scale 1, as the tiny config trains: logits = features @ W^T)."""
    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 32) * 255
    out = teacher(images)
    model = teacher.model
    expected = model({"images": images.clone()})
    torch.testing.assert_close(out.features, expected)
    torch.testing.assert_close(out.logits, F.linear(expected, model.heads.weight))
    assert out.logits.shape == (3, teacher.num_classes)
    assert out.feature_map.shape[:2] == (3, 512)
    assert not out.features.requires_grad
    # Another input size is resized to the teacher's: the same as resizing by hand.
    bigger = F.interpolate(images, size=(128, 64), mode="bilinear", align_corners=False)
    resized = teacher(bigger)
    back = F.interpolate(bigger, size=(64, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized.features, model({"images": back}))


def test_number_of_identities_comes_from_the_checkpoint(teacher, tiny_teacher):
    state = torch.load(tiny_teacher[1], weights_only=True)["model"]
    assert teacher.num_classes == state["heads.weight"].shape[0] > 0


def _save(tmp_path, state, name):
    path = tmp_path / name
    torch.save({"model": state}, path)
    return str(path)


def test_weights_that_do_not_fit_are_listed(tiny_teacher, tmp_path):
    config, weights = tiny_teacher
    state = torch.load(weights, weights_only=True)["model"]
    missing = dict(state)
    del missing["backbone.conv1.weight"]
    with pytest.raises(WeightsError, match="backbone.conv1.weight"):
        FrozenTeacher.from_config(config, _save(tmp_path, missing, "missing.pth"))
    extra = dict(state, **{"heads.extra": torch.zeros(1)})
    with pytest.raises(WeightsError, match="heads.extra"):
        FrozenTeacher.from_config(config, _save(tmp_path, extra, "extra.pth"))
    shaped = dict(state, **{"heads.bottleneck.0.weight": torch.zeros(7)})
    with pytest.raises(WeightsError, match=r"heads.bottleneck.0.weight: checkpoint \(7,\)"):
        FrozenTeacher.from_config(config, _save(tmp_path, shaped, "shape.pth"))


def test_teacher_config_without_weights(tiny_teacher):
    config, weights = tiny_teacher
    with pytest.raises(WeightsError, match="has no weights.*KD.MODEL_WEIGHTS"):
        build_teachers([config], [])
    with pytest.raises(ConfigError, match="2 checkpoint"):
        build_teachers([config], [weights, weights])
    with pytest.raises(ConfigError, match="KD.MODEL_CONFIG names 'nope.yml', which is not a file"):
        build_teachers(["nope.yml"], [weights])
    with pytest.raises(WeightsError) as info:
        FrozenTeacher.from_config(config, "/nonexistent/model.pth")
    assert str(info.value).startswith(
        f"teacher checkpoint (config '{config}') '/nonexistent/model.pth' does not exist"
    )


def test_several_teachers(tiny_teacher):
    config, weights = tiny_teacher
    teachers = build_teachers([config, config], [weights, weights])
    assert len(teachers) == 2 and teachers[0].model is not teachers[1].model
