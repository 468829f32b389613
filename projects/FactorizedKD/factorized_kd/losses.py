"""The two FD-style factorization losses of the holistic student, on plain tensors.

The paper factorizes "both the feature maps and the retrieval features" of the holistic network to
mimic the partial teachers, but its available text (abstract, Figure 1) gives no loss. The two
losses below are our design (``/work/shared/methods/FactorizedKD.md``, items 4 and 5), hence
"FD-style":

- retrieval features: ``L_feat = sum_k mean_i (1 - cos(factor_k[i], t_k[i]))``;
- feature maps, per teacher: ``mean_{i,y,x} ||n(A[i,:,y,x]) - n(T[i,:,y,x])||^2``, with ``n`` the
  L2 normalisation over channels.

Both take the student's tensors first and the teachers' second, stop the gradient at the
teachers' (detached, cast to the student's dtype), validate shapes (the message shows them) and
return a scalar on the student's device without synchronising it.

Reference:
    Ren & Li, "Factorized Distillation: Training Holistic Person Re-identification Model by
    Distilling an Ensemble of Partial ReID Models", arXiv 1811.08073 (2018).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["feature_factorization_loss", "map_factorization_loss"]

_EPS = 1e-12  # F.normalize's: a zero vector normalises to zero


def _target(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The teacher's tensor as a constant of the student's dtype (the stop-gradient)."""
    return target.detach().to(dtype=like.dtype)


def feature_factorization_loss(
    factors: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    """FD-style retrieval-feature factorization: each factor mimics one teacher's feature.

    ``L_feat = sum_k mean_i (1 - cos(factor_k[i], stopgrad(t_k[i])))``: summed over the K
    teachers (not averaged: the weight ``MODEL.FKD.FEAT_WEIGHT`` scales the sum), averaged over the
    N samples. Each term is in ``[0, 2]``, blind to the norms of both sides; a zero vector has
    cosine 0 with anything (as ``F.cosine_similarity`` with ``eps=1e-8`` computes it).

    Args:
        factors: K student factors, factor k of shape ``(N, D_k)``.
        targets: K teacher retrieval features, ``t_k`` of shape ``(N, D_k)``; detached.

    Returns:
        A scalar tensor in ``[0, 2K]``.

    Raises:
        ValueError: no factor, different numbers of factors and targets, or a pair whose shapes
            differ or are not ``(N, D_k)``.

    Reference:
        Ren & Li, arXiv 1811.08073 (2018): "factorizes ... the retrieval features"; the cosine
        form is ours.
    """
    factors, targets = list(factors), list(targets)
    if not factors or len(factors) != len(targets):
        raise ValueError(
            f"need one target per factor and at least one factor, got {len(factors)} factor(s) "
            f"and {len(targets)} target(s)"
        )
    total = 0
    for k, (factor, target) in enumerate(zip(factors, targets)):
        if factor.dim() != 2 or factor.shape != target.shape:
            raise ValueError(
                f"factor {k} and target {k} must both be (N, D_k), got "
                f"{tuple(factor.shape)} and {tuple(target.shape)}"
            )
        cos = F.cosine_similarity(factor, _target(target, factor), dim=1, eps=1e-8)
        total = total + (1 - cos).mean()
    return total


def map_factorization_loss(adapted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FD-style feature-map factorization for one teacher: match the channel directions.

    ``mean_{i,y,x} || n(A[i,:,y,x]) - n(stopgrad(T[i,:,y,x])) ||^2``: the squared distance is
    summed over the ``C_k`` channels and averaged over the ``N * h * w`` (sample, position) pairs,
    with ``n(v) = v / max(||v||_2, 1e-12)`` over channels. For non-zero vectors each term equals
    ``2 - 2 cos``, so the loss is in ``[0, 4]`` and blind to each position's norm. The student sums
    it over teachers (``L_map = sum_k ...``).

    Args:
        adapted: ``(N, C_k, h, w)`` the student's adapted rows, ``A_k(S[rows_k])``, already
            resampled to the teacher's map size.
        target: ``(N, C_k, h, w)`` the teacher's last feature map ``T_k``; detached.

    Returns:
        A scalar tensor in ``[0, 4]``.

    Raises:
        ValueError: the shapes differ or are not 4-d.

    Reference:
        Ren & Li, arXiv 1811.08073 (2018): "factorizes ... the feature maps"; the normalised
        squared distance is ours.
    """
    if adapted.dim() != 4 or adapted.shape != target.shape:
        raise ValueError(
            "adapted student map and teacher map must both be (N, C_k, h, w), got "
            f"{tuple(adapted.shape)} and {tuple(target.shape)}"
        )
    a = F.normalize(adapted, dim=1, eps=_EPS)
    t = F.normalize(_target(target, adapted), dim=1, eps=_EPS)
    return (a - t).pow(2).sum(dim=1).mean()
