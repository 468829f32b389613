"""MobileNet v1 (speed_kd.mobilenet_v1); FastReID's MobileNet v2 through kdreid's get_cfg."""

import pytest
import torch
from fastreid.modeling import build_model
from fastreid.modeling.backbones import BACKBONE_REGISTRY, build_backbone
from fastreid.utils.events import EventStorage

import speed_kd.mobilenet_v1  # noqa: F401  (imported for registration of the backbone)
from kdreid.config import get_cfg
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError, WeightsError
from speed_kd.mobilenet_v1 import MobileNetV1

NAME = "build_speedkd_mobilenetv1_backbone"
WIDTHS = {"1.0x": 1024, "0.75x": 768, "0.5x": 512, "0.25x": 256}


def mobilenet_cfg(depth="0.25x", **backbone):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = NAME
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.FEAT_DIM = WIDTHS.get(depth, 256)
    cfg.MODEL.BACKBONE.LAST_STRIDE = 2
    cfg.MODEL.BACKBONE.PRETRAIN = False
    for key, value in backbone.items():
        cfg.MODEL.BACKBONE[key] = value
    return cfg


def test_registered():
    assert BACKBONE_REGISTRY.get(NAME) is speed_kd.mobilenet_v1.build_speedkd_mobilenetv1_backbone


@pytest.mark.parametrize("depth", list(WIDTHS))
@pytest.mark.parametrize("last_stride,size", [(2, (4, 2)), (1, (8, 4))])
def test_output_shape(depth, last_stride, size):
    """A 128×64 input shrinks by 32 (4×2) with last stride 2, by 16 (8×4) with last stride 1."""
    backbone = build_backbone(mobilenet_cfg(depth, LAST_STRIDE=last_stride)).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 128, 64))
    assert out.shape == (2, WIDTHS[depth], *size)
    assert backbone.out_channels == WIDTHS[depth]


def test_parameter_count():
    """Parameters of α = 1.0, derived by hand (BN: 2 per channel; running stats are buffers).

    stem: 3·3·3·32 + 2·32 = 928. A depthwise-separable block C_in → C_out has a 3×3 depthwise
    kernel (9·C_in), its BN (2·C_in), a 1×1 kernel (C_in·C_out) and its BN (2·C_out), i.e.
    11·C_in + C_in·C_out + 2·C_out:
        32→64: 2,528      64→128: 9,152     128→128: 18,048    128→256: 34,688
        256→256: 68,864   256→512: 134,912  512→512 (×5): 5 · 268,800 = 1,344,000
        512→1024: 531,968  1024→1024: 1,061,888
    Total 3,206,976: the paper's 4.2M minus its 1000-way classifier (1024·1000 + 1000).
    """
    model = MobileNetV1(width_mult=1.0)
    assert sum(p.numel() for p in model.parameters()) == 3_206_976


def test_baseline_trains_two_iterations():
    """FastReID's Baseline with the MobileNet v1 backbone: finite losses, weights that move."""
    torch.manual_seed(0)
    cfg = mobilenet_cfg("0.25x")
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.LOSSES.NAME = ("CrossEntropyLoss", "TripletLoss")
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    stem_before = model.backbone.stem.conv.weight.detach().clone()
    targets = torch.arange(4).repeat_interleave(2)
    for it in range(2):
        batch = {"images": torch.rand(8, 3, 64, 32) * 255, "targets": targets}
        with EventStorage(it):  # the Baseline logs its accuracy there
            losses = model(batch)
        assert set(losses) == {"loss_cls", "loss_triplet"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert not torch.equal(stem_before, model.backbone.stem.conv.weight)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(3, 3, 64, 32) * 255).shape == (3, 256)


def test_bad_depth_names_valid_widths():
    with pytest.raises(ConfigError, match=r"'50x'.*1\.0x, 0\.75x, 0\.5x, 0\.25x"):
        check_config(mobilenet_cfg("50x"))


def test_bad_last_stride():
    with pytest.raises(ConfigError, match="LAST_STRIDE must be 1 or 2, got 4"):
        check_config(mobilenet_cfg("0.25x", LAST_STRIDE=4))


def test_feat_dim_must_match():
    cfg = mobilenet_cfg("0.5x", FEAT_DIM=2048)
    with pytest.raises(ConfigError, match="FEAT_DIM 512"):
        check_config(cfg)


def test_pretrained_round_trip(tmp_path):
    """Weights saved from one backbone load into a fresh one (an ImageNet classifier ignored)."""
    source = MobileNetV1(width_mult=0.25)
    state = {
        **source.state_dict(),
        "fc.weight": torch.zeros(1000, 256),
        "fc.bias": torch.zeros(1000),
    }
    path = tmp_path / "mobilenet_v1_0.25.pth"
    torch.save({"state_dict": state}, path)
    cfg = mobilenet_cfg("0.25x", PRETRAIN=True, PRETRAIN_PATH=str(path))
    loaded = build_backbone(cfg)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_mismatch_lists_keys(tmp_path):
    state = MobileNetV1(width_mult=0.25).state_dict()
    del state["blocks.3.pointwise.bn.weight"]
    state["head.extra"] = torch.zeros(1)
    state["stem.conv.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    cfg = mobilenet_cfg("0.25x", PRETRAIN=True, PRETRAIN_PATH=str(path))
    with pytest.raises(WeightsError) as info:
        build_backbone(cfg)
    message = str(info.value)
    assert "blocks.3.pointwise.bn.weight" in message
    assert "head.extra" in message
    assert "stem.conv.weight: checkpoint (16, 3, 3, 3) vs model (8, 3, 3, 3)" in message


def test_pretrained_missing_file(tmp_path):
    cfg = mobilenet_cfg("0.25x", PRETRAIN=True, PRETRAIN_PATH=str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsError, match="PRETRAIN_PATH"):
        build_backbone(cfg)


@pytest.mark.parametrize("depth", ["1.0x", "0.75x", "0.5x", "0.25x"])
def test_fastreid_mobilenetv2_through_get_cfg(depth):
    """FastReID's own MobileNet v2 student: its last 1×1 conv keeps 1280 channels for α ≤ 1
    (FEAT_DIM 1280 at every width here) and it downsamples by 32 (it ignores LAST_STRIDE)."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.PRETRAIN = False
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 128, 64)).shape == (1, 1280, 4, 2)
