"""The MDPR meta-architecture: hard- and soft-content branches that distil into each other.

One FastReID ResNet trunk is split after ``layer2``: ``layer3`` and ``layer4`` are copied twice,
one copy for each branch.

- **Hard content** (``generate.backbone_part``): a global embedding of the final map and one
  embedding per horizontal stripe.
- **Soft content** (``generate.backbone_attn``): embeddings of the level-4 and level-3 maps, and
  learned attention at both levels (level 3 guided by level 4) feeding bilinear attention pooling
  (BAP), whose heads, diversity and mass terms shape the attention during training.
- **Fusion** (``fusion``): stripes, global and attention embeddings fused into one 4E-channel map.
- **Mutual distillation** (``predictor1/2``): each branch's global feature predicts the other's.

Every head is FastReID's ``EmbeddingHead`` (GeM, BN-neck, CircleSoftmax; :class:`ReIDHead`). The
descriptor is the concatenation of the BN-neck features of the hard-global, stripe, level-4,
level-3 and fusion heads, in that order (4608-d with the official settings). The attention maps
and the BAP features do not enter it, so evaluation does not compute them.

Module and parameter names are the official ones (KuilongCui/MDPR), so an official checkpoint
loads after ``projects/MDPR/convert_official.py`` has checked it. Unlike the
official code, the images are normalised out of place, the forward writes no files, the loss
terms never synchronise the device, and the diversity switch is honoured.

Reference:
    Fu, Cui, Wang, Qi, Ma, "Mutual Distillation Learning for Person Re-identification",
    arXiv 2401.06430 (2024).
"""

import copy
import logging
import math
from typing import NamedTuple

import torch
from fastreid.config import configurable
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.backbones.resnet import ResNet
from fastreid.modeling.losses import triplet_loss
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from kdreid.checkpoint import read_state_dict
from kdreid.errors import WeightsError
from kdreid.meta_arch import MetaArchitecture
from mdpr.layers import (
    CBR,
    AttentionGuide,
    AttentionMaker,
    BAPOutput,
    BilinearAttentionPooling,
    Embedding,
    Predictor,
    ReIDHead,
)
from mdpr.losses import (
    attention_diversity_loss,
    attention_mass_loss,
    cross_entropy_loss,
    mutual_distillation_loss,
    normalise_attention,
)

__all__ = ["MDPR", "Branches", "Fusion", "Generate", "final_map_rows", "load_trunk_weights"]

logger = logging.getLogger(__name__)


def final_map_rows(height: int, last_stride: int) -> int:
    """Rows of a FastReID ResNet's final map for an input ``height`` pixels high.

    conv1 (7×7, stride 2, padding 3), max-pool (3×3, stride 2, ceil mode), then stride 2 in layer2,
    layer3 and (with ``last_stride`` 2) layer4.
    """
    rows = (height - 1) // 2 + 1  # conv1
    rows = math.ceil((rows - 3) / 2) + 1  # max-pool, ceil_mode=True, no padding
    for _ in range(2 if last_stride == 1 else 3):
        rows = (rows - 1) // 2 + 1
    return rows


def _out_channels(layer: nn.Sequential) -> int:
    """Output channels of a ResNet stage (Bottleneck: conv3; BasicBlock: conv2)."""
    block = layer[-1]
    conv = getattr(block, "conv3", None) or block.conv2
    return conv.out_channels


