"""MobileNet v1 backbone for person ReID, registered in FastReID's ``BACKBONE_REGISTRY``.

FastReID ships MobileNet v2 and v3 but not v1, the student family of SpeedKD. The network is the
paper's feature extractor (its Table 1 without the average pool and the classifier): a 3×3 stride-2
convolution and 13 depthwise-separable blocks, each convolution followed by BN and ReLU. The width
multiplier α thins every layer to ``int(α·C)`` channels, so the output has ``int(1024·α)``
channels: ``MODEL.BACKBONE.FEAT_DIM`` must be 1024, 768, 512 or 256 for α = 1.0, 0.75, 0.5, 0.25
(checked with the other ``MODEL.BACKBONE`` keys before anything is built, by
:func:`speed_kd.config.check_speed_kd_config`).

As FastReID's ResNet does for ReID, ``MODEL.BACKBONE.LAST_STRIDE 1`` removes the last
downsampling (block 12), doubling the final map's height and width (total stride 16 instead of 32).

Reference:
    Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
    Applications", arXiv 1704.04861, 2017.
"""

import logging
import math
import os
from collections import OrderedDict

import torch
from fastreid.layers import get_norm
from fastreid.modeling.backbones.build import BACKBONE_REGISTRY
from torch import nn

from kdreid.checkpoint import read_state_dict
from kdreid.errors import WeightsError
from speed_kd.imagenet_weights import backbone_state

__all__ = [
    "WIDTH_MULTIPLIERS",
    "BLOCKS",
    "MobileNetV1",
    "build_speedkd_mobilenetv1_backbone",
    "load_pretrained",
    "output_channels",
    "width_multiplier",
]

logger = logging.getLogger(__name__)

# MODEL.BACKBONE.DEPTH -> width multiplier α (FastReID's MobileNetV2 spelling).
WIDTH_MULTIPLIERS = {"1.0x": 1.0, "0.75x": 0.75, "0.5x": 0.5, "0.25x": 0.25}

# (output channels at α = 1, stride) of the 13 depthwise-separable blocks (the paper's Table 1).
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32


def width_multiplier(depth: str) -> float:
    """The width multiplier α that ``depth`` ("1.0x", "0.75x", "0.5x" or "0.25x") names.

    Raises:
        ValueError: another name.
    """
    if depth not in WIDTH_MULTIPLIERS:
        raise ValueError(f"depth must be one of {', '.join(WIDTH_MULTIPLIERS)}; got {depth!r}")
    return WIDTH_MULTIPLIERS[depth]


def output_channels(width_mult: float) -> int:
    """Channels of :class:`MobileNetV1`'s output map at width multiplier α: ``int(1024·α)``."""
    return int(BLOCKS[-1][0] * width_mult)


