"""Distillation losses: hand-derived values on tiny tensors, slow references, FastReID's numbers."""

import math

import pytest
import torch
from fastreid.modeling.meta_arch.distiller import Distiller

from kdreid.distill.losses import (
    feature_mimic_loss,
    kd_js_loss,
    kd_kl_loss,
    kd_symmetric_kl_loss,
    relation_loss,
)

LN3 = math.log(3.0)
LOGIT_LOSSES = [kd_kl_loss, kd_symmetric_kl_loss, kd_js_loss]


def _logits(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def _slow_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def test_kl_hand_value_and_exact_t_squared_scaling():
    """Teacher [ln 3, 0], student [0, 0], T = 1: P_t = (3/4, 1/4), P_s = (1/2, 1/2), so
    KL(P_t || P_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812. At T = 2 with teacher [2 ln 3, 0] the
    softened distributions are the same, so the loss is exactly 2**2 times that: 0.523248."""
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.130812, abs=1e-6)
    loss_t1 = kd_kl_loss(_logits([0.0, 0.0]), _logits([LN3, 0.0]), temperature=1.0)
    loss_t2 = kd_kl_loss(_logits([0.0, 0.0]), _logits([2 * LN3, 0.0]), temperature=2.0)
    assert loss_t1.item() == pytest.approx(kl, rel=1e-12)
    assert loss_t2.item() == pytest.approx(4 * kl, rel=1e-12)


def test_kl_is_averaged_over_samples():
    """Two samples, one as above (0.130812) and one with equal logits (0): mean 0.065406."""
    loss = kd_kl_loss(_logits([0.0, 0.0], [1.0, 2.0]), _logits([LN3, 0.0], [1.0, 2.0]), 1.0)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert loss.item() == pytest.approx(kl / 2, rel=1e-12)


def test_kl_gradient_hand_value():
    """d/ds [T**2 KL(P_t || softmax(s / T))] = T (P_s - P_t). With the example above at T = 2:
    2 * ((1/2, 1/2) - (3/4, 1/4)) = (-1/2, 1/2)."""
    student = _logits([0.0, 0.0]).requires_grad_()
    kd_kl_loss(student, _logits([2 * LN3, 0.0]), temperature=2.0).backward()
    torch.testing.assert_close(student.grad, _logits([-0.5, 0.5]))


def test_kl_gradient_is_temperature_independent_for_large_t():
    """For T >> |logits| the gradient T (P_s - P_t) tends to (s - t - mean(s - t)) / C / N, the
    same for every T: this is what the T**2 factor is for."""
    torch.manual_seed(0)
    student, teacher = (
        torch.randn(3, 5, dtype=torch.float64),
        torch.randn(3, 5, dtype=torch.float64),
    )
    diff = student - teacher
    limit = (diff - diff.mean(dim=1, keepdim=True)) / 5 / 3
    for temperature in (1e3, 1e4):
        s = student.clone().requires_grad_()
        kd_kl_loss(s, teacher, temperature).backward()
        torch.testing.assert_close(s.grad, limit, rtol=1e-2, atol=1e-5)


def test_kl_matches_slow_reference():
    """Explicit loops over samples and classes with math.exp / math.log."""
    torch.manual_seed(1)
    student, teacher = (
        torch.randn(4, 6, dtype=torch.float64),
        torch.randn(4, 6, dtype=torch.float64),
    )
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        expected += _slow_kl(_softmax(t_row, 3.0), _softmax(s_row, 3.0)) * 9.0 / 4
    assert kd_kl_loss(student, teacher, 3.0).item() == pytest.approx(expected, rel=1e-10)


def test_symmetric_kl_hand_value():
    """KL(P_t || P_s) = 0.130812 as above; KL(P_s || P_t) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
    = 0.143841; their mean 0.137327 at T = 1."""
    expected = (0.75 * math.log(1.5) + 0.25 * math.log(0.5) + 0.5 * math.log(4 / 3)) / 2
    assert expected == pytest.approx(0.137327, abs=1e-6)
    loss = kd_symmetric_kl_loss(_logits([0.0, 0.0]), _logits([LN3, 0.0]), temperature=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 16.0])
def test_symmetric_kl_matches_fastreid_distiller(temperature):
    """FastReID's Distiller.jsdiv_loss on random logits: same value, same student gradient."""
    torch.manual_seed(2)
    student, teacher = torch.randn(8, 10) * 5, torch.randn(8, 10) * 5
    ours_s = student.clone().requires_grad_()
    theirs_s = student.clone().requires_grad_()
    ours = kd_symmetric_kl_loss(ours_s, teacher, temperature)
    theirs = Distiller.jsdiv_loss(Distiller, theirs_s, teacher, t=temperature)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_s.grad, theirs_s.grad, rtol=1e-4, atol=1e-7)


