"""Generic distillation losses on plain tensors: logits (KL, symmetric KL, JS), features, relations.

Every function takes the student's tensor first and the teacher's second, detaches the teacher (no
gradient ever reaches it), casts it to the student's dtype, and returns a scalar tensor on the
student's device without synchronising it. Inputs are validated from their shapes only.

Logit losses are scaled by ``T**2`` (Hinton et al., 2015) so that the size of their gradient with
respect to the student's logits stays roughly independent of the temperature ``T``, and averaged
over samples after summing over classes (``reduction="batchmean"`` in ``F.kl_div``'s terms).
"""

import math

import torch
import torch.nn.functional as F

__all__ = [
    "kd_kl_loss",
    "kd_symmetric_kl_loss",
    "kd_js_loss",
    "feature_mimic_loss",
    "relation_loss",
    "MIMIC_MODES",
    "RELATION_METRICS",
]

MIMIC_MODES = ("l2", "cosine")
"""Valid ``mode`` values of :func:`feature_mimic_loss`."""

RELATION_METRICS = ("cosine", "euclidean")
"""Valid ``metric`` values of :func:`relation_loss`."""

_EPS = 1e-12


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {what} must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def _check_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> None:
    _check_same_shape(student, teacher, "logits")
    if student.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(student.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _teacher(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    return teacher.detach().to(dtype=student.dtype)


def _batch_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` summed over classes and averaged over samples, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def kd_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton's knowledge-distillation loss: ``T**2 * KL(softmax(t / T) || softmax(s / T))``.

    The teacher's softened distribution is the target; the KL divergence is summed over classes
    and averaged over samples.

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits; detached.
        temperature: softening temperature ``T > 0``.

    Returns:
        A scalar tensor, ``>= 0``, zero iff the two softened distributions agree on every sample.

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS-W 2015.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    teacher_logits = _teacher(teacher_logits, student_logits)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return _batch_kl(log_p_t, log_p_s) * temperature**2


def kd_symmetric_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 16.0
) -> torch.Tensor:
    """Symmetric KL, ``T**2 * (KL(P_t || P_s) + KL(P_s || P_t)) / 2``: FastReID's "JS" loss.

    This is exactly what FastReID's ``Distiller.jsdiv_loss`` computes (same numbers, same default
    ``T = 16``), despite its name: the mean of the two KL directions, not the Jensen-Shannon
    divergence (:func:`kd_js_loss`). It is unbounded, and like FastReID's the student's
    distribution receives gradient through both directions (as input of one, target of the other).

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits; detached.
        temperature: softening temperature ``T > 0``.

    Returns:
        A scalar tensor, ``>= 0``, symmetric in its two arguments' values.

    Reference:
        He et al., "FastReID: A Pytorch Toolbox for General Instance Re-identification", 2020
        (``fastreid/modeling/meta_arch/distiller.py``).
    """
    _check_logits(student_logits, teacher_logits, temperature)
    teacher_logits = _teacher(teacher_logits, student_logits)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return (_batch_kl(log_p_t, log_p_s) + _batch_kl(log_p_s, log_p_t)) / 2 * temperature**2


def kd_js_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Jensen-Shannon: ``T**2 * (KL(P_s || M) + KL(P_t || M)) / 2``, ``M = (P_s + P_t) / 2``.

    Unlike :func:`kd_symmetric_kl_loss` (which FastReID calls JS), this compares each softened
    distribution with their mixture, so it is finite even where one of them puts no mass, and
    bounded: ``0 <= JS <= ln 2`` before the ``T**2`` scaling. For close distributions it is a
    quarter of the symmetric KL: to second order they are ``1/8`` and ``1/2`` of
    ``sum (p - q)**2 / p``.

    Args:
        student_logits: (N, C) student logits.
        teacher_logits: (N, C) teacher logits; detached.
        temperature: softening temperature ``T > 0``.

    Returns:
        A scalar tensor in ``[0, T**2 * ln 2]``, symmetric in its two arguments' values.

    Reference:
        Lin, "Divergence Measures Based on the Shannon Entropy", IEEE Trans. Inf. Theory 1991.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    teacher_logits = _teacher(teacher_logits, student_logits)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_m = torch.logaddexp(log_p_s, log_p_t) - math.log(2.0)
    return (_batch_kl(log_p_s, log_m) + _batch_kl(log_p_t, log_m)) / 2 * temperature**2


def feature_mimic_loss(
    student: torch.Tensor, teacher: torch.Tensor, mode: str = "l2"
) -> torch.Tensor:
    """Make the student's features (or feature maps) match the teacher's, sample by sample.

    ``"l2"``: squared Euclidean distance between the flattened features, summed over dimensions
    and averaged over samples (``MSE * D``, so its scale does not shrink with the width ``D``).
    ``"cosine"``: ``1 - cos(student_i, teacher_i)`` averaged over samples; blind to each sample's
    norm. Features of different widths need a projection of the student first (not done here).

    Args:
        student: (N, D) or (N, C, H, W) student features.
        teacher: teacher features of the same shape; detached.
        mode: one of :data:`MIMIC_MODES`.

    Returns:
        A scalar tensor, ``>= 0``; ``"cosine"`` is at most 2.

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """
    if mode not in MIMIC_MODES:
        raise ValueError(f"mode must be one of {', '.join(MIMIC_MODES)}; got '{mode}'")
    _check_same_shape(student, teacher, "features")
    if student.dim() < 2:
        raise ValueError(f"features must be (N, D, ...), got shape {tuple(student.shape)}")
    student = student.flatten(1)
    teacher = _teacher(teacher, student).flatten(1)
    if mode == "l2":
        return (student - teacher).pow(2).sum(dim=1).mean()
    return (1 - F.cosine_similarity(student, teacher, dim=1, eps=1e-8)).mean()


def _pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances, exactly zero on the diagonal and with a finite gradient."""
    squared = x.pow(2).sum(dim=1)
    d2 = squared[:, None] + squared[None, :] - 2 * x @ x.t()
    d = d2.clamp_min(_EPS).sqrt()
    return d * (1 - torch.eye(len(x), dtype=x.dtype, device=x.device))


def relation_loss(
    student: torch.Tensor, teacher: torch.Tensor, metric: str = "cosine"
) -> torch.Tensor:
    """Make the student's pairwise relations between samples match the teacher's.

    Both sides build an (N, N) matrix over the batch from their own features, so their widths may
    differ; only the ``N * (N - 1)`` off-diagonal pairs are compared.

    ``"cosine"`` (similarity preserving, in the spirit of Tung & Mori 2019, with cosine
    similarities in place of their row-normalised Gram matrix): ``S_ij = cos(f_i, f_j)``; the
    loss is the mean squared difference of the two matrices over pairs, in ``[0, 4]``.

    ``"euclidean"`` (RKD-D, Park et al. 2019): ``D_ij = ||f_i - f_j|| / mu``, with ``mu`` the mean
    of the off-diagonal distances of that side; the loss is the mean smooth-L1 (Huber, ``beta=1``)
    difference over pairs.

    Both forms are invariant to scaling either side's features by a positive factor.

    Args:
        student: (N, D_s) student features, ``N >= 2``.
        teacher: (N, D_t) teacher features; detached.
        metric: one of :data:`RELATION_METRICS`.

    Returns:
        A scalar tensor, ``>= 0``.

    Reference:
        Park et al., "Relational Knowledge Distillation", CVPR 2019; Tung & Mori,
        "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """
    if metric not in RELATION_METRICS:
        raise ValueError(f"metric must be one of {', '.join(RELATION_METRICS)}; got '{metric}'")
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            "student and teacher features must be (N, D_s) and (N, D_t) with the same N, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    n = student.shape[0]
    if n < 2:
        raise ValueError(f"relation_loss needs at least 2 samples, got {n}")
    teacher = _teacher(teacher, student)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)
    if metric == "cosine":
        s_rel = F.normalize(student, dim=1, eps=1e-8)
        t_rel = F.normalize(teacher, dim=1, eps=1e-8)
        s_rel, t_rel = s_rel @ s_rel.t(), t_rel @ t_rel.t()
        return (s_rel - t_rel)[off_diagonal].pow(2).mean()
    s_rel, t_rel = _pairwise_distance(student), _pairwise_distance(teacher)
    s_rel = s_rel / s_rel[off_diagonal].mean().clamp_min(_EPS)
    t_rel = t_rel / t_rel[off_diagonal].mean().clamp_min(_EPS)
    return F.smooth_l1_loss(s_rel[off_diagonal], t_rel[off_diagonal], beta=1.0)
