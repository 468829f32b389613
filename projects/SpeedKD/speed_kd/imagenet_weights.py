"""Published ImageNet MobileNet weights, renamed into the key layout of the backbone loading them.

MobileNet v1 (:mod:`speed_kd.mobilenet_v1`) and FastReID's MobileNetV2 name their modules their
own way; the ImageNet files people have name them another. Each :class:`Layout` below is one
family of published files: how to recognise its keys, which of them are the ImageNet classifier,
and which module of the file fills each module of the backbone. The conversion is strict: every
tensor of the backbone comes from the file with the backbone's shape, every tensor of the file is
used or is the classifier, and anything else is a :class:`~kdreid.errors.WeightsError` naming the
keys on both sides and their shapes. Only BatchNorm's batch counter (``num_batches_tracked``, not
a weight) may be absent: files saved before torch counted batches have none.

The layouts, and why these:

- MobileNet v1, kdreid's own (``stem.*``, ``blocks.N.{depthwise,pointwise}.*``).
- MobileNet v1, timm's ``mobilenetv1_100`` (``conv_stem``, ``bn1``,
  ``blocks.S.J.{conv_dw,bn1,conv_pw,bn2}``, ``classifier``): the maintained ImageNet MobileNet v1
  of PyTorch (torchvision has none), built by timm's ``_gen_mobilenet_v1`` from stages of 1, 2, 2,
  6 and 2 blocks. Its network clips activations at 6 (ReLU6) where ours does not (ReLU): the
  weights are the same tensors, the features differ where an activation exceeds 6.
- MobileNet v1, the ``nn.Sequential`` of marvis/pytorch-mobilenet (``model.0`` the stem,
  ``model.N`` block N - 1 as conv, BN, ReLU, conv, BN, ReLU; ``fc``): its
  ``mobilenet_sgd_68.848.pth.tar`` is the file most PyTorch projects copied (pose estimation, SSD
  ports), with the same ReLU network as ours.
- MobileNet v2, FastReID's own, which is d-li14/mobilenetv2.pytorch's (``features.N.conv.K``,
  ``conv``, ``classifier``): that repository publishes widths 1.0 to 0.1 in it.
- MobileNet v2, torchvision's ``mobilenet_v2`` (``features.N.conv.K.L``, ``features.18``,
  ``classifier.1``): its ImageNet file is the one most people have (width 1.0 only).
"""

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import torch

from kdreid.checkpoint import model_state
from kdreid.errors import WeightsError

__all__ = [
    "LAYOUTS",
    "NETWORKS",
    "KeyMatch",
    "Layout",
    "Network",
    "backbone_state",
    "convert_state_dict",
    "layout_of",
    "match_keys",
    "pretrained_state",
    "recognise",
]


@dataclass(frozen=True)
class Network:
    """A network whose ImageNet weights are converted here.

    Attributes:
        name: for messages ("MobileNet v1").
        backbone: the ``MODEL.BACKBONE.NAME`` that builds it.
    """

    name: str
    backbone: str


NETWORKS = {
    "mobilenetv1": Network("MobileNet v1", "build_speedkd_mobilenetv1_backbone"),
    "mobilenetv2": Network("MobileNet v2", "build_mobilenetv2_backbone"),
}
"""The networks, by the name ``convert_imagenet.py --arch`` takes."""


@dataclass(frozen=True)
class Layout:
    """The key names of one family of published weights files.

    Attributes:
        name: whose layout it is, for messages ("torchvision's MobileNetV2").
        network: the key of :data:`NETWORKS` whose weights the files hold.
        examples: keys every file of the layout has, shown in messages.
        marker: a pattern that keys of this layout match and keys of the others do not.
        classifier: key prefixes of the ImageNet classifier, which no backbone loads.
        modules: maps the backbone's module names (all of them, in its order) to the file's.
    """

    name: str
    network: str
    examples: tuple[str, ...]
    marker: re.Pattern
    classifier: tuple[str, ...]
    modules: Callable[[Collection[str]], dict[str, str]]


def _same_names(modules: Collection[str]) -> dict[str, str]:
    return {m: m for m in modules}


# A module of speed_kd.mobilenet_v1.MobileNetV1 (besides stem.conv and stem.bn).
_V1_BLOCK = re.compile(r"blocks\.(\d+)\.(depthwise|pointwise)\.(conv|bn)")

