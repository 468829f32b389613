"""MDPR's building blocks: embeddings, attention maker and guide, pooling, fusion, predictor.

Each block's submodule names equal the official ones (KuilongCui/MDPR,
``fastreid/modeling/meta_arch/mdpr.py``), so an official state dict maps onto a model built from
these blocks by renaming prefixes only; ``tests/projects/mdpr/test_layers.py`` checks every key and
shape against ``projects/MDPR/reference/mdpr_official_dukemtmc_r101ibn_state_dict.tsv``.

Reference:
    Fu et al., "Mutual Distillation Learning for Person Re-identification", arXiv 2401.06430.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from fastreid.layers import any_softmax
from fastreid.layers.pooling import GeneralizedMeanPoolingP
from fastreid.modeling.heads import EmbeddingHead
from torch import nn

__all__ = [
    "AttentionGuide",
    "AttentionMaker",
    "BAPOutput",
    "BilinearAttentionPooling",
    "CBR",
    "Embedding",
    "Predictor",
    "ReIDHead",
    "SyncFreeCircleSoftmax",
]


class Embedding(nn.Module):
    """Conv1x1 (no bias) → BatchNorm2d → ReLU, the official ``Embedding``.

    The convolution has Kaiming normal (fan_out) initialisation, the BN weight 1 and bias 0.
    State-dict keys: ``embedding.weight`` (O, I, 1, 1) and ``bn.*`` (O,).
    """

    def __init__(self, in_channels: int, out_channels: int):
        """
        Args:
            in_channels: input channels ``I``.
            out_channels: output channels ``O``.
        """
        super().__init__()
        self.embedding = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.embedding.weight, mode="fan_out")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, I, H, W) feature map.

        Returns:
            (B, O, H, W) non-negative embedded map.
        """
        return F.relu(self.bn(self.embedding(x)))


