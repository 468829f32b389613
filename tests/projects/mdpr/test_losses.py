"""MDPR losses: hand-derived values, loop references on random inputs, gradients, errors."""

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from mdpr.losses import (
    attention_diversity_loss,
    attention_mass_loss,
    mutual_distillation_loss,
    normalise_attention,
)


def _cos(a, b):
    return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))


def _diversity_reference(parts):
    """The official definition, element by element: ``(1/B) sum_b sum_{i<j} cos(v_bi, v_bj)``."""
    batch, m, _ = parts.shape
    total = 0.0
    for b in range(batch):
        for i, j in itertools.combinations(range(m), 2):
            total += _cos(parts[b, i], parts[b, j])
    return total / batch


def _mutual_reference(p1, z1, p2, z2):
    """``-(1/2) [(1/B) sum_b cos(p1_b, z2_b) + (1/B) sum_b cos(p2_b, z1_b)]``, sample by sample."""
    batch = len(p1)
    sim1 = sum(_cos(p1[b], z2[b]) for b in range(batch)) / batch
    sim2 = sum(_cos(p2[b], z1[b]) for b in range(batch)) / batch
    return -(sim1 + sim2) / 2


# ----------------------------------------------------------------------------- diversity


def test_diversity_of_orthogonal_parts_is_zero():
    """Parts (1, 0) and (0, 1): one pair, cos = 0, one sample, so the loss is 0."""
    parts = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert attention_diversity_loss(parts).item() == pytest.approx(0.0, abs=1e-7)


def test_diversity_of_identical_parts_is_one_per_pair():
    """Two identical parts: one pair, cos = 1, so 1. Three identical parts: pairs (0,1), (0,2),
    (1,2), each cos = 1, so 3. The norm does not matter: (2, 0) and (3, 0) have cos 1 too."""
    two = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    three = torch.tensor([[[1.0, 2.0, 3.0]] * 3])
    scaled = torch.tensor([[[2.0, 0.0], [3.0, 0.0]]])
    assert attention_diversity_loss(two).item() == pytest.approx(1.0, abs=1e-6)
    assert attention_diversity_loss(three).item() == pytest.approx(3.0, abs=1e-6)
    assert attention_diversity_loss(scaled).item() == pytest.approx(1.0, abs=1e-6)


def test_diversity_is_averaged_over_the_batch_and_signed():
    """Sample 0: orthogonal parts, 0. Sample 1: identical parts, 1. Sample 2: opposite parts,
    cos = -1. Mean over the batch: (0 + 1 - 1) / 3 = 0; without sample 2: (0 + 1) / 2 = 1/2."""
    parts = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[1.0, 1.0], [1.0, 1.0]],
            [[1.0, 1.0], [-1.0, -1.0]],
        ]
    )
    assert attention_diversity_loss(parts).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_diversity_loss(parts[:2]).item() == pytest.approx(0.5, abs=1e-6)
    assert attention_diversity_loss(parts[2:]).item() == pytest.approx(-1.0, abs=1e-6)


def test_diversity_of_one_part_is_zero():
    """M = 1 has no pair i < j, so the sum is empty: 0 for any vectors."""
    parts = torch.randn(4, 1, 5)
    assert attention_diversity_loss(parts).item() == 0.0


@pytest.mark.parametrize("batch", [5, 1])
def test_diversity_matches_loop_reference(batch):
    """Random (B, 3, 7) part vectors, B = 5 and B = 1 (the official ``.squeeze()`` breaks on 1)."""
    torch.manual_seed(batch)
    parts = torch.randn(batch, 3, 7, dtype=torch.float64)
    loss = attention_diversity_loss(parts)
    assert loss.shape == ()
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(_diversity_reference(parts), abs=1e-10)


def test_diversity_gradient_reaches_parts_and_input_is_untouched():
    """The gradient of a sum of cosines is finite and nonzero for random parts; the caller's
    tensor is neither modified nor replaced (the official code mutates its input list)."""
    torch.manual_seed(0)
    parts = torch.randn(5, 3, 7, requires_grad=True)
    before = parts.detach().clone()
    attention_diversity_loss(parts).backward()
    assert parts.grad is not None
    assert torch.isfinite(parts.grad).all()
    assert parts.grad.abs().sum() > 0
    assert torch.equal(parts.detach(), before)


def test_diversity_gradient_matches_loop_reference():
    """Autograd through the matmul form equals autograd through ``F.cosine_similarity`` pairs."""
    torch.manual_seed(1)
    parts = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    attention_diversity_loss(parts).backward()
    fast = parts.grad.clone()
    parts.grad = None
    slow = sum(
        F.cosine_similarity(parts[:, i], parts[:, j], dim=1).mean()
        for i, j in itertools.combinations(range(3), 2)
    )
    slow.backward()
    torch.testing.assert_close(fast, parts.grad)


# ----------------------------------------------------------------------------- mass


def test_mass_loss_hand_value():
    """All-ones maps of shape (2, 3, 4, 5): sum = 2*3*4*5 = 120, /B = 60, * 1e-3 = 0.06.
    With weight 1 it is 60; a batch of one, (1, 3, 4, 5) halves of 0.5: 30 entries * 0.5 = 15."""
    ones = torch.ones(2, 3, 4, 5)
    assert attention_mass_loss(ones).item() == pytest.approx(0.06, rel=1e-6)
    assert attention_mass_loss(ones, weight=1.0).item() == pytest.approx(60.0, rel=1e-6)
    half = torch.full((1, 3, 2, 5), 0.5)
    assert attention_mass_loss(half, weight=1.0).item() == pytest.approx(15.0, rel=1e-6)