def test_js_hand_value():
    """P_s = (1/2, 1/2), P_t = (3/4, 1/4), M = (5/8, 3/8):
    KL(P_s || M) = 1/2 ln(4/5) + 1/2 ln(4/3) = 0.032272, KL(P_t || M) = 3/4 ln(6/5) + 1/4 ln(2/3)
    = 0.035372; JS = their mean, 0.033822."""
    kl_s = 0.5 * math.log(4 / 5) + 0.5 * math.log(4 / 3)
    kl_t = 0.75 * math.log(6 / 5) + 0.25 * math.log(2 / 3)
    assert (kl_s + kl_t) / 2 == pytest.approx(0.033822, abs=1e-6)
    loss = kd_js_loss(_logits([0.0, 0.0]), _logits([LN3, 0.0]), temperature=1.0)
    assert loss.item() == pytest.approx((kl_s + kl_t) / 2, rel=1e-12)


def test_js_is_symmetric_bounded_and_reaches_ln2():
    """JS(P, Q) = JS(Q, P) <= ln 2, with ln 2 reached for disjoint supports (here nearly)."""
    torch.manual_seed(3)
    a, b = (
        torch.randn(16, 7, dtype=torch.float64) * 20,
        torch.randn(16, 7, dtype=torch.float64) * 20,
    )
    torch.testing.assert_close(kd_js_loss(a, b), kd_js_loss(b, a))
    assert 0 < kd_js_loss(a, b).item() <= math.log(2)
    disjoint = kd_js_loss(_logits([200.0, 0.0]), _logits([0.0, 200.0]))
    assert disjoint.item() == pytest.approx(math.log(2), rel=1e-12)


def test_js_matches_slow_reference_and_quarter_of_symmetric_kl():
    """Loop reference with M = (P + Q) / 2; for close distributions JS ~ symmetric KL / 4."""
    torch.manual_seed(4)
    student, teacher = (
        torch.randn(3, 5, dtype=torch.float64),
        torch.randn(3, 5, dtype=torch.float64),
    )
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = _softmax(s_row, 2.0), _softmax(t_row, 2.0)
        m = [(pi + qi) / 2 for pi, qi in zip(p, q)]
        expected += (_slow_kl(p, m) + _slow_kl(q, m)) / 2 * 4.0 / 3
    assert kd_js_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-10)
    close = teacher + 1e-3 * student
    ratio = kd_js_loss(close, teacher) / kd_symmetric_kl_loss(close, teacher, 1.0)
    assert ratio.item() == pytest.approx(0.25, rel=1e-2)


@pytest.mark.parametrize("loss_fn", LOGIT_LOSSES)
def test_logit_losses_zero_when_equal_and_teacher_gets_no_gradient(loss_fn):
    torch.manual_seed(5)
    logits = torch.randn(4, 6)
    assert loss_fn(logits, logits.clone()).abs().item() < 1e-6
    student = torch.randn(4, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    loss = loss_fn(student, teacher)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_fn", LOGIT_LOSSES)
def test_logit_losses_validate_inputs(loss_fn):
    with pytest.raises(ValueError, match=r"\(4, 6\) and \(4, 5\)"):
        loss_fn(torch.zeros(4, 6), torch.zeros(4, 5))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"temperature must be > 0, got {bad}"):
            loss_fn(torch.zeros(4, 6), torch.zeros(4, 6), temperature=bad)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        loss_fn(torch.zeros(6), torch.zeros(6))


def test_feature_mimic_hand_values():
    """l2: squared distances 1 + 4 = 5 and 9 + 16 = 25, mean over samples 15.
    cosine: [1, 2] vs [2, 4] parallel (0), [1, 0] vs [0, 1] orthogonal (1), [1, 1] vs [-1, -1]
    opposite (2): mean 1."""
    student = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert feature_mimic_loss(student, teacher, "l2").item() == pytest.approx(15.0)
    student = torch.tensor([[1.0, 2.0], [1.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[2.0, 4.0], [0.0, 1.0], [-1.0, -1.0]])
    assert feature_mimic_loss(student, teacher, "cosine").item() == pytest.approx(1.0)
    parallel = feature_mimic_loss(student[:1], 3 * student[:1], "cosine")
    assert parallel.abs().item() < 1e-6


def test_feature_mimic_on_feature_maps_matches_flattened():
    torch.manual_seed(6)
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5, requires_grad=True)
    for mode in ("l2", "cosine"):
        expected = feature_mimic_loss(student.flatten(1), teacher.flatten(1), mode)
        torch.testing.assert_close(feature_mimic_loss(student, teacher, mode), expected)
    feature_mimic_loss(student.requires_grad_(), teacher).backward()
    assert teacher.grad is None