class AttentionMaker(nn.Module):
    """Raw attention logits ``ReLU(BN(Conv1x1(x) + Conv3x3(x)))``, both convolutions without bias.

    It outputs ``M + 1`` maps: ``M`` part maps followed by one background map (see
    :func:`mdpr.losses.normalise_attention`). State-dict keys: ``conv.weight`` (M+1, I, 1, 1),
    ``conv3.weight`` (M+1, I, 3, 3), ``bn.*`` (M+1,).
    """

    def __init__(self, in_channels: int, num_maps: int):
        """
        Args:
            in_channels: input channels ``I`` (level 3 with guidance: ``1024 + M + 1``).
            num_maps: number of output maps, ``M + 1``.
        """
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_maps, kernel_size=1, bias=False)
        self.conv3 = nn.Conv2d(in_channels, num_maps, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(num_maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, I, H, W) feature map.

        Returns:
            (B, M + 1, H, W) raw (non-negative, unnormalised) attention.
        """
        return F.relu(self.bn(self.conv(x) + self.conv3(x)))


class AttentionGuide(nn.Module):
    """Guidance from the level-4 attention to level 3: bilinear upsampling, then ReLU(Conv1x1).

    The upsampling uses ``align_corners=True`` and goes to the level-3 map's size; with last
    stride 1 both levels are the same size and it is the identity (the official scale factor is
    1). State-dict key: ``conv.weight`` (M+1, M+1, 1, 1).
    """

    def __init__(self, num_maps: int):
        """
        Args:
            num_maps: number of attention maps, ``M + 1``.
        """
        super().__init__()
        self.conv = nn.Conv2d(num_maps, num_maps, kernel_size=1, bias=False)

    def forward(self, attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            attention: (B, M + 1, h, w) raw level-4 attention.
            size: ``(H, W)``, the level-3 map's spatial size.

        Returns:
            (B, M + 1, H, W) guidance, concatenated to the level-3 features by the caller.
        """
        up = F.interpolate(attention, size=tuple(size), mode="bilinear", align_corners=True)
        return F.relu(self.conv(up))


class BAPOutput(NamedTuple):
    """What :class:`BilinearAttentionPooling` computes for a batch of B images.

    Attributes:
        feature: (B, M * E) ReLU of the concatenated pooled part vectors (the BAP head's input).
        parts: (B, M, E) the pooled part vectors before the ReLU (the diversity loss's input).
    """

    feature: torch.Tensor
    parts: torch.Tensor


class BilinearAttentionPooling(nn.Module):
    """Bilinear attention pooling: one embedding and a shared GeM pooling per attention map.

    For each part ``i``: ``v_i = GeM(Embedding_i(feat * a_i))``; the level's feature is
    ``ReLU(cat[v_1, ..., v_M])``. The GeM exponent ``p`` is learnable, initialised to 3, and
    shared by the parts. State-dict keys: ``embedding_layer.<i>.*`` (see :class:`Embedding`) and
    ``pool.p`` (1,).
    """

    def __init__(self, in_channels: int, out_channels: int, num_parts: int):
        """
        Args:
            in_channels: feature channels ``C``.
            out_channels: embedding dimension ``E`` of each part.
            num_parts: number of foreground attention maps ``M``.
        """
        super().__init__()
        self.embedding_layer = nn.ModuleList(
            Embedding(in_channels, out_channels) for _ in range(num_parts)
        )
        self.pool = GeneralizedMeanPoolingP(norm=3)

    def forward(self, feat: torch.Tensor, attention: torch.Tensor) -> BAPOutput:
        """
        Args:
            feat: (B, C, H, W) feature map.
            attention: (B, M, H, W) normalised foreground attention maps.

        Returns:
            A :class:`BAPOutput` with ``feature`` (B, M * E) and ``parts`` (B, M, E).
        """
        if attention.shape[1] != len(self.embedding_layer):
            raise ValueError(
                f"expected {len(self.embedding_layer)} attention maps, got {attention.shape[1]}"
            )
        parts = torch.stack(
            [
                self.pool(embed(feat * attention[:, i : i + 1])).flatten(1)
                for i, embed in enumerate(self.embedding_layer)
            ],
            dim=1,
        )
        return BAPOutput(feature=F.relu(parts.flatten(1)), parts=parts)


class CBR(nn.Sequential):
    """Conv1x1 → Conv3x3 (padding 1) → BatchNorm2d → ReLU, convolutions without bias.

    No activation between the two convolutions, as in the official fusion. State-dict keys:
    ``0.weight`` (O, I, 1, 1), ``1.weight`` (O, O, 3, 3), ``2.*`` (O,).
    Input (B, I, H, W), output (B, O, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int):
        """
        Args:
            in_channels: input channels ``I``.
            out_channels: output channels ``O``.
        """
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Predictor(nn.Sequential):
    """Mutual-distillation predictor: Linear (no bias) → BatchNorm1d → ReLU → Linear.

    State-dict keys: ``0.weight`` (D, D), ``1.*`` (D,), ``3.weight`` (D, D), ``3.bias`` (D,).
    Input (B, D), output (B, D).
    """

    def __init__(self, dim: int):
        """
        Args:
            dim: feature dimension ``D`` (the embedding dimension ``E``).
        """
        super().__init__(
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )


class SyncFreeCircleSoftmax(any_softmax.CircleSoftmax):
    """FastReID's ``CircleSoftmax`` margins without synchronising the device.

    FastReID's version selects the rows with a valid target (``target != -1``) through
    ``torch.where(mask)``, which waits for the device to know how many rows there are, twice per
    call; MDPR calls it for eight heads per step. Here the same selection is a masked
    ``torch.where(cond, a, b)`` on the whole matrix: the output equals FastReID's bit for bit
    (``tests/projects/mdpr/test_layers.py``), with no host round trip.
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: (B, C) cosine logits; left untouched.
            targets: (B,) identity labels, ``-1`` for rows without a class here.

        Returns:
            (B, C) scaled logits with the circle margins.
        """
        alpha_p = torch.clamp_min(-logits.detach() + 1 + self.m, min=0.0)
        alpha_n = torch.clamp_min(logits.detach() + self.m, min=0.0)
        logits_p = alpha_p * (logits - (1 - self.m))
        logits_n = alpha_n * (logits - self.m)
        classes = torch.arange(logits.shape[1], device=logits.device)
        positive = (targets[:, None] == classes[None]) & (targets[:, None] != -1)
        return torch.where(positive, logits_p, logits_n) * self.s


class ReIDHead(EmbeddingHead):
    """FastReID's ``EmbeddingHead``, built from explicit arguments, with a sync-free CircleSoftmax.

    Same parameters, state-dict keys and outputs as ``EmbeddingHead`` (pooling ``pool_layer``,
    BN-neck ``bottleneck``, classifier ``weight``); only a ``CircleSoftmax`` classifier is replaced
    by :class:`SyncFreeCircleSoftmax`, which computes the same logits.
    """

    def __init__(
        self,
        *,
        feat_dim: int,
        num_classes: int,
        pool_type: str,
        cls_type: str,
        scale: float,
        margin: float,
        neck_feat: str = "after",
        with_bnneck: bool = True,
        norm_type: str = "BN",
    ):
        """
        Args:
            feat_dim: channels of the input map (and of the descriptor).
            num_classes: identities of the classifier.
            pool_type: a pooling of ``fastreid.layers.pooling`` (``Identity`` for vectors given
                as (B, D, 1, 1) maps).
            cls_type: a classifier of ``fastreid.layers.any_softmax``.
            scale: the classifier's scale ``s``.
            margin: the classifier's margin ``m``.
            neck_feat: ``"after"`` (BN-neck features for the metric losses) or ``"before"``.
            with_bnneck: add the BN-neck (its bias frozen, as FastReID builds it).
            norm_type: normalisation of the BN-neck.
        """
        super().__init__(
            feat_dim=feat_dim,
            embedding_dim=0,
            num_classes=num_classes,
            neck_feat=neck_feat,
            pool_type=pool_type,
            cls_type=cls_type,
            scale=scale,
            margin=margin,
            with_bnneck=with_bnneck,
            norm_type=norm_type,
        )
        if type(self.cls_layer) is any_softmax.CircleSoftmax:
            self.cls_layer = SyncFreeCircleSoftmax(num_classes, scale, margin)