# timm's _gen_mobilenet_v1: stages of 1, 2, 2, 6 and 2 blocks; block i is blocks.S.J there.
_TIMM_STAGE_DEPTHS = (1, 2, 2, 6, 2)
_TIMM_POSITIONS = [(s, j) for s, depth in enumerate(_TIMM_STAGE_DEPTHS) for j in range(depth)]
_TIMM_PARTS = {
    ("depthwise", "conv"): "conv_dw",
    ("depthwise", "bn"): "bn1",
    ("pointwise", "conv"): "conv_pw",
    ("pointwise", "bn"): "bn2",
}
# marvis/pytorch-mobilenet: model.0 = (conv, BN, ReLU); model.i+1 = block i's
# (depthwise conv, BN, ReLU, pointwise conv, BN, ReLU).
_SEQUENTIAL_PARTS = {
    ("depthwise", "conv"): 0,
    ("depthwise", "bn"): 1,
    ("pointwise", "conv"): 3,
    ("pointwise", "bn"): 4,
}


def _timm_v1_names(modules: Collection[str]) -> dict[str, str]:
    def rename(module):
        if module.startswith("stem."):
            return {"stem.conv": "conv_stem", "stem.bn": "bn1"}[module]
        i, part, layer = _V1_BLOCK.fullmatch(module).groups()
        stage, j = _TIMM_POSITIONS[int(i)]
        return f"blocks.{stage}.{j}.{_TIMM_PARTS[part, layer]}"

    return {m: rename(m) for m in modules}


def _sequential_v1_names(modules: Collection[str]) -> dict[str, str]:
    def rename(module):
        if module.startswith("stem."):
            return {"stem.conv": "model.0.0", "stem.bn": "model.0.1"}[module]
        i, part, layer = _V1_BLOCK.fullmatch(module).groups()
        return f"model.{int(i) + 1}.{_SEQUENTIAL_PARTS[part, layer]}"

    return {m: rename(m) for m in modules}


# An inverted-residual block's module of FastReID's MobileNetV2: features.N.conv.K, K indexing
# (pw conv, BN, ReLU6,) dw conv, BN, ReLU6, pw-linear conv, BN. torchvision groups conv + BN (+
# ReLU6) into Conv2dNormActivation: (pw as conv.0.0/0.1,) dw as conv.i.0/i.1, then conv, BN.
_V2_BLOCK = re.compile(r"features\.(\d+)\.conv\.(\d)")
_TORCHVISION_EXPANDING = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
_TORCHVISION_DEPTHWISE_FIRST = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}  # expansion ratio 1


def _torchvision_v2_names(modules: Collection[str]) -> dict[str, str]:
    modules = list(modules)
    # FastReID's last 1x1 convolution (conv.*) is torchvision's last feature layer.
    last = 1 + max(int(m.split(".")[1]) for m in modules if m.startswith("features."))

    def rename(module):
        if module.startswith("conv."):
            return f"features.{last}.{module[len('conv.') :]}"
        match = _V2_BLOCK.fullmatch(module)
        if match is None:  # features.0.{0,1}, the stem: the same names
            return module
        block, k = match.groups()
        expands = f"features.{block}.conv.6" in modules
        position = (_TORCHVISION_EXPANDING if expands else _TORCHVISION_DEPTHWISE_FIRST)[int(k)]
        return f"features.{block}.conv.{position}"

    return {m: rename(m) for m in modules}


LAYOUTS = (
    Layout(
        "kdreid's MobileNet v1",
        "mobilenetv1",
        ("stem.conv.weight", "blocks.0.depthwise.conv.weight"),
        re.compile(r"(stem|blocks\.\d+\.(depthwise|pointwise))\.(conv|bn)\."),
        ("fc.", "classifier."),
        _same_names,
    ),
    Layout(
        "timm's mobilenetv1_100",
        "mobilenetv1",
        ("conv_stem.weight", "blocks.0.0.conv_dw.weight"),
        re.compile(r"conv_stem\.|blocks\.\d+\.\d+\.conv_dw\."),
        ("classifier.",),
        _timm_v1_names,
    ),
    Layout(
        "marvis/pytorch-mobilenet's MobileNet v1",
        "mobilenetv1",
        ("model.0.0.weight", "model.1.3.weight"),
        re.compile(r"model\.\d+\.[0-5]\."),
        ("fc.",),
        _sequential_v1_names,
    ),
    Layout(
        "FastReID's MobileNetV2 (d-li14/mobilenetv2.pytorch's)",
        "mobilenetv2",
        ("features.1.conv.0.weight", "conv.0.weight"),
        re.compile(r"conv\.[01]\.|features\.\d+\.conv\.[4-7]\."),
        ("classifier.",),
        _same_names,
    ),
    Layout(
        "torchvision's MobileNetV2",
        "mobilenetv2",
        ("features.1.conv.0.0.weight", "features.18.0.weight"),
        re.compile(r"features\.\d+\.conv\.[01]\.[01]\."),
        ("classifier.",),
        _torchvision_v2_names,
    ),
)
"""Every layout recognised, the backbones' own first."""


