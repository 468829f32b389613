"""MDPR building blocks: shapes on tiny inputs, slow references, official state-dict keys."""

import os

import pytest
import torch
import torch.nn.functional as F

from mdpr.layers import (
    CBR,
    AttentionGuide,
    AttentionMaker,
    BAPOutput,
    BilinearAttentionPooling,
    Embedding,
    Predictor,
)

from ...conftest import REPO

TSV = os.path.join(
    REPO, "projects", "MDPR", "reference", "mdpr_official_dukemtmc_r101ibn_state_dict.tsv"
)

E, M = 512, 2  # official EMBEDDING_DIM and ATTN_NUM (DukeMTMC config)


def _official() -> dict[str, tuple[int, ...]]:
    """The reference state dict as ``{key: shape}``."""
    shapes = {}
    with open(TSV) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            key, shape = line.split("\t")
            shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return shapes


@pytest.fixture(scope="module")
def official():
    return _official()


def _under(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) + 1 :]: v for k, v in shapes.items() if k.startswith(prefix + ".")}


def _ours(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_reference_parses(official):
    assert len(official) == 1385  # as the TSV's header says
    assert official["generate.attn_bap4.pool.p"] == (1,)
    assert official["fusion.merge.2.num_batches_tracked"] == ()


@pytest.mark.parametrize(
    "prefix, build",
    [
        ("generate.embedding_hard_global", lambda: Embedding(2048, E)),
        ("generate.embedding_hard_part.0", lambda: Embedding(2048, E)),
        ("generate.embedding_attn_feature4", lambda: Embedding(2048, E)),
        ("generate.em3_1024", lambda: Embedding(1024, 1024)),
        ("generate.embedding_attn_feature3", lambda: Embedding(1024, E)),
        ("generate.attention_maker4", lambda: AttentionMaker(2048, M + 1)),
        ("generate.attention_maker3", lambda: AttentionMaker(1024 + M + 1, M + 1)),
        ("generate.up_attn_4_3", lambda: AttentionGuide(M + 1)),
        ("generate.attn_bap4", lambda: BilinearAttentionPooling(2048, E, M)),
        ("generate.attn_bap3", lambda: BilinearAttentionPooling(1024, E, M)),
        ("fusion.merge", lambda: CBR(E, E)),
        ("fusion.output_part", lambda: CBR(2 * E, 2 * E)),
        ("fusion.output_attn", lambda: CBR(2 * E, 2 * E)),
        ("fusion.output", lambda: CBR(4 * E, 4 * E)),
        ("predictor1", lambda: Predictor(E)),
        ("predictor2", lambda: Predictor(E)),
    ],
)
def test_official_keys_and_shapes(official, prefix, build):
    expected = _under(official, prefix)
    assert expected, f"no official key under {prefix}"
    assert _ours(build()) == expected


def test_cbr_sizes_match_reference(official):
    """The fusion CBRs' sizes as read from the TSV are E→E, 2E→2E, 2E→2E, 4E→4E."""
    for name, channels in [("merge", E), ("output_part", 2 * E), ("output_attn", 2 * E)]:
        assert official[f"fusion.{name}.0.weight"] == (channels, channels, 1, 1)
    assert official["fusion.output.0.weight"] == (4 * E, 4 * E, 1, 1)


def test_embedding_shape_init_and_relu():
    torch.manual_seed(0)
    block = Embedding(6, 4)
    assert torch.all(block.bn.weight == 1) and torch.all(block.bn.bias == 0)
    # Kaiming fan_out: std = sqrt(2 / (out * 1 * 1)); loose check on a larger layer.
    big = Embedding(64, 256)
    assert big.embedding.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.1)
    out = block(torch.randn(2, 6, 5, 3))
    assert out.shape == (2, 4, 5, 3)
    assert (out >= 0).all()


def test_attention_maker_matches_definition():
    torch.manual_seed(0)
    maker = AttentionMaker(5, 3).eval()
    x = torch.randn(2, 5, 6, 4)
    expected = F.relu(maker.bn(maker.conv(x) + maker.conv3(x)))
    out = maker(x)
    assert out.shape == (2, 3, 6, 4)
    torch.testing.assert_close(out, expected)


def test_attention_guide_upsamples_with_align_corners():
    torch.manual_seed(0)
    guide = AttentionGuide(3)
    with torch.no_grad():
        guide.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    small = torch.rand(2, 3, 2, 2)
    out = guide(small, (3, 3))
    assert out.shape == (2, 3, 3, 3)
    # align_corners=True keeps the corners and puts the mean of the four at the centre.
    torch.testing.assert_close(out[..., 0, 0], small[..., 0, 0])
    torch.testing.assert_close(out[..., 2, 2], small[..., 1, 1])
    torch.testing.assert_close(out[..., 1, 1], small.mean(dim=(2, 3)))
    # Same size: the upsampling is the identity.
    torch.testing.assert_close(guide(small, (2, 2)), small)


def test_attention_guide_relu():
    guide = AttentionGuide(2)
    with torch.no_grad():
        guide.conv.weight.copy_(-torch.eye(2).view(2, 2, 1, 1))
    out = guide(torch.rand(1, 2, 3, 3), (4, 4))
    assert torch.all(out == 0)


def test_bap_equals_explicit_per_part_computation():
    torch.manual_seed(0)
    bap = BilinearAttentionPooling(6, 4, 3).eval()
    with torch.no_grad():
        bap.pool.p.fill_(2.5)
    feat = torch.randn(2, 6, 5, 3)
    attention = torch.rand(2, 3, 5, 3)
    out = bap(feat, attention)
    assert isinstance(out, BAPOutput)
    assert out.feature.shape == (2, 12)
    assert out.parts.shape == (2, 3, 4)
    vectors = []
    for i in range(3):
        e = bap.embedding_layer[i](feat * attention[:, i].unsqueeze(1))  # (B, E, H, W)
        gem = e.clamp(min=1e-6).pow(2.5).mean(dim=(2, 3)).pow(1 / 2.5)  # (B, E)
        vectors.append(gem)
    torch.testing.assert_close(out.parts, torch.stack(vectors, dim=1))
    torch.testing.assert_close(out.feature, F.relu(torch.cat(vectors, dim=1)))


def test_bap_gem_is_learnable_and_initialised_to_three():
    bap = BilinearAttentionPooling(4, 2, 2)
    assert bap.pool.p.requires_grad
    torch.testing.assert_close(bap.pool.p.detach(), torch.tensor([3.0]))
    out = bap(torch.randn(2, 4, 3, 3), torch.rand(2, 2, 3, 3))
    out.feature.sum().backward()
    assert bap.pool.p.grad is not None


def test_bap_rejects_wrong_number_of_maps():
    bap = BilinearAttentionPooling(4, 2, 2)
    with pytest.raises(ValueError, match="expected 2 attention maps"):
        bap(torch.randn(1, 4, 3, 3), torch.rand(1, 3, 3, 3))


def test_cbr_and_predictor_shapes():
    torch.manual_seed(0)
    cbr = CBR(6, 4)
    out = cbr(torch.randn(2, 6, 5, 3))
    assert out.shape == (2, 4, 5, 3)
    assert (out >= 0).all()
    pred = Predictor(8)
    assert pred(torch.randn(3, 8)).shape == (3, 8)
