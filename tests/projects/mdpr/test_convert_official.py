"""The official-checkpoint converter: exact tensors, the official descriptor, actionable errors.

A synthetic official checkpoint carries exactly the reference TSV's names and shapes with seeded
random values. The converted file must load strictly into the model of
``configs/MDPR/DukeMTMC.yml`` and give the descriptor that an independent reference computes from
the official state dict (MDPR.md, "Inference descriptor"): plain FastReID ResNets for the trunk,
``torch.nn.functional`` for everything after it, none of ``mdpr``'s modules.

The command line and the error cases use "shape-only" checkpoints: every tensor a zero expanded
to its shape, so the files are a few hundred kilobytes and no real weights are allocated. Those
that need a model built (the command line, differences no setting explains, non-finite values)
use the tiny MDPR test config (ResNet-18, E = 64) instead of ResNet-101.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.backbones import build_resnet_backbone

from kdreid.checkpoint import load_weights_strict
from kdreid.errors import ConfigError, WeightsError

from ...conftest import REPO, load_script_module

CONFIG = os.path.join(REPO, "configs", "MDPR", "DukeMTMC.yml")
TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")  # ResNet-18, E = 64
TSV = os.path.join(
    REPO, "projects", "MDPR", "reference", "mdpr_official_dukemtmc_r101ibn_state_dict.tsv"
)
NUM_CLASSES = 702  # hard_global_head.weight (702, 512) in the TSV
PARAMETERS = 163_854_519  # the TSV header's count
BN_EPS = 1e-5  # nn.BatchNorm2d's and FastReID's BatchNorm's default
GEM_EPS = 1e-6  # GeneralizedMeanPoolingP's clamp


convert_official = load_script_module("projects/MDPR/convert_official.py")  # shared by the tests


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    """The official state dict's ``{key: shape}``, in the TSV's order (two ``#`` lines first)."""
    shapes = {}
    with open(TSV) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


def _synthetic_value(key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A random official-looking tensor that keeps activations finite and moderate.

    Convolutions are Kaiming-uniform (fan in) so that each conv + ReLU keeps the second moment;
    batch norms get running variances in [0.5, 1.5], small means and biases, and gains near 1
    except the last norm of each residual block (``bn3``, gains in [0.1, 0.3]), so that 33
    residual additions do not blow up the identity path. GeM exponents are drawn in [2.5, 3.5]
    so that taking another head's exponent would show.
    """
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.tensor(1000, dtype=torch.int64)
    if leaf == "p":
        return torch.empty(shape).uniform_(2.5, 3.5, generator=g)
    if leaf == "running_var":
        return torch.empty(shape).uniform_(0.5, 1.5, generator=g)
    if leaf in ("running_mean", "bias"):
        return torch.randn(shape, generator=g) * 0.05
    if len(shape) == 1:  # norm gains
        low, high = (0.1, 0.3) if key.endswith(".bn3.weight") else (0.8, 1.2)
        return torch.empty(shape).uniform_(low, high, generator=g)
    fan_in = 1
    for size in shape[1:]:
        fan_in *= size
    gain = 2.0 if len(shape) == 4 else 1.0  # ReLU follows the convolutions
    bound = (3 * gain / fan_in) ** 0.5  # uniform(-b, b) has variance b^2 / 3 = gain / fan_in
    return torch.empty(shape).uniform_(-bound, bound, generator=g)


def _synthetic_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: _synthetic_value(k, s, g) for k, s in _reference_shapes().items()}


def _shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A zero expanded to each shape: right names and shapes, one stored number per tensor."""
    state = {}
    for key, shape in shapes.items():
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        state[key] = torch.zeros((), dtype=dtype).expand(shape)
    return state


def _official_checkpoint(state: dict, prefix: str = "") -> dict:
    """What the official FastReID trainer saves: the model beside the training state."""
    return {
        "model": {prefix + k: v for k, v in state.items()},
        "optimizer": {
            "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
            "param_groups": [{"lr": 3.5e-4, "weight_decay": 5e-4, "params": [0]}],
        },
        "scheduler": {"last_epoch": 5, "base_lrs": [3.5e-4]},
        "iteration": 5,
    }


def _mdpr(*opts):
    """The config and weightless model of the official config, as the converter builds them."""
    cfg, model = convert_official.build_mdpr(CONFIG, list(opts), NUM_CLASSES)
    assert cfg.MODEL.BACKBONE.PRETRAIN is False and cfg.MODEL.DEVICE == "cpu"
    return cfg, model


@pytest.fixture(scope="module")
def tiny_model():
    """The MDPR model of the tiny test config (ResNet-18 trunk, E = 64, 7 classes): cheap
    checkpoints for the command line and the error paths that build a model."""
    return convert_official.build_mdpr(TINY, [], 7)[1]


@pytest.fixture
def tiny_shapes(tiny_model):
    return {k: tuple(v.shape) for k, v in tiny_model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# The independent reference (MDPR.md, "Inference descriptor").


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """Eval-mode batch norm of ``x`` (B, C, ...) with ``prefix``'s running statistics."""
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=BN_EPS,
    )


def _embedding(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """ReLU(BN(Conv1x1(x))) for ``x`` (B, I, H, W); returns (B, O, H, W)."""
    return F.relu(_bn(F.conv2d(x, sd[f"{prefix}.embedding.weight"]), sd, f"{prefix}.bn"))


def _cbr(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """ReLU(BN(Conv3x3(Conv1x1(x)))) for ``x`` (B, I, H, W); returns (B, O, H, W)."""
    x = F.conv2d(F.conv2d(x, sd[f"{prefix}.0.weight"]), sd[f"{prefix}.1.weight"], padding=1)
    return F.relu(_bn(x, sd, f"{prefix}.2"))


def _head(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    """GeM pooling with the head's p, then the BN-neck, for ``x`` (B, C, H, W); returns (B, C)."""
    p = sd[f"{prefix}.pool_layer.p"]
    pooled = x.clamp(min=GEM_EPS).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    return _bn(pooled, sd, f"{prefix}.bottleneck.0")


def _trunk(cfg, sd: dict, branch: str):
    """A plain FastReID ResNet holding the shared stem/layer1/layer2 and one branch's layer3/4."""
    official = {
        "conv1": "generate.backbone.0",
        "bn1": "generate.backbone.1",
        "layer1": "generate.backbone.4",
        "layer2": "generate.backbone.5",
        "layer3": f"generate.{branch}.0",
        "layer4": f"generate.{branch}.1",
    }
    weights = {
        name + key[len(prefix) :]: value
        for name, prefix in official.items()
        for key, value in sd.items()
        if key.startswith(prefix + ".")
    }
    with torch.device("meta"):  # no random initialisation: every tensor is assigned below
        resnet = build_resnet_backbone(cfg)
    resnet.load_state_dict(weights, strict=True, assign=True)  # shares sd's tensors
    return resnet.eval()


@torch.no_grad()
def _reference_descriptor(cfg, sd: dict, images: torch.Tensor) -> torch.Tensor:
    """The official eval descriptor of ``images`` (B, 3, H, W), 0-255.

    Returns:
        (B, 9E): hard global, the P = 2 stripes, levels 4 and 3 (E each), fusion (4E).
    """
    hard_net, attn_net = _trunk(cfg, sd, "backbone_part"), _trunk(cfg, sd, "backbone_attn")
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    x = (images - mean) / std
    x = hard_net.maxpool(hard_net.relu(hard_net.bn1(hard_net.conv1(x))))
    shared = hard_net.layer2(hard_net.layer1(x))
    hard = hard_net.layer4(hard_net.layer3(shared))
    x3 = attn_net.layer3(shared)
    g4 = attn_net.layer4(x3)

    hard_global = _embedding(hard, sd, "generate.embedding_hard_global")
    stripes = torch.tensor_split(hard, 2, dim=2)
    parts = [_embedding(s, sd, f"generate.embedding_hard_part.{i}") for i, s in enumerate(stripes)]
    attn4 = _embedding(g4, sd, "generate.embedding_attn_feature4")
    attn3 = _embedding(
        _embedding(x3, sd, "generate.em3_1024"), sd, "generate.embedding_attn_feature3"
    )

    merged = _cbr(torch.cat(parts, dim=2), sd, "fusion.merge")
    part = _cbr(torch.cat([merged, hard_global], dim=1), sd, "fusion.output_part")
    attn = _cbr(torch.cat([attn4, attn3], dim=1), sd, "fusion.output_attn")
    fused = _cbr(torch.cat([part, attn], dim=1), sd, "fusion.output")

    features = [_head(hard_global, sd, "hard_global_head")]
    features += [_head(p, sd, f"hard_part_head.{i}") for i, p in enumerate(parts)]
    features += [
        _head(attn4, sd, "attn_feature4_head"),
        _head(attn3, sd, "attn_feature3_head"),
        _head(fused, sd, "fusion_feat_head"),
    ]
    return torch.cat(features, dim=1)


# ---------------------------------------------------------------------------------------------
# The official checkpoint, converted by the function and by the command line.


@pytest.fixture(scope="module")
def official():
    return _synthetic_state()


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    """``(result, DST)``: :func:`convert` of the official checkpoint, keys with ``module.``."""
    folder = tmp_path_factory.mktemp("convert_official")
    src, dst = folder / "model_final.pth", folder / "converted.pth"
    torch.save(_official_checkpoint(official, prefix="module."), src)
    result = convert_official.convert(str(src), str(dst), CONFIG)
    src.unlink()
    yield result, dst
    dst.unlink()  # 650 MB


@pytest.mark.slow
def test_conversion_keeps_the_official_tensors_uncast(official, converted):
    result, dst = converted
    assert result == convert_official.Conversion(
        keys=1385,
        parameters=PARAMETERS,
        feature_dim=4608,
        num_classes=NUM_CLASSES,
        dtypes=("float32", "int64"),
    )
    checkpoint = torch.load(dst, weights_only=True)
    assert list(checkpoint) == ["model"]  # optimizer, scheduler, iteration dropped
    state = checkpoint["model"]
    assert sorted(state) == sorted(official)  # "module." stripped
    for key, value in official.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key


@pytest.mark.slow
def test_command_line(tmp_path, tiny_model, tiny_shapes):
    """The script run from the repository root, options after SRC DST, no ``module.`` prefix."""
    src, dst = tmp_path / "model_final.pth", tmp_path / "out" / "converted.pth"
    torch.save(_official_checkpoint(_shape_only(tiny_shapes)), src)
    proc = subprocess.run(
        [sys.executable, "projects/MDPR/convert_official.py", str(src), str(dst)]
        + ["--config-file", TINY, "MODEL.MDPR.NUM_STRIPES", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    parameters = sum(p.numel() for p in tiny_model.parameters())
    assert tiny_model.feature_dim == 576  # (2 stripes + 3) x 64 + fusion 4 x 64
    assert proc.stdout.strip() == (
        f"Wrote {dst}: {len(tiny_shapes)} keys, {parameters:,} parameters (float32/int64), "
        "7 classes, 576-d descriptor."
    )
    state = torch.load(dst, weights_only=True)["model"]
    assert {k: tuple(v.shape) for k, v in state.items()} == tiny_shapes


@pytest.mark.slow
def test_descriptor_equals_the_official_reference(official, converted):
    cfg, model = _mdpr()
    load_weights_strict(model, str(converted[1]))
    model.eval()
    # One image: a forward of the R101 model costs ~6 s on two CPU cores.
    images = torch.rand(1, 3, 384, 192, generator=torch.Generator().manual_seed(1)) * 255
    with torch.no_grad():
        ours = model(images.clone())
    del model
    expected = _reference_descriptor(cfg, official, images)

    assert ours.shape == expected.shape == (1, 4608)
    assert torch.isfinite(expected).all()
    # Not constant in any 512-d block (one per head, four for the fusion head's 2048).
    assert expected.view(9, 512).std(dim=1).min() > 1e-3
    scale = expected.abs().max().item()
    assert 1e-2 < scale < 1e3  # moderate activations: the tolerance below means something
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4 * scale)


# ---------------------------------------------------------------------------------------------
# Checkpoints that do not fit: the error names the keys and the config key to set.


def _add_copies(shapes: dict, source: str, target: str) -> None:
    """Add ``target.*`` keys with the shapes of ``source.*``."""
    for key in [k for k in shapes if k.startswith(source + ".")]:
        shapes[target + key[len(source) :]] = shapes[key]


def _three_stripes(shapes: dict) -> None:
    _add_copies(shapes, "generate.embedding_hard_part.1", "generate.embedding_hard_part.2")
    _add_copies(shapes, "hard_part_head.1", "hard_part_head.2")


def _three_parts(shapes: dict) -> None:
    """M = 3: a third BAP embedding per level, M + 1 = 4 attention maps, 3E-d BAP heads."""
    for level in (4, 3):
        bap = f"generate.attn_bap{level}.embedding_layer"
        _add_copies(shapes, f"{bap}.1", f"{bap}.2")
        for key in [k for k in shapes if k.startswith(f"generate.attention_maker{level}.")]:
            if shapes[key]:  # (M + 1, ...)
                shapes[key] = (4,) + shapes[key][1:]
        for key in [k for k in shapes if k.startswith(f"attn_bap_feature{level}_head.")]:
            if shapes[key]:  # (..., M E)
                shapes[key] = shapes[key][:-1] + (3 * 512,)
    # Level 3 sees its features and the M + 1 guidance maps.
    shapes["generate.attention_maker3.conv.weight"] = (4, 1024 + 4, 1, 1)
    shapes["generate.attention_maker3.conv3.weight"] = (4, 1024 + 4, 3, 3)
    shapes["generate.up_attn_4_3.conv.weight"] = (4, 4, 1, 1)


def _resnet50(shapes: dict) -> None:
    for key in list(shapes):
        if re.match(r"generate\.backbone_(part|attn)\.0\.([6-9]|1\d|2[0-2])\.", key):
            del shapes[key]


def _no_ibn(shapes: dict) -> None:
    """Plain BatchNorm in place of every IBN (``bn1.IN.*`` + ``bn1.BN.*`` → ``bn1.*``)."""
    for key in [k for k in shapes if k.endswith(".bn1.IN.weight")]:
        block = key[: -len(".IN.weight")]
        channels = shapes[key][0] + shapes[f"{block}.BN.weight"][0]
        for k in [
            k for k in shapes if k.startswith(f"{block}.IN.") or k.startswith(f"{block}.BN.")
        ]:
            del shapes[k]
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{block}.{leaf}"] = (channels,)
        shapes[f"{block}.num_batches_tracked"] = ()


def _convert_shapes(tmp_path, edit=None, opts=(), state_edit=None, shapes=None, config=CONFIG):
    """Convert a shape-only checkpoint (default: the official one) edited by ``edit``; return the
    error message."""
    shapes = dict(shapes or _reference_shapes())
    if edit is not None:
        edit(shapes)
    state = _shape_only(shapes)
    if state_edit is not None:
        state_edit(state)
    src, dst = tmp_path / "model_final.pth", tmp_path / "converted.pth"
    torch.save(_official_checkpoint(state, prefix="module."), src)
    with pytest.raises(WeightsError) as info:
        convert_official.convert(str(src), str(dst), config, list(opts))
    assert not dst.exists()
    return str(info.value)


def test_shape_only_checkpoints_are_small(tmp_path):
    path = tmp_path / "shapes.pth"
    torch.save({"model": _shape_only(_reference_shapes())}, path)
    assert path.stat().st_size < 2_000_000  # not 650 MB: the error tests stay cheap


@pytest.mark.slow
def test_three_stripes_names_num_stripes(tmp_path):
    message = _convert_shapes(tmp_path, _three_stripes)
    assert "the checkpoint has 3 stripes" in message
    assert "generate.embedding_hard_part.0-2.*" in message and "hard_part_head.0-2.*" in message
    assert "the config builds 2: set MODEL.MDPR.NUM_STRIPES 3" in message
    assert message.endswith("Convert with these options: MODEL.MDPR.NUM_STRIPES 3")


@pytest.mark.slow
def test_three_parts_names_num_parts(tmp_path):
    message = _convert_shapes(tmp_path, _three_parts)
    assert "the checkpoint has 3 attention parts" in message
    assert "generate.attn_bap4.embedding_layer.0-2.*" in message
    assert "generate.attention_maker4.conv.weight (4, 2048, 1, 1): M + 1 = 4 maps" in message
    assert "set MODEL.MDPR.NUM_PARTS 3" in message
    assert "NUM_STRIPES" not in message and "DEPTH" not in message  # nothing else blamed


@pytest.mark.slow
def test_resnet50_trunk_names_depth(tmp_path):
    message = _convert_shapes(tmp_path, _resnet50)
    assert (
        "the checkpoint trunk is ResNet-50 (6 Bottleneck blocks in layer3: "
        "generate.backbone_part.0.0-5.*), the config builds 101x (23 blocks): "
        "set MODEL.BACKBONE.DEPTH 50x"
    ) in message


@pytest.mark.slow
def test_ibn_checkpoint_with_plain_config(tmp_path):
    message = _convert_shapes(tmp_path, opts=["MODEL.BACKBONE.WITH_IBN", "False"])
    assert "the checkpoint has IBN layers (106 keys such as generate.backbone" in message
    assert "set MODEL.BACKBONE.WITH_IBN True" in message


@pytest.mark.slow
def test_plain_checkpoint_with_ibn_config(tmp_path):
    message = _convert_shapes(tmp_path, _no_ibn)
    assert "the checkpoint has no IBN layers (no *.bn1.IN.* keys)" in message
    assert "set MODEL.BACKBONE.WITH_IBN False" in message


@pytest.mark.slow
def test_several_differences_are_reported_together(tmp_path):
    def edit(shapes):
        _three_stripes(shapes)
        _resnet50(shapes)

    message = _convert_shapes(tmp_path, edit, opts=["MODEL.MDPR.FUSION", "False"])
    assert "set MODEL.BACKBONE.DEPTH 50x" in message
    assert "the checkpoint has a fusion module (fusion.*, fusion_feat_head.*)" in message
    assert message.endswith(
        "Convert with these options: MODEL.MDPR.NUM_STRIPES 3 MODEL.BACKBONE.DEPTH 50x "
        "MODEL.MDPR.FUSION True"
    )


@pytest.mark.slow
def test_resnet18_checkpoint_for_the_official_config(tmp_path, tiny_shapes):
    message = _convert_shapes(tmp_path, shapes=tiny_shapes)
    assert (
        "the checkpoint trunk is ResNet-18 (2 BasicBlock blocks in layer3: "
        "generate.backbone_part.0.0-1.*), the config builds 101x (23 blocks)"
    ) in message
    assert message.endswith(
        "Convert with these options: MODEL.BACKBONE.DEPTH 18x MODEL.BACKBONE.WITH_IBN False "
        "MODEL.MDPR.EMBEDDING_DIM 64"
    )


def test_unexplained_difference_lists_the_keys(tmp_path, tiny_shapes):
    def edit(shapes):
        del shapes["fusion.output.2.running_var"]
        shapes["attn_feature3_head.bottleneck.0.weight"] = (32,)

    message = _convert_shapes(tmp_path, edit, shapes=tiny_shapes, config=TINY)
    assert "missing in the checkpoint (1):\n    fusion.output.2.running_var" in message
    assert "attn_feature3_head.bottleneck.0.weight: checkpoint (32,) vs model (64,)" in message
    assert "None of the settings the converter recognises" in message


def test_non_finite_values_are_refused(tmp_path, tiny_shapes):
    def state_edit(state):
        state["generate.em3_1024.bn.running_var"] = torch.full((256,), float("nan"))
        state["fusion.output.0.weight"] = torch.full((256, 256, 1, 1), float("inf"))

    message = _convert_shapes(tmp_path, shapes=tiny_shapes, config=TINY, state_edit=state_edit)
    # Refused as it is read (kdreid.compat.check_finite), as every weights file is.
    assert "has NaN or infinite values in 2 tensors (" in message
    assert "fusion.output.0.weight" in message and "generate.em3_1024.bn.running_var" in message


def test_other_image_normalisation_is_refused(tmp_path, tiny_shapes):
    def state_edit(state):  # persistent pixel statistics, as older FastReID versions saved them
        state["pixel_mean"] = torch.tensor([127.5, 127.5, 127.5]).view(1, 3, 1, 1)

    message = _convert_shapes(tmp_path, shapes=tiny_shapes, config=TINY, state_edit=state_edit)
    assert "normalises images with pixel_mean (127.5 127.5 127.5)" in message
    assert 'set MODEL.PIXEL_MEAN "[127.5, 127.5, 127.5]"' in message


def test_not_an_mdpr_config(tmp_path, tiny_shapes):
    src, dst = tmp_path / "model_final.pth", tmp_path / "converted.pth"
    torch.save(_official_checkpoint(_shape_only(tiny_shapes)), src)
    baseline = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
    with pytest.raises(ConfigError, match="builds a Baseline, not an MDPR model"):
        convert_official.convert(str(src), str(dst), baseline)
    assert not dst.exists()


def test_not_a_checkpoint_is_one_line_error(tmp_path, capsys):
    src, dst = tmp_path / "notes.txt", tmp_path / "converted.pth"
    src.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as info:
        convert_official.main([str(src), str(dst)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot load checkpoint '{src}'")
    assert "Traceback" not in err
    assert not dst.exists()


def test_dst_equal_to_src_is_refused(tmp_path):
    src = tmp_path / "model_final.pth"
    torch.save(_official_checkpoint(_shape_only({"hard_global_head.weight": (702, 512)})), src)
    before = src.read_bytes()
    for dst in (src, tmp_path / ".." / tmp_path.name / "model_final.pth"):
        with pytest.raises(WeightsError, match="is SRC: the converter never overwrites"):
            convert_official.convert(str(src), str(dst), CONFIG)
    assert src.read_bytes() == before


@pytest.mark.parametrize("case", ["a folder", "under a file"])
def test_dst_that_cannot_be_written_is_one_line_before_src_is_read(tmp_path, capsys, case):
    """DST a folder, or in a "folder" that is a file: one line, status 2, before SRC is read (SRC
    here is not even a checkpoint), not a traceback after the conversion."""
    src, a_file = tmp_path / "notes.txt", tmp_path / "a_file"
    src.write_text("not a checkpoint\n")
    a_file.write_text("")
    dst, message = {
        "a folder": (tmp_path, f"error: DST '{tmp_path}' is a folder; expected the path of"),
        "under a file": (a_file / "x.pth", "error: DST's folder: Cannot write the output folder"),
    }[case]
    with pytest.raises(SystemExit) as info:
        convert_official.main([str(src), str(dst)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(message)
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_missing_dst_folder_is_created_only_to_write_dst(tmp_path, capsys):
    """Checked up front, but a conversion that fails leaves no empty folder behind."""
    src, dst = tmp_path / "notes.txt", tmp_path / "new" / "sub" / "converted.pth"
    src.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit):
        convert_official.main([str(src), str(dst)])
    assert capsys.readouterr().err.startswith(f"error: Cannot load checkpoint '{src}'")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
