"""Published ImageNet MobileNet weights: speed_kd.imagenet_weights, SpeedKD/convert_imagenet.py.

The public files are stood in for by state dicts with their exact names and shapes and random
values: torchvision's MobileNetV2 built with ``weights=None``; timm's ``mobilenetv1_100`` and
marvis/pytorch-mobilenet's MobileNet v1 (neither installed) written from their definitions below.
A conversion is right when every backbone tensor is its source tensor AND the backbone computes
what the public network computes on the same input: a reference forward of the public network
(torchvision's own, or a functional one over the file's names) in eval mode.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.backbones.mobilenet import MobileNetV2

import speed_kd  # noqa: F401  (imported for registration of the MobileNet v1 backbone)
from kdreid.config import get_cfg
from kdreid.engine.validation import check_pretrained
from kdreid.errors import WeightsError
from speed_kd.imagenet_weights import LAYOUTS, recognise
from speed_kd.mobilenet_v1 import MobileNetV1

CONVERTER = "projects/SpeedKD/convert_imagenet.py"
V1_WIDTHS = {"1.0x": 1.0, "0.75x": 0.75, "0.5x": 0.5, "0.25x": 0.25}

# MobileNet v1, the paper's Table 1: a 3x3 stride-2 stem of 32 channels, then 13
# depthwise-separable blocks (output channels, stride).
PAPER_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
PAPER_BLOCKS += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
# timm's _gen_mobilenet_v1 arch_def: the same blocks as stages of 1, 2, 2, 6 and 2
# ('dsa_r1_k3_s1_c64', 'dsa_r2_k3_s2_c128', 'dsa_r2_k3_s2_c256', 'dsa_r6_k3_s2_c512',
# 'dsa_r2_k3_s2_c1024'), block J of stage S named blocks.S.J.
TIMM_POSITIONS = [(s, j) for s, n in enumerate((1, 2, 2, 6, 2)) for j in range(n)]


def v1_plan(layout, width=1.0):
    """MobileNet v1's convolutions in forward order, under a public file's names:
    ``[(conv key, BN prefix, stride, depthwise, in channels, out channels)]``.

    timm (EfficientNet builder): ``conv_stem`` / ``bn1``, then per block ``conv_dw`` / ``bn1``,
    ``conv_pw`` / ``bn2``. marvis/pytorch-mobilenet: ``model = nn.Sequential(conv_bn(3, 32, 2),
    conv_dw(32, 64, 1), ...)``, conv_bn = (conv, BN, ReLU), conv_dw = (dw conv, BN, ReLU, pw
    conv, BN, ReLU): modules 0, 1, 3, 4 hold weights.
    """
    c_in = int(32 * width)
    if layout == "timm":
        plan = [("conv_stem.weight", "bn1", 2, False, 3, c_in)]
    else:
        plan = [("model.0.0.weight", "model.0.1", 2, False, 3, c_in)]
    for i, (channels, stride) in enumerate(PAPER_BLOCKS):
        c_out = int(channels * width)
        if layout == "timm":
            p = "blocks.{}.{}".format(*TIMM_POSITIONS[i])
            dw, dw_bn, pw, pw_bn = f"{p}.conv_dw", f"{p}.bn1", f"{p}.conv_pw", f"{p}.bn2"
        else:
            p = f"model.{i + 1}"
            dw, dw_bn, pw, pw_bn = f"{p}.0", f"{p}.1", f"{p}.3", f"{p}.4"
        plan.append((f"{dw}.weight", dw_bn, stride, True, c_in, c_in))
        plan.append((f"{pw}.weight", pw_bn, 1, False, c_in, c_out))
        c_in = c_out
    return plan


def random_bn(state, prefix, channels, generator, counter=True):
    state[f"{prefix}.weight"] = torch.rand(channels, generator=generator) + 0.5
    state[f"{prefix}.bias"] = torch.randn(channels, generator=generator) * 0.1
    state[f"{prefix}.running_mean"] = torch.randn(channels, generator=generator) * 0.1
    state[f"{prefix}.running_var"] = torch.rand(channels, generator=generator) + 0.5
    if counter:
        state[f"{prefix}.num_batches_tracked"] = torch.randint(1, 10**6, (), generator=generator)


def v1_state(layout, width=1.0, seed=0, counters=True):
    """A public MobileNet v1 state dict (``plan`` names, random values), with its classifier
    (timm: ``classifier``; marvis: ``fc``)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for conv, bn, _, depthwise, c_in, c_out in v1_plan(layout, width):
        kernel = 1 if not depthwise and c_in != 3 else 3
        shape = (c_out, 1 if depthwise else c_in, kernel, kernel)
        state[conv] = torch.randn(shape, generator=g) * (2.0 / (shape[1] * kernel**2)) ** 0.5
        random_bn(state, bn, c_out, g, counters)
    head = "classifier" if layout == "timm" else "fc"
    channels = int(1024 * width)
    state[f"{head}.weight"] = torch.randn(1000, channels, generator=g)
    state[f"{head}.bias"] = torch.randn(1000, generator=g)
    return state