class ConvBNReLU(nn.Sequential):
    """A bias-free convolution, a normalisation layer and a ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 3 (padding 1) or 1 (no padding).
        stride: the convolution's stride.
        groups: ``in_channels`` for a depthwise convolution, else 1.
        bn_norm: a :func:`fastreid.layers.get_norm` name ("BN", "syncBN", ...).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bn_norm: str = "BN",
    ):
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        layers = [("conv", conv), ("bn", get_norm(bn_norm, out_channels))]
        super().__init__(OrderedDict([*layers, ("relu", nn.ReLU(inplace=True))]))


class DepthwiseSeparable(nn.Module):
    """A 3×3 depthwise convolution (carrying the stride), then a 1×1 pointwise one.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1 or 2, applied by the depthwise convolution.
        bn_norm: the normalisation layer's name.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, bn_norm: str):
        super().__init__()
        self.depthwise = ConvBNReLU(
            in_channels,
            in_channels,
            kernel_size=3,
            stride=stride,
            groups=in_channels,
            bn_norm=bn_norm,
        )
        self.pointwise = ConvBNReLU(in_channels, out_channels, kernel_size=1, bn_norm=bn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map N×C_in×H×W to N×C_out×(H/s)×(W/s) (rounded up, s the stride)."""
        return self.pointwise(self.depthwise(x))


class MobileNetV1(nn.Module):
    """MobileNet v1 without its pooling and classifier: images in, a feature map out.

    Args:
        width_mult: the width multiplier α; every layer has ``int(α·C)`` channels.
        bn_norm: the normalisation layer's name (see :func:`fastreid.layers.get_norm`).
        last_stride: stride of the last downsampling block (block 12), 1 or 2.

    Attributes:
        out_channels: channels of the output map, ``int(1024·α)``.
    """

    def __init__(self, *, width_mult: float = 1.0, bn_norm: str = "BN", last_stride: int = 2):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        channels = int(STEM_CHANNELS * width_mult)
        self.stem = ConvBNReLU(3, channels, kernel_size=3, stride=2, bn_norm=bn_norm)
        last_downsampling = max(i for i, (_, stride) in enumerate(BLOCKS) if stride == 2)
        blocks = []
        for i, (base_channels, stride) in enumerate(BLOCKS):
            out_channels = int(base_channels * width_mult)
            stride = last_stride if i == last_downsampling else stride
            blocks.append(
                DepthwiseSeparable(channels, out_channels, stride=stride, bn_norm=bn_norm)
            )
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation over the fan-out (kernel area times output channels per group).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Extract the feature map.

        Args:
            x: normalised images, N×3×H×W.

        Returns:
            N×int(1024·α)×⌈H/32⌉×⌈W/32⌉ (⌈H/16⌉×⌈W/16⌉ with ``last_stride=1``).
        """
        return self.blocks(self.stem(x))


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load ImageNet weights into ``model``, insisting that every key fits.

    The file holds a state dict, bare or under ``"state_dict"`` or ``"model"``, in this module's
    key layout or a published one that :mod:`speed_kd.imagenet_weights` renames (timm's
    ``mobilenetv1_100``, marvis/pytorch-mobilenet's ``nn.Sequential``), recognised from its keys;
    a ``module.`` prefix (DataParallel) is stripped and the ImageNet classifier is ignored. Read
    with ``weights_only=True``.

    Args:
        model: the backbone to fill.
        path: the weights file (``MODEL.BACKBONE.PRETRAIN_PATH``).

    Raises:
        WeightsError: the file is missing or unreadable, in no layout read here, or keys are
            missing, unexpected or of another shape (all are listed, under both names).
    """
    if not path or not os.path.isfile(path):
        raise WeightsError(
            f"MODEL.BACKBONE.PRETRAIN is on but MODEL.BACKBONE.PRETRAIN_PATH '{path}' is not a "
            "file: pass the ImageNet weights' path, or MODEL.BACKBONE.PRETRAIN False."
        )
    option = "MODEL.BACKBONE.PRETRAIN_PATH"
    state, layout = backbone_state(
        read_state_dict(path, option=option),
        model.state_dict(),
        "mobilenetv1",
        source=f"{option} '{path}'",
        target=type(model).__name__,
    )
    model.load_state_dict(state, strict=True)
    logger.info("Loaded pretrained weights from %s (%s layout)", path, layout.name)


@BACKBONE_REGISTRY.register()
def build_speedkd_mobilenetv1_backbone(cfg) -> MobileNetV1:
    """Build :class:`MobileNetV1` from ``cfg.MODEL.BACKBONE``.

    Reads ``DEPTH`` (the width multiplier, "1.0x", "0.75x", "0.5x" or "0.25x"), ``NORM``,
    ``LAST_STRIDE``, and ``PRETRAIN`` / ``PRETRAIN_PATH`` (ImageNet weights, see
    :func:`load_pretrained`). ``FEAT_DIM`` (FastReID's head reads it) must equal the output
    channels, ``int(1024·α)``. The keys are checked before anything is built
    (:func:`speed_kd.config.check_speed_kd_config`).

    Raises:
        ValueError: an unknown ``DEPTH`` or a ``LAST_STRIDE`` other than 1 or 2 (the config was
            not checked).
        WeightsError: the pretrained weights are missing or do not fit.
    """
    b = cfg.MODEL.BACKBONE
    model = MobileNetV1(
        width_mult=width_multiplier(b.DEPTH), bn_norm=b.NORM, last_stride=b.LAST_STRIDE
    )
    if b.PRETRAIN:
        load_pretrained(model, b.PRETRAIN_PATH)
    return model
