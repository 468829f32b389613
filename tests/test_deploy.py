"""fold_batchnorm: which BatchNorms fold (read from a traced pass), the descriptor unchanged, and
every project's model folded as --eval-only folds it."""

import pytest
import torch
from fastreid.layers.batch_norm import FrozenBatchNorm
from torch import nn

from kdreid.config import get_cfg, merge_from_file
from kdreid.deploy import FoldedPair, cast_weights_for_autocast, fold_batchnorm, foldable_pairs
from kdreid.engine import Trainer

from .conftest import REPO


def _randomise_norms(model, seed=0):
    """BatchNorm statistics and affine weights far from the identity, so that a fold that drops
    or misplaces one changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | FrozenBatchNorm):
            n = module.running_mean.numel()
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(0.2 + 2 * torch.rand(n, generator=generator))
            if module.weight is not None:
                module.weight.data.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.data.copy_(torch.randn(n, generator=generator))
    return model


class Cases(nn.Module):
    """One BatchNorm of each kind: foldable (with and without a conv bias, FastReID's frozen one,
    a 1-d one) and not (its conv's output also read by a skip connection; a BatchNorm called
    twice; one reading the convolution's output after an in-place ReLU; one after a pooling; a
    1-d one after a linear layer)."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv_b, self.bn_b = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv_c, self.bn_c = nn.Conv2d(8, 8, 3, padding=1, groups=8), FrozenBatchNorm(8)
        self.conv_skip, self.bn_skip = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv_twice, self.bn_twice = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.conv_relu, self.bn_relu = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.bn_pooled = nn.BatchNorm2d(8)
        self.conv1d, self.bn1d = nn.Conv1d(8, 8, 1), nn.BatchNorm1d(8)
        self.linear, self.bn_linear = nn.Linear(8, 6), nn.BatchNorm1d(6)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.bn_b(self.conv_b(x)))
        x = self.bn_c(self.conv_c(x))
        skip = self.conv_skip(x)
        x = self.bn_skip(skip) + skip
        x = self.bn_twice(self.conv_twice(x))
        x = self.bn_twice(x)
        x = self.bn_relu(torch.relu_(self.conv_relu(x)))  # the same tensor, changed in place
        x = self.bn_pooled(nn.functional.avg_pool2d(x, 2))
        x = self.bn1d(self.conv1d(x.flatten(2))).mean(2)
        return self.bn_linear(self.linear(x))


def test_only_a_convolutions_sole_reader_folds():
    torch.manual_seed(0)
    model = _randomise_norms(Cases()).eval()
    x = torch.randn(4, 3, 8, 6)
    with torch.no_grad():
        before = model(x)
    assert foldable_pairs(model, x) == [
        FoldedPair("conv_a", "bn_a"),
        FoldedPair("conv_b", "bn_b"),
        FoldedPair("conv_c", "bn_c"),
        FoldedPair("conv1d", "bn1d"),
    ]
    assert len(fold_batchnorm(model, x)) == 4
    for name in ("bn_a", "bn_b", "bn_c", "bn1d"):
        assert isinstance(getattr(model, name), nn.Identity)
    for name in ("bn_skip", "bn_twice", "bn_relu", "bn_pooled", "bn_linear"):
        assert not isinstance(getattr(model, name), nn.Identity)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5)
    assert after.data_ptr() != before.data_ptr()


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(Cases(), torch.randn(2, 3, 8, 6))


def test_a_fold_that_changes_the_output_is_an_error(monkeypatch):
    from kdreid import deploy

    def wrong(*args, **kwargs):  # drops the BatchNorm's shift
        weight, bias = deploy_fuse(*args, **kwargs)
        return weight, nn.Parameter(torch.zeros_like(bias))

    deploy_fuse = deploy.fuse_conv_bn_weights
    monkeypatch.setattr(deploy, "fuse_conv_bn_weights", wrong)
    model = _randomise_norms(Cases()).eval()
    with pytest.raises(RuntimeError, match="changed the model's output"):
        fold_batchnorm(model, torch.randn(2, 3, 8, 6))


PROJECT_MODELS = {
    "ResNet-18 Baseline": ("configs/Synthetic/tiny.yml", 1),
    "ResNet-50 IBN": ("configs/Synthetic/tiny.yml", None),
    "MDPR": ("configs/MDPR/Synthetic/tiny.yml", None),
    "FactorizedKD student": ("configs/FactorizedKD/Synthetic/tiny_student.yml", None),
    "MobileNet v1": ("configs/SpeedKD/Synthetic/mobilenetv1_0.5x.yml", 1),
    "MobileNetV2": ("configs/SpeedKD/Synthetic/mobilenetv2_0.5x.yml", 1),
}


@pytest.mark.parametrize("name", sorted(PROJECT_MODELS))
def test_each_projects_descriptor_is_unchanged(name):
    config, left = PROJECT_MODELS[name]
    cfg = get_cfg()
    merge_from_file(cfg, f"{REPO}/{config}")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = 16
    cfg.KD.MODEL_CONFIG = []  # the deployed student, as --eval-only builds it
    cfg.KD.MODEL_WEIGHTS = []
    if name == "ResNet-50 IBN":
        cfg.MODEL.BACKBONE.DEPTH = "50x"
        cfg.MODEL.BACKBONE.WITH_IBN = True
        cfg.MODEL.BACKBONE.FEAT_DIM = 2048
    torch.manual_seed(0)
    model = _randomise_norms(Trainer.build_model(cfg)).eval()
    model.to(memory_format=torch.channels_last)
    height, width = cfg.INPUT.SIZE_TEST
    images = 255 * torch.rand(6, 3, height, width)
    with torch.no_grad():
        before = model(images.clone())
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    folded = fold_batchnorm(model, images[:1])
    remaining = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(folded) == norms - remaining > norms // 2
    if left is not None:
        assert remaining == left  # the head's BatchNorm after pooling
    with torch.no_grad():
        after = model(images.clone())
    relative = (after - before).norm(dim=1) / before.norm(dim=1)
    assert relative.max() < 1e-5  # float32 descriptors equal within 1e-5 relative
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


class ReadsAWeight(nn.Module):
    """A convolution and a linear layer; with ``peek``, the convolution's weight is also read by
    an operation autocast leaves in float32."""

    def __init__(self, peek=False):
        super().__init__()
        self.conv, self.linear, self.peek = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), peek

    def forward(self, x):
        out = self.linear(self.conv(x).mean((2, 3)))
        return out.float() + self.conv.weight.flatten()[:4] if self.peek else out


@pytest.mark.parametrize("peek", [False, True])
def test_weights_cast_once_compute_what_autocast_computes(peek):
    torch.manual_seed(0)
    model = ReadsAWeight(peek).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        before = model(x)
    cast = cast_weights_for_autocast(model, x, torch.bfloat16)
    dtypes = {model.conv.weight.dtype, model.conv.bias.dtype, model.linear.weight.dtype}
    assert (cast, dtypes) == ((0, {torch.float32}) if peek else (2, {torch.bfloat16}))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert torch.equal(model(x), before)