def test_feature_mimic_validates_inputs():
    with pytest.raises(ValueError, match="l2, cosine; got 'l1'"):
        feature_mimic_loss(torch.zeros(2, 3), torch.zeros(2, 3), mode="l1")
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        feature_mimic_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_relation_cosine_hand_value():
    """Student [1, 0], [0, 1]: off-diagonal cosine 0. Teacher (3-D) [1, 0, 0], [2, 0, 0]: 1.
    Mean squared difference over the 2 off-diagonal pairs: 1."""
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    assert relation_loss(student, teacher, "cosine").item() == pytest.approx(1.0)


def test_relation_euclidean_hand_value():
    """Student points 0, 1, 2 on a line: distances 1, 2, 1, mean 4/3, normalised 3/4, 3/2, 3/4.
    Teacher: an equilateral triangle of side 5, normalised 1, 1, 1. Differences -1/4, 1/2, -1/4,
    smooth L1 (beta 1) 1/32, 1/8, 1/32; mean over the pairs (each counted twice): 1/16."""
    student = torch.tensor([[0.0], [1.0], [2.0]])
    teacher = 5 * torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert relation_loss(student, teacher, "euclidean").item() == pytest.approx(1 / 16, rel=1e-5)


def _slow_relation(student, teacher, metric):
    n = len(student)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def relations(x):
        if metric == "cosine":
            return {(i, j): torch.cosine_similarity(x[i], x[j], dim=0).item() for i, j in pairs}
        dist = {(i, j): (x[i] - x[j]).norm().item() for i, j in pairs}
        mean = sum(dist.values()) / len(pairs)
        return {pair: d / mean for pair, d in dist.items()}

    s, t = relations(student), relations(teacher)
    if metric == "cosine":
        return sum((s[p] - t[p]) ** 2 for p in pairs) / len(pairs)
    huber = [abs(s[p] - t[p]) for p in pairs]
    return sum(0.5 * d * d if d < 1 else d - 0.5 for d in huber) / len(pairs)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_relation_matches_slow_reference_and_is_scale_invariant(metric):
    torch.manual_seed(7)
    student, teacher = (
        torch.randn(6, 4, dtype=torch.float64),
        torch.randn(6, 9, dtype=torch.float64),
    )
    loss = relation_loss(student, teacher, metric)
    assert loss.item() == pytest.approx(_slow_relation(student, teacher, metric), rel=1e-8)
    torch.testing.assert_close(relation_loss(student, 7.5 * teacher, metric), loss)
    assert relation_loss(student, student.clone(), metric).item() < 1e-12


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_relation_gradient_is_finite_with_duplicate_samples(metric):
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    teacher = torch.randn(3, 5, requires_grad=True)
    relation_loss(student, teacher, metric).backward()
    assert torch.isfinite(student.grad).all()
    assert teacher.grad is None


def test_relation_validates_inputs():
    with pytest.raises(ValueError, match="cosine, euclidean; got 'l1'"):
        relation_loss(torch.zeros(3, 2), torch.zeros(3, 2), metric="l1")
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(4, 2\)"):
        relation_loss(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        relation_loss(torch.zeros(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize(
    "loss_fn",
    [*LOGIT_LOSSES, feature_mimic_loss, relation_loss],
)
def test_losses_follow_the_student_dtype(loss_fn):
    torch.manual_seed(8)
    student = torch.randn(4, 6, dtype=torch.float64)
    teacher = torch.randn(4, 6, dtype=torch.float16)
    loss = loss_fn(student, teacher)
    assert loss.dtype == torch.float64 and loss.dim() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss_fn", [*LOGIT_LOSSES, feature_mimic_loss, relation_loss])
def test_losses_run_on_cuda(loss_fn):
    torch.manual_seed(9)
    student, teacher = torch.randn(4, 6), torch.randn(4, 6)
    expected = loss_fn(student, teacher)
    loss = loss_fn(student.to("cuda"), teacher.to("cuda"))
    assert loss.device.type == "cuda"
    torch.testing.assert_close(loss.cpu(), expected, rtol=1e-4, atol=1e-5)
