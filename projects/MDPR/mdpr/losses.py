"""MDPR's own loss terms on plain tensors: attention diversity and mass, mutual distillation.

The cross-entropy and triplet terms are FastReID's; what is specific to MDPR is here, together
with the attention normalisation those terms are computed on. Every function is vectorised over
the batch and the parts, returns a tensor on its input's device without synchronising it, works
with a batch of one, and leaves its inputs untouched.

What differs from the official code (KuilongCui/MDPR, ``fastreid/modeling/meta_arch/mdpr.py``):
its diversity loss is built element by element on the CPU and moved with ``.cuda()`` (so it fails
on a CPU-only machine), crashes on a batch of one through a ``.squeeze()``, and mutates the
caller's list of part vectors. The values computed here are the official ones; only the way of
computing them differs.
"""

import torch
import torch.nn.functional as F

__all__ = [
    "attention_diversity_loss",
    "cross_entropy_loss",
    "attention_mass_loss",
    "mutual_distillation_loss",
    "normalise_attention",
]

_COS_EPS = 1e-8  # F.cosine_similarity's default


def normalise_attention(raw: torch.Tensor) -> torch.Tensor:
    """Foreground attention maps: softmax over the ``M + 1`` channels, background channel dropped.

    Official semantics: the attention maker outputs ``M`` part channels followed by one background
    channel; at every position the softmax makes them a distribution over ``M + 1`` outcomes, and
    the last (background) one is discarded, so the ``M`` maps returned sum to at most 1 per
    position. Unlike the official code this returns a new tensor and does not touch ``raw``.

    Args:
        raw: (B, M + 1, H, W) attention logits, ``M >= 1``.

    Returns:
        (B, M, H, W) foreground attention maps, each entry in ``(0, 1)``.

    Reference:
        Fu et al., "Mutual Distillation Learning for Person Re-identification", arXiv 2401.06430.
    """
    if raw.dim() != 4 or raw.shape[1] < 2:
        raise ValueError(
            f"raw attention must be (B, M + 1, H, W) with M >= 1, got shape {tuple(raw.shape)}"
        )
    return F.softmax(raw, dim=1)[:, :-1]


def attention_diversity_loss(parts: torch.Tensor) -> torch.Tensor:
    """Sum over part pairs ``i < j`` of ``cos(parts[:, i], parts[:, j])``, averaged over the batch.

    Official semantics (one attention level): ``(1 / B) * sum_b sum_{i<j} cos(v_bi, v_bj)`` on the
    ``M`` pooled part vectors ``v_bi``, pushing the parts to attend to different content. It is in
    ``[-M (M - 1) / 2, M (M - 1) / 2]``, and 0 for a single part. Here all the cosines come from
    one batched matmul of the normalised vectors, of which the strict upper triangle is summed: no
    Python loop, no ``.cuda()``, a batch of one works, and the caller's tensor is not modified.

    Args:
        parts: (B, M, D) pooled part vectors of one attention level.

    Returns:
        A scalar tensor on ``parts``'s device.

    Reference:
        Fu et al., "Mutual Distillation Learning for Person Re-identification", arXiv 2401.06430.
    """
    if parts.dim() != 3:
        raise ValueError(f"parts must be (B, M, D), got shape {tuple(parts.shape)}")
    unit = F.normalize(parts, dim=2, eps=_COS_EPS)
    cosines = unit @ unit.transpose(1, 2)  # (B, M, M)
    return torch.triu(cosines, diagonal=1).sum(dim=(1, 2)).mean()


