"""FD-style factorization losses: hand-derived values, loop references, stop-gradient, bad input."""

import math

import pytest
import torch

from factorized_kd import feature_factorization_loss, map_factorization_loss


def test_feature_loss_by_hand():
    """Two teachers, two samples.

    Teacher 1: factor rows (1, 0), (0, 1) against (1, 0), (1, 0): cosines 1 and 0, so
    1 - cos = 0 and 1, mean 0.5. Teacher 2: (1, 0, 0), (3, 0, 0) against (-2, 0, 0), (0, 0, 5):
    cosines -1 and 0 (norms do not matter), so 2 and 1, mean 1.5. Summed over teachers: 2.0.
    """
    factors = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0, 0], [3.0, 0, 0]])]
    targets = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[-2.0, 0, 0], [0, 0, 5.0]])]
    torch.testing.assert_close(feature_factorization_loss(factors, targets), torch.tensor(2.0))
    # One teacher alone: its own mean, not divided by K.
    torch.testing.assert_close(
        feature_factorization_loss(factors[1:], targets[1:]), torch.tensor(1.5)
    )


def test_feature_loss_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    factors = [torch.randn(5, d, generator=g) for d in (3, 7)]
    targets = [torch.randn(5, d, generator=g) for d in (3, 7)]
    expected = 0.0
    for f, t in zip(factors, targets):
        per_sample = []
        for i in range(5):
            dot = sum(float(a) * float(b) for a, b in zip(f[i], t[i]))
            norms = math.sqrt(float((f[i] ** 2).sum())) * math.sqrt(float((t[i] ** 2).sum()))
            per_sample.append(1 - dot / norms)
        expected += sum(per_sample) / 5
    loss = feature_factorization_loss(factors, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_feature_loss_stops_the_gradient_at_the_teachers():
    """The target gets no gradient; a factor parallel to its target has a zero gradient (minimum);
    a target of another dtype is cast to the factor's."""
    factor = torch.tensor([[2.0, 0.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = feature_factorization_loss([factor], [target])
    assert loss.dtype == torch.float32
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(factor.grad[0], torch.zeros(2))
    assert factor.grad[1].abs().sum() > 0


def test_feature_loss_bad_input():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="got 0 factor"):
        feature_factorization_loss([], [])
    with pytest.raises(ValueError, match="got 2 factor\\(s\\) and 1 target"):
        feature_factorization_loss([x, x], [x])
    with pytest.raises(ValueError, match=r"factor 1 and target 1 .* \(4, 3\) and \(4, 5\)"):
        feature_factorization_loss([x, x], [x, torch.zeros(4, 5)])
    with pytest.raises(ValueError, match=r"\(N, D_k\), got \(4, 3, 1\)"):
        feature_factorization_loss([x[..., None]], [x[..., None]])


def _position_map(vectors):
    """An ``(N, C, h, w)`` map from ``vectors[n][y][x]``, each a list of C channel values."""
    return torch.tensor(vectors, dtype=torch.float32).permute(0, 3, 1, 2)


def test_map_loss_by_hand():
    """Two samples, one row, two positions, two channels; ``||n(a) - n(t)||^2 = 2 - 2 cos``.

    Sample 1: (1, 0) vs (0, 3): orthogonal, 2; (0, 2) vs (0, 5): same direction, 0.
    Sample 2: (1, 0) vs (-1, 0) and (4, 0) vs (-2, 0): opposite, 4 and 4.
    Mean over the 2 x 1 x 2 (sample, position) pairs: (2 + 0 + 4 + 4) / 4 = 2.5.
    """
    adapted = _position_map([[[[1, 0], [0, 2]]], [[[1, 0], [4, 0]]]])
    target = _position_map([[[[0, 3], [0, 5]]], [[[-1, 0], [-2, 0]]]])
    assert adapted.shape == (2, 2, 1, 2)
    torch.testing.assert_close(map_factorization_loss(adapted, target), torch.tensor(2.5))
    torch.testing.assert_close(map_factorization_loss(adapted[:1], target[:1]), torch.tensor(1.0))


def test_map_loss_matches_a_loop_and_ignores_norms():
    g = torch.Generator().manual_seed(1)
    adapted, target = torch.randn(3, 5, 4, 2, generator=g), torch.randn(3, 5, 4, 2, generator=g)
    total = 0.0
    for i in range(3):
        for y in range(4):
            for x in range(2):
                a, t = adapted[i, :, y, x], target[i, :, y, x]
                total += float(((a / a.norm() - t / t.norm()) ** 2).sum())
    loss = map_factorization_loss(adapted, target)
    assert loss.item() == pytest.approx(total / (3 * 4 * 2), rel=1e-5)
    scale = torch.rand(3, 1, 4, 2, generator=g) + 0.1  # a positive factor per position
    torch.testing.assert_close(map_factorization_loss(adapted * scale, target / scale), loss)


def test_map_loss_stops_the_gradient_at_the_teacher():
    adapted = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.randn(2, 3, 2, 2, requires_grad=True)
    map_factorization_loss(adapted, target).backward()
    assert target.grad is None
    assert adapted.grad.abs().sum() > 0
    # At the minimum (same directions) the gradient vanishes.
    same = (target.detach() * 3).requires_grad_()
    loss = map_factorization_loss(same, target)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(same.grad, torch.zeros_like(same), atol=1e-6, rtol=0)


def test_map_loss_bad_input():
    with pytest.raises(
        ValueError, match=r"\(N, C_k, h, w\), got \(2, 3, 4, 4\) and \(2, 3, 2, 2\)"
    ):
        map_factorization_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(2, 3\)"):
        map_factorization_loss(torch.zeros(2, 3), torch.zeros(2, 3))