def test_mass_loss_matches_loop_reference_and_has_gradient():
    """``weight / B`` times the sum of every entry, the gradient being ``weight / B`` everywhere."""
    torch.manual_seed(2)
    attention = torch.rand(5, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    loss = attention_mass_loss(attention, weight=1e-3)
    reference = sum(float(a.sum()) for a in attention.detach()) / 5 * 1e-3
    assert loss.item() == pytest.approx(reference, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(attention.grad, torch.full_like(attention, 1e-3 / 5))


# ----------------------------------------------------------------------------- normalisation


def test_normalise_attention_with_background_sums_to_one():
    """The M kept maps plus the dropped background channel are a softmax, so they sum to 1 at
    every position; the kept maps equal the first M channels of that softmax."""
    torch.manual_seed(3)
    raw = torch.randn(5, 3, 6, 4, dtype=torch.float64)
    attention = normalise_attention(raw)
    assert attention.shape == (5, 2, 6, 4)
    exp = raw.exp()
    background = exp[:, -1] / exp.sum(dim=1)
    torch.testing.assert_close(attention.sum(dim=1) + background, torch.ones(5, 6, 4).double())
    torch.testing.assert_close(attention, (exp / exp.sum(dim=1, keepdim=True))[:, :2])
    assert (attention > 0).all() and (attention < 1).all()


def test_normalise_attention_hand_value_and_input_untouched():
    """Equal logits over M + 1 = 3 channels: every map is 1/3. Logits (0, 0, log 2): the
    background gets 2/4, each part 1/4. The input is not modified."""
    raw = torch.zeros(1, 3, 2, 2)
    before = raw.clone()
    torch.testing.assert_close(normalise_attention(raw), torch.full((1, 2, 2, 2), 1 / 3))
    assert torch.equal(raw, before)
    raw = torch.tensor([0.0, 0.0, math.log(2.0)]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalise_attention(raw), torch.full((1, 2, 1, 1), 0.25))


# ----------------------------------------------------------------------------- mutual distillation


def test_mutual_distillation_is_minus_one_when_predictions_equal_targets():
    """p1 = z2 and p2 = z1: every cosine is 1, so -(1 + 1) / 2 = -1."""
    torch.manual_seed(4)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    loss = mutual_distillation_loss(z2.clone(), z1, z1.clone(), z2)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)


def test_mutual_distillation_hand_value():
    """p1 = (1, 0) against z2 = (0, 1): cos 0. p2 = (1, 1) against z1 = (2, 2): cos 1.
    Loss: -(0 + 1) / 2 = -1/2."""
    p1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    p2, z1 = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])
    loss = mutual_distillation_loss(p1, z1, p2, z2)
    assert loss.item() == pytest.approx(-0.5, abs=1e-6)


def test_mutual_distillation_matches_loop_reference():
    torch.manual_seed(5)
    p1, z1, p2, z2 = torch.randn(4, 5, 7, dtype=torch.float64).unbind(0)
    loss = mutual_distillation_loss(p1, z1, p2, z2)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_mutual_reference(p1, z1, p2, z2), abs=1e-10)


@pytest.mark.parametrize("batch", [5, 1])
def test_mutual_distillation_stops_gradient_at_targets(batch):
    """The z's are stop-gradient targets: with every input a leaf requiring grad, after backward
    the p's have a nonzero gradient and the z's have none at all."""
    torch.manual_seed(6)
    p1, z1, p2, z2 = (torch.randn(batch, 8, requires_grad=True) for _ in range(4))
    mutual_distillation_loss(p1, z1, p2, z2).backward()
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert p2.grad is not None and p2.grad.abs().sum() > 0
    assert z1.grad is None
    assert z2.grad is None


def test_mutual_distillation_gradient_reaches_features_through_predictors_only():
    """With ``p1 = pred1(z1)`` (the official wiring), z1 still learns through its own predictor:
    the stop-gradient cuts only the target path, not the prediction path."""
    torch.manual_seed(7)
    pred1, pred2 = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    z1, z2 = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True)
    mutual_distillation_loss(pred1(z1), z1, pred2(z2), z2).backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    assert pred1.weight.grad is not None and pred2.weight.grad is not None


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "shape"),
    [
        (lambda t: attention_diversity_loss(t), (2, 3)),
        (lambda t: attention_diversity_loss(t), (2, 3, 4, 5)),
        (lambda t: attention_mass_loss(t), (2, 3, 4)),
        (lambda t: normalise_attention(t), (2, 3, 4)),
        (lambda t: normalise_attention(t), (2, 1, 4, 4)),
        (lambda t: mutual_distillation_loss(t, t, t, t), (2, 3, 4)),
        (lambda t: mutual_distillation_loss(t, t, t, t), (6,)),
    ],
)
def test_wrong_shapes_raise_naming_the_shape(call, shape):
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        call(torch.zeros(shape))


def test_mutual_distillation_mismatched_shapes_raise():
    a, b = torch.zeros(2, 4), torch.zeros(3, 4)
    with pytest.raises(ValueError, match=re.escape("(3, 4)")):
        mutual_distillation_loss(a, a, a, b)