def v1_reference(state, plan, x):
    """The public network's features: each convolution (3x3 padded by 1 or 1x1), BN in eval
    mode, ReLU (timm's MobileNet v1 uses ReLU6; ours, like marvis's, ReLU: see the module)."""
    for conv, bn, stride, depthwise, c_in, _ in plan:
        weight = state[conv]
        groups = c_in if depthwise else 1
        x = F.conv2d(x, weight, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
        x = F.batch_norm(
            x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
            state[f"{bn}.weight"], state[f"{bn}.bias"], training=False, eps=1e-5,
        )  # fmt: skip
        x = F.relu(x)
    return x


def randomised(module, seed=0):
    """``module``'s state dict with random values (BN variances positive, counters random)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, (), generator=g)
        elif key.endswith(("running_var", ".weight")) and value.ndim == 1:
            state[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=g) * 0.2
    return state


def backbone_cfg(name, depth, path=None):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.FEAT_DIM = int(1024 * V1_WIDTHS.get(depth, 1.0))
    cfg.MODEL.BACKBONE.LAST_STRIDE = 2
    cfg.MODEL.BACKBONE.PRETRAIN = path is not None
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(path or "")
    return cfg


def v1_cfg(depth, path=None):
    return backbone_cfg("build_speedkd_mobilenetv1_backbone", depth, path)


def v1_convolutions(backbone):
    """Our backbone's (conv, BN) module pairs in forward order."""
    pairs = [(backbone.stem.conv, backbone.stem.bn)]
    for block in backbone.blocks:
        pairs += [(block.depthwise.conv, block.depthwise.bn)]
        pairs += [(block.pointwise.conv, block.pointwise.bn)]
    return pairs


def assert_v1_is_the_file(backbone, state, plan):
    """Each convolution and BN of ``backbone`` holds the file's tensors, in forward order, and
    the backbone computes the public network's features."""
    assert len(v1_convolutions(backbone)) == len(plan)
    for (conv, bn), (conv_key, bn_key, *_) in zip(v1_convolutions(backbone), plan):
        assert torch.equal(conv.weight, state[conv_key]), conv_key
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(bn, name), state[f"{bn_key}.{name}"]), f"{bn_key}.{name}"
    backbone.eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), v1_reference(state, plan, x))


# --- MobileNet v1 through its builder --------------------------------------------------------


@pytest.mark.parametrize("depth", ["1.0x", "0.25x"])
def test_timm_mobilenetv1_loads_through_the_builder(depth, tmp_path):
    state = v1_state("timm", V1_WIDTHS[depth])
    path = tmp_path / "mobilenetv1_100.pth"
    torch.save(state, path)  # timm's pytorch_model.bin: a bare state dict
    backbone = build_backbone(v1_cfg(depth, path))
    assert_v1_is_the_file(backbone, state, v1_plan("timm", V1_WIDTHS[depth]))
    counters = [v for k, v in backbone.state_dict().items() if k.endswith("num_batches_tracked")]
    assert sorted(c.item() for c in counters) == sorted(
        v.item() for k, v in state.items() if k.endswith("num_batches_tracked")
    )


