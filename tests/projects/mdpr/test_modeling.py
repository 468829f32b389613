"""MDPR meta-architecture: official names, loss terms and switches, descriptor, no device syncs."""

import os

import pytest
import torch
import torch.nn.functional as F
from fastreid.layers import any_softmax
from fastreid.modeling import build_model
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.losses import cross_entropy_loss as fastreid_cross_entropy
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch.utils._python_dispatch import TorchDispatchMode

import mdpr
from kdreid.config import get_cfg
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError, WeightsError
from mdpr.layers import SyncFreeCircleSoftmax
from mdpr.losses import cross_entropy_loss
from mdpr.modeling import final_map_rows, load_trunk_weights

from ...conftest import REPO, set_keys

TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
DUKE = os.path.join(REPO, "configs", "MDPR", "DukeMTMC.yml")
TSV = os.path.join(
    REPO, "projects", "MDPR", "reference", "mdpr_official_dukemtmc_r101ibn_state_dict.tsv"
)

OFFICIAL_LOSSES = [
    f"loss_{head}_{kind}"
    for head in ("hard_global", "hard_part_0", "hard_part_1", "attn_feature4", "attn_feature3")
    for kind in ("cls", "triplet")
] + [
    "loss_fusion_cls",
    "loss_fusion_triplet",
    "loss_attn_bap4_cls",
    "loss_attn_bap3_cls",
    "loss_diversity_loss_4",
    "loss_diversity_loss_reg_4",
    "loss_diversity_loss_3",
    "loss_diversity_loss_reg_3",
    "loss_mutual_distillation",
]


def _cfg(config=TINY, **opts):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HEADS.NUM_CLASSES = 6
    cfg.MODEL.BACKBONE.PRETRAIN = False
    return set_keys(cfg, **opts)


def _model(seed=0, **opts):
    torch.manual_seed(seed)
    return build_model(_cfg(**opts))