def recognise(state: Mapping[str, torch.Tensor]) -> Layout | None:
    """The layout of ``state``'s keys: the one whose marker most keys match (None: no key does)."""
    counts = {layout: sum(1 for key in state if layout.marker.match(key)) for layout in LAYOUTS}
    best = max(LAYOUTS, key=counts.get)
    return best if counts[best] else None


_COUNTER = ".num_batches_tracked"


@dataclass(frozen=True)
class KeyMatch:
    """How a file's keys meet a backbone's, through a layout.

    Attributes:
        names: each backbone key (in the backbone's order) -> the file key that fills it.
        ignored: the file's classifier keys.
        missing: backbone keys whose file key the file lacks.
        unexpected: file keys that fill nothing and are not the classifier.
        shapes: backbone keys whose file tensor has another shape.
    """

    names: dict[str, str]
    ignored: list[str]
    missing: list[str]
    unexpected: list[str]
    shapes: list[str]

    @property
    def problems(self) -> int:
        """How many keys do not fit (0: the file fits)."""
        return len(self.missing) + len(self.unexpected) + len(self.shapes)

    def modules(self) -> dict[str, str]:
        """Each file module (a key without its last part) -> the backbone module it fills."""
        return {name.rpartition(".")[0]: key.rpartition(".")[0] for key, name in self.names.items()}


def match_keys(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], layout: Layout
) -> KeyMatch:
    """Meet the keys of ``state``, a file in ``layout``, with those of a backbone.

    Args:
        state: the file's state dict (``module.`` stripped).
        expected: the backbone's state dict (names and shapes).
        layout: the file's layout.
    """
    renamed = layout.modules(list(dict.fromkeys(k.rpartition(".")[0] for k in expected)))
    names = {}
    for key in expected:
        module, _, leaf = key.rpartition(".")
        names[key] = f"{renamed[module]}.{leaf}"
    used = set(names.values())
    rest = [k for k in state if k not in used]
    return KeyMatch(
        names=names,
        ignored=[k for k in rest if k.startswith(layout.classifier)],
        missing=[k for k, n in names.items() if n not in state and not k.endswith(_COUNTER)],
        unexpected=[k for k in rest if not k.startswith(layout.classifier)],
        shapes=[k for k, n in names.items() if n in state and state[n].shape != expected[k].shape],
    )


def _listing(lines: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"    {line}" for line in lines[:limit])
    return shown + (f"\n    ... and {len(lines) - limit} more" if len(lines) > limit else "")


def _mismatch_error(state, expected, layout, match, source, target) -> WeightsError:
    def show(key):  # the file's name, and the backbone's where it differs
        return match.names[key] if match.names[key] == key else f"{match.names[key]} -> {key}"

    problems = []
    if match.missing:
        problems.append(
            f"  missing in the checkpoint ({len(match.missing)}):\n"
            + _listing([show(k) for k in match.missing])
        )
    if match.unexpected:
        problems.append(
            f"  not in the model ({len(match.unexpected)}):\n" + _listing(match.unexpected)
        )
    if match.shapes:
        lines = [
            f"{show(k)}: checkpoint {tuple(state[match.names[k]].shape)} vs model "
            f"{tuple(expected[k].shape)}"
            for k in match.shapes
        ]
        problems.append(
            f"  different shapes ({len(lines)}):\n{_listing(lines)}\n  Other channel counts: "
            "the file holds another width of the network than MODEL.BACKBONE.DEPTH builds."
        )
    return WeightsError(
        f"Weights {source} ({layout.name} layout) do not fit the model {target}:\n"
        + "\n".join(problems)
    )


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    layout: Layout,
    *,
    source: str,
    target: str,
) -> dict[str, torch.Tensor]:
    """The file's tensors under the backbone's names: what ``load_state_dict(strict=True)`` takes.

    Args:
        state: the file's state dict (``module.`` stripped), in ``layout``.
        expected: the backbone's state dict (names, shapes, and the batch counters that a file
            without them keeps).
        layout: the file's layout.
        source: the file, as messages name it ("MODEL.BACKBONE.PRETRAIN_PATH 'x.pth'").
        target: the backbone, as messages name it.

    Returns:
        dict[str, Tensor]: the backbone's keys in its order, each the file's tensor (not copied,
        not cast).

    Raises:
        WeightsError: keys missing, unexpected or of another shape, each named with the file's
            key, the backbone's and both shapes.
    """
    match = match_keys(state, expected, layout)
    if match.problems:
        raise _mismatch_error(state, expected, layout, match, source, target)
    return {k: state[n] if n in state else expected[k] for k, n in match.names.items()}