def test_marvis_checkpoint_loads_through_the_builder(tmp_path):
    """mobilenet_sgd_68.848.pth.tar: an ImageNet-example checkpoint of a DataParallel model,
    saved before BatchNorm counted batches (no num_batches_tracked)."""
    state = v1_state("marvis", counters=False)
    path = tmp_path / "mobilenet_sgd_68.848.pth.tar"
    wrapped = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 90, "arch": "mobilenet", "state_dict": wrapped, "best_prec1": 68.8}, path)
    backbone = build_backbone(v1_cfg("1.0x", path))
    assert_v1_is_the_file(backbone, state, v1_plan("marvis"))


def test_wrong_width_names_the_tensors_and_shapes(tmp_path):
    path = tmp_path / "mobilenetv1_100.pth"
    torch.save(v1_state("timm", 1.0), path)
    with pytest.raises(WeightsError) as info:
        build_backbone(v1_cfg("0.25x", path))
    message = str(info.value)
    assert f"MODEL.BACKBONE.PRETRAIN_PATH '{path}' (timm's mobilenetv1_100 layout)" in message
    stem = "conv_stem.weight -> stem.conv.weight: checkpoint (32, 3, 3, 3) vs model (8, 3, 3, 3)"
    assert stem in message
    depthwise = "blocks.0.0.conv_dw.weight -> blocks.0.depthwise.conv.weight"
    assert f"{depthwise}: checkpoint (32, 1, 3, 3) vs model (8, 1, 3, 3)" in message
    # 27 convolutions, each with its BN: 5 tensors of another shape each, 20 of them listed
    assert "different shapes (135):" in message and "... and 115 more" in message
    assert "MODEL.BACKBONE.DEPTH" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    """Block 7 is the third of timm's stage 3 (stages of 1, 2, 2 blocks come first: 5 + 2).
    timm's mobilenetv1_100h adds a head convolution (conv_head, bn2) that MobileNet v1 has not."""
    state = v1_state("timm")
    del state["blocks.3.2.conv_pw.weight"]
    state["conv_head.weight"] = torch.zeros(1024, 1024, 1, 1)
    random_bn(state, "bn2", 1024, torch.Generator())
    path = tmp_path / "mobilenetv1_100h.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        build_backbone(v1_cfg("1.0x", path))
    message = str(info.value)
    missing = "blocks.3.2.conv_pw.weight -> blocks.7.pointwise.conv.weight"
    assert f"missing in the checkpoint (1):\n    {missing}\n" in message
    assert "not in the model (6):\n    conv_head.weight\n    bn2.weight" in message
    assert "different shapes" not in message


def test_another_network_or_layout_is_named(tmp_path):
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), tmp_path / "v2.pth")
    with pytest.raises(WeightsError) as info:
        build_backbone(v1_cfg("1.0x", tmp_path / "v2.pth"))
    assert "MobileNet v2 weights in torchvision's MobileNetV2" in str(info.value)
    assert "MODEL.BACKBONE.NAME build_mobilenetv2_backbone" in str(info.value)

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError) as info:
        build_backbone(v1_cfg("1.0x", tmp_path / "r18.pth"))
    message = str(info.value)
    assert "in no key layout of MobileNet v1" in message
    for layout in LAYOUTS[:3]:
        assert layout.name in message and layout.examples[0] in message
    assert "The file has 122 keys: conv1.weight, bn1.weight, bn1.bias" in message


def test_every_layout_is_recognised_from_its_keys():
    files = [
        MobileNetV1().state_dict(),
        v1_state("timm"),
        v1_state("marvis"),
        MobileNetV2("BN", 1.0).state_dict(),
        torchvision.models.mobilenet_v2(weights=None).state_dict(),
    ]
    assert [recognise(state) for state in files] == list(LAYOUTS)
    assert recognise(torchvision.models.resnet18(weights=None).state_dict()) is None