def _batch(n=12, ids=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 64, 32, generator=g) * 255
    return {"images": images, "targets": torch.arange(ids).repeat_interleave(n // ids)}


def test_importing_the_package_registers_the_meta_architecture():
    assert META_ARCH_REGISTRY.get("MDPR") is mdpr.MDPR


@pytest.mark.slow
def test_duke_config_has_the_official_names_shapes_and_size():
    """configs/MDPR/DukeMTMC.yml builds exactly the official state dict (the reference file lists
    1385 keys and 163,854,519 parameters) and a 4608-d descriptor."""
    reference = {}
    with open(TSV) as f:
        for line in f:
            if not line.startswith("#"):
                key, shape = line.rstrip("\n").split("\t")
                reference[key] = shape
    cfg = _cfg(DUKE)
    cfg.MODEL.HEADS.NUM_CLASSES = 702
    model = build_model(cfg)
    ours = {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == 163_854_519
    assert model.feature_dim == 4608


def test_training_returns_the_nineteen_official_terms():
    model = _model().train()
    losses = model(_batch())
    assert list(losses) == OFFICIAL_LOSSES
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # Every parameter that the losses touch gets a gradient; the BN-neck biases are frozen.
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_loss_terms_are_the_documented_functions_of_the_heads():
    """Recompute every term from the model's own maps and heads with FastReID's CE and triplet and
    the documented MDPR terms; the dict must hold the same values."""
    from fastreid.modeling.losses import triplet_loss

    from mdpr.losses import (
        attention_diversity_loss,
        attention_mass_loss,
        mutual_distillation_loss,
    )

    model = _model().train()
    batch = _batch()
    targets = batch["targets"]
    torch.manual_seed(1)
    losses = model(batch)
    torch.manual_seed(1)  # same BN batch statistics: a second forward in training mode
    images = model.preprocess_image(batch)
    branches = model.generate(images)
    fused = model.fusion(branches)
    maps = {
        "hard_global": (model.hard_global_head, branches.hard_global),
        "hard_part_0": (model.hard_part_head[0], branches.hard_parts[0]),
        "hard_part_1": (model.hard_part_head[1], branches.hard_parts[1]),
        "attn_feature4": (model.attn_feature4_head, branches.attn_feature4),
        "attn_feature3": (model.attn_feature3_head, branches.attn_feature3),
        "fusion": (model.fusion_feat_head, fused),
    }
    outs = {}
    for name, (head, x) in maps.items():
        out = outs[name] = head(x, targets)
        ce = fastreid_cross_entropy(out["cls_outputs"], targets, 0.1, 0.2)
        tri = triplet_loss(out["features"], targets, 0.05, False, True)
        torch.testing.assert_close(losses[f"loss_{name}_cls"], ce)
        torch.testing.assert_close(losses[f"loss_{name}_triplet"], tri)
    for level, head, bap, attention in (
        (4, model.attn_bap_feature4_head, branches.bap4, branches.attention4),
        (3, model.attn_bap_feature3_head, branches.bap3, branches.attention3),
    ):
        out = head(bap.feature[..., None, None], targets)
        ce = fastreid_cross_entropy(out["cls_outputs"], targets, 0.1, 0.2)
        torch.testing.assert_close(losses[f"loss_attn_bap{level}_cls"], ce)
        torch.testing.assert_close(
            losses[f"loss_diversity_loss_{level}"], attention_diversity_loss(bap.parts)
        )
        torch.testing.assert_close(
            losses[f"loss_diversity_loss_reg_{level}"], attention_mass_loss(attention, 0.001)
        )
    z1, z2 = outs["hard_global"]["features"], outs["attn_feature4"]["features"]
    md = mutual_distillation_loss(model.predictor1(z1), z1, model.predictor2(z2), z2)
    torch.testing.assert_close(losses["loss_mutual_distillation"], md)


@pytest.mark.parametrize(
    "opts, absent, prefixes_absent, dim",
    [
        ({"MODEL.MDPR.FUSION": False}, ["loss_fusion_cls", "loss_fusion_triplet"],
         ["fusion.", "fusion_feat_head."], 5 * 64),
        ({"MODEL.MDPR.DISTILLATION": False}, ["loss_mutual_distillation"],
         ["predictor1.", "predictor2."], 9 * 64),
        ({"MODEL.MDPR.DIVERSITY": False},
         [n for n in OFFICIAL_LOSSES if "diversity" in n], [], 9 * 64),
        ({"MODEL.MDPR.GUIDANCE": False}, [], ["generate.up_attn_4_3."], 9 * 64),
    ],
)  # fmt: skip
def test_switches_are_one_config_line_each(opts, absent, prefixes_absent, dim):
    model = _model(**opts).train()
    losses = model(_batch())
    assert list(losses) == [n for n in OFFICIAL_LOSSES if n not in absent]
    keys = model.state_dict()
    for prefix in prefixes_absent:
        assert not any(k.startswith(prefix) for k in keys), prefix
    model.eval()
    assert model(_batch()["images"]).shape == (12, dim)
    if "MODEL.MDPR.GUIDANCE" in opts:
        assert model.generate.attention_maker3.conv.in_channels == 256  # level 3 alone


def test_loss_weights_scale_their_terms():
    batch = _batch()
    base = _model().train()
    torch.manual_seed(3)
    ref = base(batch)
    weighted = _model(
        **{
            "MODEL.MDPR.DIVERSITY_WEIGHT": 2.0,
            "MODEL.MDPR.MASS_WEIGHT": 0.01,
            "MODEL.MDPR.DISTILLATION_WEIGHT": 0.5,
            "MODEL.MDPR.BAP_WEIGHT": 3.0,
        }
    ).train()
    torch.manual_seed(3)
    got = weighted(batch)
    for name, factor in (
        ("loss_diversity_loss_4", 2.0),
        ("loss_diversity_loss_reg_3", 10.0),
        ("loss_mutual_distillation", 0.5),
        ("loss_attn_bap4_cls", 3.0),
        ("loss_hard_global_cls", 1.0),
    ):
        torch.testing.assert_close(got[name], ref[name] * factor)


def test_descriptor_is_the_official_concatenation_and_skips_attention():
    """Eval: [hard_global, hard_part_0, hard_part_1, attn4, attn3, fusion] BN-neck features; the
    attention makers are not run, and computing them would not change a single value."""
    model = _model().eval()
    images = _batch()["images"]
    calls = []
    model.generate.attention_maker4.register_forward_hook(lambda *a: calls.append(4))
    model.generate.attn_bap3.register_forward_hook(lambda *a: calls.append(3))
    with torch.no_grad():
        desc = model(images)
        assert calls == []
        branches = model.generate(model.preprocess_image(images), attention=False)
        fused = model.fusion(branches)
        parts = [
            model.hard_global_head(branches.hard_global),
            *(h(p) for h, p in zip(model.hard_part_head, branches.hard_parts)),
            model.attn_feature4_head(branches.attn_feature4),
            model.attn_feature3_head(branches.attn_feature3),
            model.fusion_feat_head(fused),
        ]
        assert [p.shape[1] for p in parts] == [64, 64, 64, 64, 64, 256]
        torch.testing.assert_close(desc, torch.cat(parts, dim=1), rtol=0, atol=0)
        model.skip_unused_in_eval = False
        full = model(images)
        assert calls == [4, 3]
    torch.testing.assert_close(full, desc, rtol=0, atol=0)


def test_training_without_labels_is_a_clear_error():
    model = _model().train()
    with pytest.raises(ValueError, match="targets"):
        model(_batch()["images"])


def test_attention_maps_restore_every_modules_mode():
    model = _model().train()
    model.generate.backbone.eval()  # e.g. held frozen by a hook
    branches = model.attention_maps(_batch()["images"][:2])
    assert branches.attention4.shape == (2, 2, 4, 2) and branches.bap3 is not None
    assert model.training and not model.generate.backbone.training
    assert model.generate.backbone_part.training


def test_deployed_model_leaves_training_only_modules_out():
    """Same descriptor, fewer parameters (attention, BAP, BAP heads, predictors left out), shared
    weights, and the training model keeps everything."""
    model = _model().eval()
    deployed = model.deployed_model()
    keys = set(deployed.state_dict())
    left_out = set(model.state_dict()) - keys
    assert keys < set(model.state_dict())
    prefixes = {k.split(".")[0] if not k.startswith("generate.") else ".".join(k.split(".")[:2])
                for k in left_out}  # fmt: skip
    assert prefixes == {
        "attn_bap_feature4_head", "attn_bap_feature3_head", "predictor1", "predictor2",
        "generate.attention_maker4", "generate.up_attn_4_3", "generate.attention_maker3",
        "generate.attn_bap3", "generate.attn_bap4",
    }  # fmt: skip
    images = _batch()["images"]
    with torch.no_grad():
        torch.testing.assert_close(deployed(images), model(images), rtol=0, atol=0)
    assert deployed.generate.backbone[0].weight is model.generate.backbone[0].weight
    assert model.generate.attention_maker4 is not None
    model.train()
    assert len(model(_batch())) == 19


def test_batch_of_one_in_evaluation_and_images_untouched():
    model = _model().eval()
    images = _batch()["images"]
    before = images.clone()
    with torch.no_grad():
        desc = model(images)
        one = model(images[:1])
    assert torch.equal(images, before)  # the official code normalises the caller's images in place
    torch.testing.assert_close(one, desc[:1], rtol=1e-4, atol=1e-4)


class _SyncRecorder(TorchDispatchMode):
    """Records the aten ops that need the host to wait for the device."""

    SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_")

    def __init__(self):
        super().__init__()
        self.syncs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        if any(s in name for s in self.SYNCING):
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def test_a_training_step_never_synchronises_the_device():
    """Forward, the 19 terms and backward issue no op that waits for the device (``.item()``,
    ``nonzero``, boolean indexing...). The recorder does see FastReID's own CircleSoftmax and
    cross-entropy, which sync: so the check can fail."""
    model = _model().train()
    batch = _batch()
    with _SyncRecorder() as rec:
        losses = model(batch)
        sum(losses.values()).backward()
    assert rec.syncs == []
    logits = torch.randn(4, 6)
    targets = torch.arange(4)
    with _SyncRecorder() as rec:
        out = any_softmax.CircleSoftmax(6, 64, 0.35)(logits.clone(), targets)
        fastreid_cross_entropy(out, targets, 0.1)
    assert "nonzero.default" in rec.syncs


def test_sync_free_circle_softmax_equals_fastreids():
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(9, 7, generator=g) * 2 - 1
    targets = torch.tensor([0, 3, 6, -1, 2, 2, -1, 5, 1])
    ref_in = logits.clone().requires_grad_()
    ours_in = logits.clone().requires_grad_()
    ref = any_softmax.CircleSoftmax(7, 64, 0.35)(ref_in.clone(), targets)
    ours = SyncFreeCircleSoftmax(7, 64, 0.35)(ours_in, targets)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    w = torch.randn(9, 7, generator=g)
    (ref * w).sum().backward()
    (ours * w).sum().backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad)
    assert torch.equal(ours_in.detach(), logits)  # input left untouched


@pytest.mark.parametrize("eps", [0.1, 0.0, -1.0])
def test_sync_free_cross_entropy_equals_fastreids(eps):
    """Including a sample whose loss is exactly 0 (eps 0 and a saturated logit): FastReID divides
    by the count of non-zero per-sample losses, so the mean is over 3 samples, not 4."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=g)
    logits[2] = torch.tensor([0.0, 0.0, 1e4, 0.0, 0.0])
    targets = torch.tensor([1, 4, 2, 0])
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ref = fastreid_cross_entropy(a, targets, eps, 0.2)
    ours = cross_entropy_loss(b, targets, eps, 0.2)
    torch.testing.assert_close(ours, ref)
    ref.backward()
    ours.backward()
    torch.testing.assert_close(b.grad, a.grad)
    if eps == 0.0:
        per_sample = -F.log_softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
        assert per_sample[2] == 0
        torch.testing.assert_close(ours, per_sample.sum() / 3)


@pytest.mark.parametrize(
    "height, last_stride, rows",
    [(384, 1, 24), (384, 2, 12), (64, 1, 4), (256, 1, 16), (65, 1, 4), (70, 1, 5)],
)
def test_final_map_rows_matches_the_trunk(height, last_stride, rows):
    cfg = _cfg(**{"MODEL.BACKBONE.LAST_STRIDE": last_stride})
    trunk = build_backbone(cfg).eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, 3, height, 16))
    assert out.shape[2] == rows == final_map_rows(height, last_stride)


@pytest.mark.parametrize(
    "opts, message",
    [
        ({"MODEL.MDPR.NUM_STRIPES": 0}, "MODEL.MDPR.NUM_STRIPES must be at least 1"),
        ({"MODEL.MDPR.NUM_STRIPES": 5}, "more than the 4 rows"),
        ({"MODEL.MDPR.NUM_PARTS": 0}, "MODEL.MDPR.NUM_PARTS must be at least 1"),
        ({"MODEL.MDPR.MASS_WEIGHT": -1.0}, "MODEL.MDPR.MASS_WEIGHT must be >= 0"),
        ({"MODEL.BACKBONE.LAST_STRIDE": 2}, "LAST_STRIDE 1"),
        ({"MODEL.BACKBONE.WITH_NL": True, "MODEL.BACKBONE.DEPTH": "50x",
          "MODEL.BACKBONE.FEAT_DIM": 2048}, "WITH_NL False"),
        ({"MODEL.BACKBONE.NAME": "build_mobilenetv2_backbone"}, "build_resnet_backbone"),
    ],
)  # fmt: skip
def test_config_values_that_make_no_sense(opts, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_cfg(**opts))


def test_a_trunk_that_ran_once_is_accepted_and_fusion_checks_sizes():
    """FastReID's ResNet rewrites its empty non-local index lists on its first forward; that is
    not a non-local block. A trunk with last stride 2 built directly fails in fusion, clearly."""
    from mdpr.modeling import MDPR

    cfg = _cfg(**{"MODEL.BACKBONE.LAST_STRIDE": 2})
    trunk = build_backbone(cfg)
    trunk(torch.zeros(1, 3, 64, 32))
    model = MDPR(backbone=trunk, num_classes=6, pixel_mean=[0] * 3, pixel_std=[1] * 3).eval()
    with pytest.raises(ValueError, match="last stride 1"):
        model(torch.zeros(1, 3, 64, 32))


def test_images_too_short_for_the_stripes_are_a_clear_error():
    model = _model(**{"MODEL.MDPR.NUM_STRIPES": 4}).eval()
    with pytest.raises(ValueError, match="NUM_STRIPES 4 is more than the 2 rows"):
        model(torch.rand(1, 3, 32, 32) * 255)


@pytest.mark.parametrize(
    "height, num_stripes, rows",
    [(112, 3, [(0, 3), (3, 5), (5, 7)]), (80, 2, [(0, 3), (3, 5)])],
)
def test_stripes_that_do_not_divide_the_map_take_the_documented_rows(height, num_stripes, rows):
    """A real forward where P does not divide the H rows of the final map, stripe by stripe.

    ``Generate.stripes`` is documented as ``torch.tensor_split`` (so is
    ``mdpr.visualize.stripe_rows``): every stripe gets ``H // P`` rows and the first ``H % P``
    stripes one more, top first, so that the stripes tile the map without gap or overlap.

    - 112-pixel input, last stride 1: 112 -> conv1 56 -> max-pool 28 -> layer2 14 -> layer3 7
      rows (``final_map_rows``); 7 = 3 * 2 + 1 with P = 3: rows [0, 3), [3, 5), [5, 7), heights
      3, 2, 2. (``torch.chunk`` would give 3, 3, 1; floor-sized stripes 2, 2, 2 and lose row 6;
      the remainder at the bottom 2, 2, 3.)
    - 80-pixel input: 40 -> 20 -> 10 -> 5 rows; 5 = 2 * 2 + 1 with P = 2: rows [0, 3), [3, 5).

    Compared: each stripe map ``hard_parts[i]`` (the output of stripe ``i``'s embedding in the
    forward, captured with a hook) against that embedding applied by hand to the explicit row
    slice ``[top, end)`` of the hard branch's final map (captured too); and each stripe's slice of
    the evaluation descriptor against stripe ``i``'s head on that reference. The embedding is a
    1x1 convolution and BN in evaluation mode, pixel by pixel, so embedding the slice is embedding
    the stripe; GeM pooling in the head makes every row count, so a stripe holding other rows
    gives another descriptor.
    """
    model = _model(**{"MODEL.MDPR.NUM_STRIPES": num_stripes}).eval()
    assert final_map_rows(height, 1) == rows[-1][1]
    images = torch.rand(2, 3, height, 32, generator=torch.Generator().manual_seed(3)) * 255
    final_maps, parts = [], []
    hooks = [model.generate.backbone_part.register_forward_hook(lambda *a: final_maps.append(a[2]))]
    hooks += [
        embed.register_forward_hook(lambda *a: parts.append(a[2]))
        for embed in model.generate.embedding_hard_part
    ]
    with torch.no_grad():
        descriptor = model(images)
    for hook in hooks:
        hook.remove()
    (final_map,) = final_maps
    assert final_map.shape[2] == rows[-1][1]
    assert [part.shape[2] for part in parts] == [end - top for top, end in rows]
    e = model.embedding_dim
    for i, (top, end) in enumerate(rows):
        with torch.no_grad():
            expected = model.generate.embedding_hard_part[i](final_map[:, :, top:end])
            head = model.hard_part_head[i](expected)
        torch.testing.assert_close(parts[i], expected, msg=f"stripe {i}")
        torch.testing.assert_close(
            descriptor[:, (1 + i) * e : (2 + i) * e], head, msg=f"descriptor of stripe {i}"
        )


def test_trunk_weights_are_loaded_strictly(tmp_path):
    """ImageNet-style trunk weights fill the trunk (both branch copies start from them); a file
    without the IBN layers the config asks for is an error naming them, not a log line."""
    cfg = _cfg()
    torch.manual_seed(5)
    donor = build_backbone(cfg)
    state = donor.state_dict()
    state["fc.weight"] = torch.zeros(10, 512)  # an ImageNet classifier: unused, allowed
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = _model(**{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": str(path)})
    torch.testing.assert_close(model.generate.backbone[0].weight, state["conv1.weight"])
    for branch in (model.generate.backbone_part, model.generate.backbone_attn):
        torch.testing.assert_close(branch[1][0].conv1.weight, state["layer4.0.conv1.weight"])
    with pytest.raises(WeightsError, match=r"(?s)bn1\.IN\.weight.*WITH_IBN"):
        _model(
            **{
                "MODEL.BACKBONE.PRETRAIN": True,
                "MODEL.BACKBONE.PRETRAIN_PATH": str(path),
                "MODEL.BACKBONE.WITH_IBN": True,
            }
        )
    old_file = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old_file, path)  # saved before BatchNorm counted batches: still a full trunk
    model = _model(**{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": str(path)})
    torch.testing.assert_close(model.generate.backbone[0].weight, state["conv1.weight"])
    trunk = build_backbone(_cfg())
    with pytest.raises(WeightsError, match="does not exist"):
        load_trunk_weights(trunk, str(tmp_path / "missing.pth"))