def load_trunk_weights(backbone: ResNet, path: str) -> None:
    """Load ImageNet (or LUPerson) weights into the trunk before it is split; loudly.

    FastReID loads backbone weights with ``strict=False`` and only logs what did not fit: with IBN
    on, a plain-ResNet checkpoint silently leaves the IBN layers random (the official MDPR code
    inherits this). Here a missing trunk key or a shape mismatch is an error naming the keys;
    checkpoint keys the trunk has no use for (``fc.*``) are listed in the log and skipped.

    Raises:
        WeightsError: the file is unreadable, or does not cover the trunk.
    """
    option = "MODEL.BACKBONE.PRETRAIN_PATH"
    state = read_state_dict(path, option)
    expected = backbone.state_dict()
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; it is not a weight.
    for key in set(expected) - set(state):
        if key.endswith("num_batches_tracked"):
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs trunk {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or shapes:
        hint = ""
        if any(".IN." in k or ".BN." in k for k in missing):
            hint = (
                "\n  The trunk has IBN layers (MODEL.BACKBONE.WITH_IBN True) that the file does "
                "not have: use IBN-ResNet weights, or set WITH_IBN False."
            )
        lines = [f"    {k}" for k in (missing + shapes)[:20]]
        more = len(missing) + len(shapes) - len(lines)
        raise WeightsError(
            f"{option} '{path}' does not fit the trunk ({len(missing)} keys missing, "
            f"{len(shapes)} of another shape):\n"
            + "\n".join(lines)
            + (f"\n    ... and {more} more" if more > 0 else "")
            + hint
        )
    unused = sorted(set(state) - set(expected))
    backbone.load_state_dict({k: state[k] for k in expected}, strict=True)
    logger.info(
        "Loaded the trunk from %s%s", path, f" (unused keys: {', '.join(unused)})" if unused else ""
    )


class Branches(NamedTuple):
    """Maps computed by :class:`Generate` for a batch of B images (E: embedding dim).

    Attributes:
        hard_global: (B, E, h, w) embedding of the hard branch's final map.
        hard_parts: P maps (B, E, h_i, w), one per horizontal stripe, top first.
        attn_feature4: (B, E, h, w) embedding of the soft branch's level-4 map.
        attn_feature3: (B, E, h3, w3) embedding of the soft branch's level-3 map.
        attention4: (B, M, h, w) foreground attention at level 4, or None (not computed).
        attention3: (B, M, h3, w3) foreground attention at level 3, or None.
        bap4: level-4 :class:`~mdpr.layers.BAPOutput`, or None.
        bap3: level-3 :class:`~mdpr.layers.BAPOutput`, or None.
    """

    hard_global: torch.Tensor
    hard_parts: list
    attn_feature4: torch.Tensor
    attn_feature3: torch.Tensor
    attention4: torch.Tensor | None = None
    attention3: torch.Tensor | None = None
    bap4: BAPOutput | None = None
    bap3: BAPOutput | None = None


class Generate(nn.Module):
    """Trunk, branches, embeddings and attention: the official ``generate`` module.

    Submodules (official names): ``backbone`` (stem, layer1, layer2 as one ``nn.Sequential``,
    indices 0, 1, 4, 5 hold weights), ``backbone_part`` and ``backbone_attn`` (copies of layer3 and
    layer4), ``embedding_hard_global``, ``embedding_hard_part.<i>``, ``embedding_attn_feature4``,
    ``em3_1024`` (level-3 re-embedding, C3 → C3; 1024 channels for ResNet-50/101),
    ``embedding_attn_feature3``, ``attention_maker4``, ``up_attn_4_3`` (with guidance),
    ``attention_maker3``, ``attn_bap4``, ``attn_bap3``.
    """

    def __init__(
        self, backbone: ResNet, embedding_dim: int, num_stripes: int, num_parts: int, guidance: bool
    ):
        """
        Args:
            backbone: a FastReID ResNet without non-local blocks; its modules are reused (stem,
                layer1, layer2) and copied (layer3, layer4, twice).
            embedding_dim: E.
            num_stripes: P.
            num_parts: M.
            guidance: guide the level-3 attention with the level-4 one.
        """
        super().__init__()
        b = backbone
        self.num_stripes = num_stripes
        self.backbone = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2)
        self.backbone_part = nn.Sequential(copy.deepcopy(b.layer3), copy.deepcopy(b.layer4))
        self.backbone_attn = nn.Sequential(copy.deepcopy(b.layer3), copy.deepcopy(b.layer4))
        c3, c4 = _out_channels(b.layer3), _out_channels(b.layer4)
        e, maps = embedding_dim, num_parts + 1
        self.embedding_hard_global = Embedding(c4, e)
        self.embedding_hard_part = nn.ModuleList(Embedding(c4, e) for _ in range(num_stripes))
        self.embedding_attn_feature4 = Embedding(c4, e)
        self.em3_1024 = Embedding(c3, c3)
        self.embedding_attn_feature3 = Embedding(c3, e)
        self.attention_maker4 = AttentionMaker(c4, maps)
        self.up_attn_4_3 = AttentionGuide(maps) if guidance else None
        self.attention_maker3 = AttentionMaker(c3 + (maps if guidance else 0), maps)
        self.attn_bap3 = BilinearAttentionPooling(c3, e, num_parts)
        self.attn_bap4 = BilinearAttentionPooling(c4, e, num_parts)

    def stripes(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Split ``x`` (B, C, H, W) into P horizontal stripes, top first.

        ``torch.tensor_split``: equal stripes when P divides H (then identical to the official
        ``torch.chunk``), otherwise sizes differing by at most one row, always P of them.
        """
        if x.shape[2] < self.num_stripes:
            raise ValueError(
                f"MODEL.MDPR.NUM_STRIPES {self.num_stripes} is more than the {x.shape[2]} rows of "
                f"the final feature map (input {tuple(x.shape)}): use fewer stripes or taller "
                "images"
            )
        return torch.tensor_split(x, self.num_stripes, dim=2)

    def forward(self, images: torch.Tensor, attention: bool = True) -> Branches:
        """
        Args:
            images: (B, 3, H, W) normalised images.
            attention: compute the attention maps and the BAP features (training and
                visualisation); they do not affect the descriptor.

        Returns:
            :class:`Branches`.
        """
        shared = self.backbone(images)
        hard = self.backbone_part(shared)
        hard_global = self.embedding_hard_global(hard)
        hard_parts = [
            embed(stripe) for embed, stripe in zip(self.embedding_hard_part, self.stripes(hard))
        ]
        x3 = self.backbone_attn[0](shared)
        g4 = self.backbone_attn[1](x3)
        attn_feature4 = self.embedding_attn_feature4(g4)
        x3e = self.em3_1024(x3)
        attn_feature3 = self.embedding_attn_feature3(x3e)
        if not attention:
            return Branches(hard_global, hard_parts, attn_feature4, attn_feature3)
        raw4 = self.attention_maker4(g4)
        level3_input = x3
        if self.up_attn_4_3 is not None:
            level3_input = torch.cat([x3, self.up_attn_4_3(raw4, x3.shape[-2:])], dim=1)
        raw3 = self.attention_maker3(level3_input)
        attention4, attention3 = normalise_attention(raw4), normalise_attention(raw3)
        return Branches(
            hard_global,
            hard_parts,
            attn_feature4,
            attn_feature3,
            attention4,
            attention3,
            self.attn_bap4(g4, attention4),
            self.attn_bap3(x3e, attention3),
        )


class Fusion(nn.Module):
    """Fuses both branches into one 4E-channel map: the official ``fusion`` module.

    ``merge = CBR(E)(stripes stacked along the height)``, ``part = CBR(2E)([merge, global])``,
    ``attn = CBR(2E)([level 4, level 3])``, ``output = CBR(4E)([part, attn])``.
    """

    def __init__(self, embedding_dim: int):
        """
        Args:
            embedding_dim: E.
        """
        super().__init__()
        e = embedding_dim
        self.merge = CBR(e, e)
        self.output_part = CBR(2 * e, 2 * e)
        self.output_attn = CBR(2 * e, 2 * e)
        self.output = CBR(4 * e, 4 * e)

    def forward(self, branches: Branches) -> torch.Tensor:
        """
        Args:
            branches: the maps of :class:`Generate`; the level-3 and level-4 maps must have the
                same size (last stride 1).

        Returns:
            (B, 4E, h, w) fused map.
        """
        if branches.attn_feature4.shape[-2:] != branches.attn_feature3.shape[-2:]:
            raise ValueError(
                "fusion concatenates the level-4 and level-3 maps, which must have the same size "
                f"(got {tuple(branches.attn_feature4.shape[-2:])} and "
                f"{tuple(branches.attn_feature3.shape[-2:])}): build the trunk with last stride 1"
            )
        merged = self.merge(torch.cat(branches.hard_parts, dim=2))
        part = self.output_part(torch.cat([merged, branches.hard_global], dim=1))
        attn = self.output_attn(torch.cat([branches.attn_feature4, branches.attn_feature3], dim=1))
        return self.output(torch.cat([part, attn], dim=1))


@META_ARCH_REGISTRY.register()
class MDPR(MetaArchitecture):
    """Mutual distillation of a hard-content (stripes) and a soft-content (attention) branch.

    In training, ``forward`` returns the loss terms under the official names (19 with the
    official settings): ``loss_<head>_cls`` and ``loss_<head>_triplet`` for the heads
    ``hard_global``, ``hard_part_<i>``, ``attn_feature4``, ``attn_feature3`` and ``fusion``;
    ``loss_attn_bap4_cls``, ``loss_attn_bap3_cls``; ``loss_diversity_loss_{4,3}``,
    ``loss_diversity_loss_reg_{4,3}`` (attention mass); ``loss_mutual_distillation``. In
    evaluation it returns the (B, (P + 3) E + 4E) descriptor (no fusion: (P + 3) E).

    Config: ``MODEL.MDPR.*`` (see :mod:`mdpr.config`), FastReID's ``MODEL.BACKBONE.*`` (a ResNet),
    ``MODEL.HEADS.*`` (pooling, classifier, scale, margin, BN-neck) and ``MODEL.LOSSES.*``; the
    values are checked before anything is built (:func:`mdpr.config.check_mdpr_config`).
    Trained and evaluated as kdreid's engine does by default (:class:`MetaArchitecture`); what
    it deploys leaves out the training-only modules (:meth:`deployed_model`).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: ResNet,
        num_classes: int,
        pixel_mean,
        pixel_std,
        embedding_dim: int = 512,
        num_stripes: int = 2,
        num_parts: int = 2,
        guidance: bool = True,
        fusion: bool = True,
        distillation: bool = True,
        diversity: bool = True,
        head_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
    ):
        """
        Args:
            backbone: a FastReID ResNet (no non-local blocks), split after layer2.
            num_classes: identities of every classifier.
            pixel_mean: per-channel mean of the input images (0-255 scale).
            pixel_std: per-channel standard deviation.
            embedding_dim: E.
            num_stripes: P, horizontal stripes of the hard branch.
            num_parts: M, foreground attention maps per level.
            guidance: guide the level-3 attention with the level-4 one.
            fusion: build the fusion module and its head (and descriptor slice).
            distillation: build the predictors and the mutual distillation term.
            diversity: add the diversity and attention mass terms.
            head_kwargs: :class:`ReIDHead` arguments shared by every head (``pool_type``,
                ``cls_type``, ``scale``, ``margin``, ``neck_feat``, ``with_bnneck``,
                ``norm_type``); defaults: the official GeM / CircleSoftmax(64, 0.35) / BN-neck.
            loss_kwargs: ``names`` (FastReID's ``MODEL.LOSSES.NAME``), ``ce`` (``eps``,
                ``alpha``, ``scale``), ``tri`` (``margin``, ``norm_feat``, ``hard_mining``,
                ``scale``) and the MDPR weights ``diversity``, ``mass``, ``distillation``,
                ``bap``.
        """
        super().__init__()
        if not isinstance(backbone, ResNet):
            raise ValueError(
                "backbone must be a FastReID ResNet, which MDPR splits after layer2; got a "
                f"{type(backbone).__name__}"
            )
        non_local = [name for name, _ in backbone.named_children() if name.startswith("NL_")]
        if non_local:
            raise ValueError(
                f"backbone has non-local blocks ({', '.join(non_local)}), which MDPR's trunk does "
                "not have (the official model drops them): build the ResNet without them"
            )
        for name, value in (
            ("num_stripes", num_stripes),
            ("num_parts", num_parts),
            ("embedding_dim", embedding_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.embedding_dim = embedding_dim
        self.num_stripes = num_stripes
        self.num_parts = num_parts
        self.distillation = distillation
        self.diversity = diversity
        # Evaluation skips the attention and BAP, which do not change the descriptor; set False to
        # compute them anyway (the benchmark measures what skipping saves).
        self.skip_unused_in_eval = True
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), False)

        self.generate = Generate(backbone, embedding_dim, num_stripes, num_parts, guidance)
        self.fusion = Fusion(embedding_dim) if fusion else None

        head = {
            "pool_type": "GeneralizedMeanPoolingP",
            "cls_type": "CircleSoftmax",
            "scale": 64,
            "margin": 0.35,
            "neck_feat": "after",
            "with_bnneck": True,
            "norm_type": "BN",
        }
        head.update(head_kwargs or {})
        e, m = embedding_dim, num_parts

        def make_head(dim, **overrides):
            return ReIDHead(feat_dim=dim, num_classes=num_classes, **{**head, **overrides})

        self.hard_global_head = make_head(e)
        self.hard_part_head = nn.ModuleList(make_head(e) for _ in range(num_stripes))
        self.attn_feature4_head = make_head(e)
        self.attn_feature3_head = make_head(e)
        self.attn_bap_feature4_head = make_head(m * e, pool_type="Identity")
        self.attn_bap_feature3_head = make_head(m * e, pool_type="Identity")
        self.fusion_feat_head = make_head(4 * e) if fusion else None
        self.predictor1 = Predictor(e) if distillation else None
        self.predictor2 = Predictor(e) if distillation else None

        loss = {
            "names": ("CrossEntropyLoss", "TripletLoss"),
            "ce": {"eps": 0.1, "alpha": 0.2, "scale": 1.0},
            "tri": {"margin": 0.05, "norm_feat": False, "hard_mining": True, "scale": 1.0},
            "diversity": 1.0,
            "mass": 0.001,
            "distillation": 1.0,
            "bap": 1.0,
        }
        loss.update(loss_kwargs or {})
        self.loss_kwargs = loss

    @classmethod
    def from_config(cls, cfg):
        """The arguments of ``cfg`` (checked by :func:`mdpr.config.check_mdpr_config`); the trunk
        gets ``MODEL.BACKBONE.PRETRAIN_PATH`` strictly (:func:`load_trunk_weights`)."""
        m = cfg.MODEL.MDPR
        b = cfg.MODEL.BACKBONE
        trunk_cfg = cfg.clone()
        trunk_cfg.defrost()
        trunk_cfg.MODEL.BACKBONE.PRETRAIN = False  # loaded below, strictly
        backbone = build_backbone(trunk_cfg)
        if b.PRETRAIN:
            load_trunk_weights(backbone, b.PRETRAIN_PATH)
        h, losses = cfg.MODEL.HEADS, cfg.MODEL.LOSSES
        return {
            "backbone": backbone,
            "num_classes": h.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "embedding_dim": m.EMBEDDING_DIM,
            "num_stripes": m.NUM_STRIPES,
            "num_parts": m.NUM_PARTS,
            "guidance": m.GUIDANCE,
            "fusion": m.FUSION,
            "distillation": m.DISTILLATION,
            "diversity": m.DIVERSITY,
            "head_kwargs": {
                "pool_type": h.POOL_LAYER,
                "cls_type": h.CLS_LAYER,
                "scale": h.SCALE,
                "margin": h.MARGIN,
                "neck_feat": h.NECK_FEAT,
                "with_bnneck": h.WITH_BNNECK,
                "norm_type": h.NORM,
            },
            "loss_kwargs": {
                "names": tuple(losses.NAME),
                "ce": {
                    "eps": losses.CE.EPSILON,
                    "alpha": losses.CE.ALPHA,
                    "scale": losses.CE.SCALE,
                },
                "tri": {
                    "margin": losses.TRI.MARGIN,
                    "norm_feat": losses.TRI.NORM_FEAT,
                    "hard_mining": losses.TRI.HARD_MINING,
                    "scale": losses.TRI.SCALE,
                },
                "diversity": m.DIVERSITY_WEIGHT,
                "mass": m.MASS_WEIGHT,
                "distillation": m.DISTILLATION_WEIGHT,
                "bap": m.BAP_WEIGHT,
            },
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def feature_dim(self) -> int:
        """Length of the evaluation descriptor."""
        e = self.embedding_dim
        return (self.num_stripes + 3) * e + (4 * e if self.fusion is not None else 0)

    def preprocess_image(self, batched_inputs) -> torch.Tensor:
        """Normalised images (a new tensor; the caller's images are left as they are)."""
        if isinstance(batched_inputs, dict):
            images = batched_inputs["images"]
        elif isinstance(batched_inputs, torch.Tensor):
            images = batched_inputs
        else:
            raise TypeError(
                f"MDPR takes a dict with 'images' or an image tensor, got {type(batched_inputs)}"
            )
        images = images.to(self.device)
        return (images - self.pixel_mean) / self.pixel_std

    def _descriptor_heads(self, branches: Branches, fused: torch.Tensor | None):
        """(name, head, input map) of the heads whose BN-neck features form the descriptor."""
        heads = [("hard_global", self.hard_global_head, branches.hard_global)]
        heads += [
            (f"hard_part_{i}", head, part)
            for i, (head, part) in enumerate(zip(self.hard_part_head, branches.hard_parts))
        ]
        heads += [
            ("attn_feature4", self.attn_feature4_head, branches.attn_feature4),
            ("attn_feature3", self.attn_feature3_head, branches.attn_feature3),
        ]
        if fused is not None:
            heads.append(("fusion", self.fusion_feat_head, fused))
        return heads

    def forward(self, batched_inputs):
        """
        Args:
            batched_inputs: a dict with ``images`` (B, 3, H, W), 0-255, and in training
                ``targets`` (B,); or an image tensor (evaluation).

        Returns:
            Training: dict of loss terms. Evaluation: (B, D) descriptor.
        """
        images = self.preprocess_image(batched_inputs)
        attention = self.training or not self.skip_unused_in_eval
        branches = self.generate(images, attention=attention)
        fused = self.fusion(branches) if self.fusion is not None else None
        heads = self._descriptor_heads(branches, fused)
        if not self.training:
            return torch.cat([head(x) for _, head, x in heads], dim=1)
        if not isinstance(batched_inputs, dict) or "targets" not in batched_inputs:
            raise ValueError("MDPR needs identity labels ('targets') in training")
        targets = batched_inputs["targets"].to(self.device)
        return self.losses(branches, heads, targets)

    def losses(self, branches: Branches, heads, targets: torch.Tensor) -> dict:
        """The loss terms (see the class docstring); none of them synchronises the device."""
        k = self.loss_kwargs
        ce, tri = k["ce"], k["tri"]
        use_ce = "CrossEntropyLoss" in k["names"]
        use_tri = "TripletLoss" in k["names"]
        losses = {}
        outputs = {}
        for name, head, x in heads:
            out = outputs[name] = head(x, targets)
            if use_ce:
                losses[f"loss_{name}_cls"] = (
                    cross_entropy_loss(out["cls_outputs"], targets, ce["eps"], ce["alpha"])
                    * ce["scale"]
                )
            if use_tri:
                losses[f"loss_{name}_triplet"] = (
                    triplet_loss(
                        out["features"],
                        targets,
                        tri["margin"],
                        tri["norm_feat"],
                        tri["hard_mining"],
                    )
                    * tri["scale"]
                )
        for level, head, bap in (
            (4, self.attn_bap_feature4_head, branches.bap4),
            (3, self.attn_bap_feature3_head, branches.bap3),
        ):
            if use_ce:
                out = head(bap.feature[..., None, None], targets)
                losses[f"loss_attn_bap{level}_cls"] = (
                    cross_entropy_loss(out["cls_outputs"], targets, ce["eps"], ce["alpha"])
                    * ce["scale"]
                    * k["bap"]
                )
        if self.diversity:
            for level, bap, attention in (
                (4, branches.bap4, branches.attention4),
                (3, branches.bap3, branches.attention3),
            ):
                losses[f"loss_diversity_loss_{level}"] = (
                    attention_diversity_loss(bap.parts) * k["diversity"]
                )
                losses[f"loss_diversity_loss_reg_{level}"] = attention_mass_loss(
                    attention, k["mass"]
                )
        if self.distillation:
            z1 = outputs["hard_global"]["features"]
            z2 = outputs["attn_feature4"]["features"]
            losses["loss_mutual_distillation"] = (
                mutual_distillation_loss(self.predictor1(z1), z1, self.predictor2(z2), z2)
                * k["distillation"]
            )
        return losses

    @torch.no_grad()
    def attention_maps(self, batched_inputs) -> Branches:
        """All the maps of :class:`Generate`, attention included, in evaluation mode.

        For visualisation (``projects/MDPR/visualize_attention.py``); every submodule's mode is
        restored afterwards.
        """
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            return self.generate(self.preprocess_image(batched_inputs), attention=True)
        finally:
            for module, training in modes:
                module.training = training

    # Modules that only training (and the attention pictures) use: the descriptor never reads them.
    TRAINING_ONLY = ("attn_bap_feature4_head", "attn_bap_feature3_head", "predictor1", "predictor2")
    TRAINING_ONLY_GENERATE = (
        "attention_maker4",
        "up_attn_4_3",
        "attention_maker3",
        "attn_bap3",
        "attn_bap4",
    )

    def deployed_model(self) -> "MDPR":
        """The model ``--eval-only`` times and ``tools/export_onnx.py`` exports: this model in
        evaluation mode without its training-only modules (attention makers and guide, BAP, the
        BAP heads, the predictors), sharing its parameters.

        Its descriptor is this model's; its parameter count is what inference holds.
        """
        deployed = copy.copy(self)
        deployed._modules = dict(self._modules)
        generate = copy.copy(self.generate)
        generate._modules = dict(self.generate._modules)
        for name in self.TRAINING_ONLY_GENERATE:
            generate._modules[name] = None
        deployed._modules["generate"] = generate
        for name in self.TRAINING_ONLY:
            deployed._modules[name] = None
        deployed.skip_unused_in_eval = True
        return deployed.eval()