# --- the converter: torchvision's MobileNetV2 for FastReID's builder ---------------------------


@pytest.mark.parametrize("width,depth", [(1.0, "1.0x"), (0.5, "0.5x")])
def test_torchvision_mobilenetv2_converts_exactly(width, depth, tmp_path, load_script):
    """The converted file passes kdreid's check of PRETRAIN_PATH, FastReID's builder loads every
    tensor of it, each is its torchvision tensor, and the backbone computes torchvision's
    ``features`` (which end with the 1x1 convolution to 1,280 channels, as FastReID's does)."""
    reference = torchvision.models.mobilenet_v2(weights=None, width_mult=width)
    state = randomised(reference)
    reference.load_state_dict(state)
    src, dst = tmp_path / "mobilenet_v2.pth", tmp_path / "out" / "fastreid_mobilenet_v2.pth"
    torch.save(state, src)
    result = load_script(CONVERTER).convert(str(src), str(dst))
    assert (result.depth, result.network.backbone) == (depth, "build_mobilenetv2_backbone")
    assert result.ignored == ["classifier.1.weight", "classifier.1.bias"]
    written = torch.load(dst, weights_only=True)
    assert len(written) == result.keys == len(state) - 2

    cfg = check_pretrained(backbone_cfg("build_mobilenetv2_backbone", depth, dst))
    backbone = build_backbone(cfg).eval()
    loaded = backbone.state_dict()
    assert set(loaded) == set(written)
    checked = 0
    for theirs, ours in result.modules.items():  # every tensor, from the module it names
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{ours}.{leaf}" in loaded:
                assert torch.equal(loaded[f"{ours}.{leaf}"], state[f"{theirs}.{leaf}"])
                checked += 1
    assert checked == len(loaded)
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference.eval().features(x))


def test_converter_errors_name_keys_widths_and_layouts(tmp_path, load_script):
    convert = load_script(CONVERTER).convert
    state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    src = tmp_path / "mobilenet_v2.pth"
    torch.save(state, src)
    with pytest.raises(WeightsError) as info:  # another width than asked for
        convert(str(src), str(tmp_path / "a.pth"), depth="0.5x")
    assert "do not fit the model MobileNet v2 0.5x" in str(info.value)
    assert "features.0.0.weight: checkpoint (32, 3, 3, 3) vs model (16, 3, 3, 3)" in str(info.value)

    del state["features.5.conv.1.0.weight"]
    state["features.5.conv.4.weight"] = torch.zeros(1)
    torch.save(state, src)
    with pytest.raises(WeightsError) as info:  # a key missing, one unexpected
        convert(str(src), str(tmp_path / "b.pth"))
    message = str(info.value)
    assert "features.5.conv.1.0.weight -> features.5.conv.3.weight" in message
    assert "not in the model (1):\n    features.5.conv.4.weight" in message

    torch.save(v1_state("timm", 1.25), src)  # timm's mobilenetv1_125: a width we do not build
    with pytest.raises(WeightsError) as info:
        convert(str(src), str(tmp_path / "c.pth"))
    assert "MobileNet v1 1.0x (of the widths 1.0x, 0.75x, 0.5x, 0.25x, the closest" in str(
        info.value
    )
    stem = "conv_stem.weight -> stem.conv.weight: checkpoint (40, 3, 3, 3) vs model (32, 3, 3, 3)"
    assert stem in str(info.value)

    torch.save({"conv1.weight": torch.zeros(1)}, src)
    with pytest.raises(WeightsError, match="in no key layout of MobileNet that kdreid reads"):
        convert(str(src), str(tmp_path / "d.pth"))
    assert not any((tmp_path / name).exists() for name in ("a.pth", "b.pth", "c.pth", "d.pth"))