def attention_mass_loss(attention: torch.Tensor, weight: float = 1e-3) -> torch.Tensor:
    """Attention mass penalty: ``weight * (1 / B) * sum`` of every entry of the foreground maps.

    Official semantics (one attention level): the ``M`` foreground maps after
    :func:`normalise_attention` are summed over parts and positions and averaged over the batch,
    with weight ``0.001``. Penalising the foreground mass leaves the positions that no part
    needs to the background channel.

    Args:
        attention: (B, M, H, W) foreground attention maps.
        weight: the penalty's weight (``0.001`` in the official code).

    Returns:
        A scalar tensor on ``attention``'s device.

    Reference:
        Fu et al., "Mutual Distillation Learning for Person Re-identification", arXiv 2401.06430.
    """
    if attention.dim() != 4:
        raise ValueError(f"attention must be (B, M, H, W), got shape {tuple(attention.shape)}")
    return attention.sum() * (weight / attention.shape[0])


def mutual_distillation_loss(
    p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """SimSiam-style mutual distillation: ``-(mean cos(p1, sg(z2)) + mean cos(p2, sg(z1))) / 2``.

    Official semantics: ``z1`` are the hard-global head's features and ``z2`` the level-4
    attention head's (BN-neck, training mode), ``p1 = pred1(z1)`` and ``p2 = pred2(z2)``; each
    branch's prediction is pulled towards the other branch's features, which are stop-gradient
    targets (detached here, so no gradient reaches ``z1`` or ``z2`` through this term). The value
    is in ``[-1, 1]``, ``-1`` when each prediction points along its target.

    Args:
        p1: (B, E) predictions from the hard branch's features.
        z1: (B, E) hard branch features; detached.
        p2: (B, E) predictions from the soft branch's features.
        z2: (B, E) soft branch features; detached.

    Returns:
        A scalar tensor on ``p1``'s device.

    Reference:
        Fu et al., "Mutual Distillation Learning for Person Re-identification", arXiv 2401.06430;
        Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021.
    """
    shapes = [tuple(t.shape) for t in (p1, z1, p2, z2)]
    if p1.dim() != 2 or len(set(shapes)) != 1:
        got = ", ".join(map(str, shapes))
        raise ValueError(f"p1, z1, p2, z2 must all be (B, E) with the same shape, got {got}")
    sim1 = F.cosine_similarity(p1, z2.detach(), dim=1, eps=_COS_EPS).mean()
    sim2 = F.cosine_similarity(p2, z1.detach(), dim=1, eps=_COS_EPS).mean()
    return -(sim1 + sim2) / 2


def cross_entropy_loss(
    logits: torch.Tensor, targets: torch.Tensor, eps: float, alpha: float = 0.2
) -> torch.Tensor:
    """FastReID's label-smoothed cross-entropy, without synchronising the device.

    Same value as ``fastreid.modeling.losses.cross_entropy_loss``: per-sample smoothed
    cross-entropy (``1 - eps`` on the target, ``eps / (C - 1)`` elsewhere; ``eps < 0`` is
    FastReID's adaptive smoothing ``alpha * p_target``), summed and divided by the number of
    non-zero per-sample losses (at least 1). FastReID counts those with ``nonzero().size(0)``, a
    host round trip per call (eight per MDPR step); here the count stays a tensor.

    Args:
        logits: (B, C) classifier outputs (margins applied).
        targets: (B,) identity labels.
        eps: label smoothing; negative for the adaptive variant.
        alpha: factor of the adaptive variant.

    Returns:
        A scalar tensor on ``logits``'s device.
    """
    num_classes = logits.shape[1]
    log_probs = F.log_softmax(logits, dim=1)
    with torch.no_grad():
        if eps >= 0:
            smooth = eps
        else:
            probs = F.softmax(logits, dim=1)
            smooth = alpha * probs.gather(1, targets[:, None])
        soft_targets = torch.ones_like(log_probs) * (smooth / (num_classes - 1))
        soft_targets.scatter_(1, targets[:, None], torch.ones_like(log_probs) * (1 - smooth))
    loss = (-soft_targets * log_probs).sum(dim=1)
    with torch.no_grad():
        count = (loss != 0).sum().clamp_min(1).to(loss.dtype)
    return loss.sum() / count