def _examples(layout: Layout) -> str:
    return f"{layout.name} ({', '.join(layout.examples)}, ...)"


def layout_of(state: Mapping[str, torch.Tensor], network: str | None, *, source: str) -> Layout:
    """The layout of ``state``, which must be one of ``network``'s.

    Args:
        state: the file's state dict (``module.`` stripped).
        network: a key of :data:`NETWORKS`, or None for any network.
        source: the file, as messages name it.

    Raises:
        WeightsError: the keys are in no layout of ``network`` (the message names the layouts
            accepted and the file's first keys, or the network the file holds).
    """
    layout = recognise(state)
    wanted = NETWORKS[network].name if network else "MobileNet"
    if layout is None:
        accepted = "; ".join(_examples(lay) for lay in LAYOUTS if network in (None, lay.network))
        keys = list(state)
        shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
        raise WeightsError(
            f"Weights {source} are in no key layout of {wanted} that kdreid reads. It reads "
            f"{accepted}. The file has {len(keys)} key{'s' if len(keys) != 1 else ''}: "
            f"{shown or 'none'}."
        )
    if network and layout.network != network:
        other = NETWORKS[layout.network]
        raise WeightsError(
            f"Weights {source} are {other.name} weights in {_examples(layout)} layout, not "
            f"{wanted} ones: they are for MODEL.BACKBONE.NAME {other.backbone} ("
            "python projects/SpeedKD/convert_imagenet.py IN OUT writes them in its layout)."
        )
    return layout


def backbone_state(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    network: str,
    *,
    source: str,
    target: str,
) -> tuple[dict[str, torch.Tensor], Layout]:
    """Recognise the layout of ``state`` and convert it for a backbone of ``network``.

    Args:
        state: the file's state dict (``module.`` stripped).
        expected: the backbone's state dict.
        network: a key of :data:`NETWORKS`, the backbone's network.
        source: the file, as messages name it.
        target: the backbone, as messages name it.

    Returns:
        The backbone's state dict (:func:`convert_state_dict`) and the layout it came from.

    Raises:
        WeightsError: the keys are in no layout of ``network`` (:func:`layout_of`), or they do
            not fit the backbone (:func:`convert_state_dict`).
    """
    layout = layout_of(state, network, source=source)
    return convert_state_dict(state, expected, layout, source=source, target=target), layout


def pretrained_state(cfg, content, backbone):
    """SpeedKD's :attr:`kdreid.projects.Project.pretrained_state`: the ImageNet file of a MobileNet
    backbone (``content``, its top-level dict) under the backbone's names, whichever layout of
    :data:`LAYOUTS` it is in; None for other backbones.

    Raises:
        WeightsError: the file is in no layout of the network, or does not fit the backbone; or
            it is in another layout than FastReID's MobileNetV2 builder reads (it loads the file
            itself, without renaming): the message gives the conversion command.
    """
    name = cfg.MODEL.BACKBONE.NAME
    network = next((key for key, n in NETWORKS.items() if n.backbone == name), None)
    if network is None:
        return None
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    source = f"MODEL.BACKBONE.PRETRAIN_PATH '{path}'"
    state = model_state(content, path)
    converted, layout = backbone_state(
        state, backbone.state_dict(), network, source=source, target=type(backbone).__name__
    )
    own = next(candidate for candidate in LAYOUTS if candidate.network == network)
    bare = set(state) == set(content)  # not under "model" / "state_dict", no "module."
    if network == "mobilenetv2" and (layout is not own or not bare):
        raise WeightsError(
            f"{source} holds {layout.name} weights"
            + ("" if bare else " inside a checkpoint")
            + f"; FastReID's {name} reads only a bare state dict in its own layout ({own.name}): "
            f"convert the file once, python projects/SpeedKD/convert_imagenet.py {path} OUT.pth, "
            "and name OUT.pth."
        )
    return converted