def test_converter_writes_timm_weights_for_our_backbone(tmp_path, load_script, capsys):
    state = v1_state("timm", 0.5)
    src, dst = tmp_path / "timm.pth", tmp_path / "mbv1.pth"
    torch.save(state, src)
    load_script(CONVERTER).main([str(src), str(dst), "--arch", "mobilenetv1"])
    out = capsys.readouterr().out
    ignored = "not written (the ImageNet classifier): classifier.weight, classifier.bias\n"
    assert f"IN '{src}': timm's mobilenetv1_100 layout; {ignored}" in out
    assert "  blocks.4.1.conv_pw -> blocks.12.pointwise.conv\n" in out
    assert "MODEL.BACKBONE.NAME build_speedkd_mobilenetv1_backbone MODEL.BACKBONE.DEPTH 0.5x" in out
    cfg = check_pretrained(v1_cfg("0.5x", dst))  # kdreid's check of PRETRAIN_PATH accepts it
    assert_v1_is_the_file(build_backbone(cfg), state, v1_plan("timm", 0.5))


def test_converter_bad_input_is_one_line(tmp_path, load_script, capsys):
    main = load_script(CONVERTER).main
    src = tmp_path / "in.pth"
    torch.save(v1_state("marvis"), src)
    for argv, start in [
        ([str(tmp_path / "absent.pth"), str(tmp_path / "out.pth")], "error: IN '"),
        ([str(src), str(src)], f"error: OUT '{src}' is IN"),
        ([str(src), str(tmp_path / "o.pth"), "--depth", "2x"], "error: --depth 2x is not a width"),
        ([str(src), str(tmp_path / "o.pth"), "--arch", "mobilenetv2"], "error: Weights IN"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith(start) and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.pth"]


# --- no weights file runs code -------------------------------------------------------------


class _Payload:
    """Unpickling it creates ``marker``: what a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused(tmp_path, monkeypatch, load_script):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({**v1_state("timm"), "x": _Payload(str(marker))}, path)
    with pytest.raises(WeightsError, match="pickled Python objects"):
        build_backbone(v1_cfg("1.0x", path))
    with pytest.raises(WeightsError, match="pickled Python objects"):
        load_script(CONVERTER).convert(str(path), str(tmp_path / "out.pth"))
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


# --- kdreid's check of PRETRAIN_PATH, before the builder runs -----------------------------------


@pytest.mark.parametrize("layout", ["timm", "marvis"])
def test_public_mobilenetv1_files_pass_the_engines_check(layout, tmp_path):
    """The engine compares PRETRAIN_PATH with the backbone's own names before building: a public
    file was refused ("provides 0 of the 137 parameters") although the builder reads it."""
    state = v1_state(layout)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    cfg = check_pretrained(v1_cfg("1.0x", path))
    assert cfg.MODEL.BACKBONE.PRETRAIN_PATH == str(path)
    assert_v1_is_the_file(build_backbone(cfg), state, v1_plan(layout))


def test_a_public_file_of_the_wrong_width_is_named_by_the_engines_check(tmp_path):
    path = tmp_path / "mobilenetv1_100.pth"
    torch.save(v1_state("timm", 1.0), path)
    with pytest.raises(WeightsError, match=r"conv_stem.weight -> stem.conv.weight: checkpoint"):
        check_pretrained(v1_cfg("0.5x", path))


@pytest.mark.parametrize("nested", [False, True])
def test_mobilenetv2_files_fastreid_cannot_read_are_refused_with_the_command(nested, tmp_path):
    """FastReID's MobileNetV2 builder loads the file itself (strict=False): a torchvision file,
    or its own layout inside a checkpoint, would leave every tensor at random, logged only."""
    if nested:
        state = {"state_dict": MobileNetV2("BN", 1.0).state_dict()}
        what = "FastReID's MobileNetV2 (d-li14/mobilenetv2.pytorch's) weights inside a checkpoint"
    else:
        state = torchvision.models.mobilenet_v2(weights=None).state_dict()
        what = "torchvision's MobileNetV2 weights"
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        check_pretrained(backbone_cfg("build_mobilenetv2_backbone", "1.0x", path))
    message = str(info.value)
    assert f"'{path}' holds {what}" in message
    assert f"python projects/SpeedKD/convert_imagenet.py {path} OUT.pth" in message
