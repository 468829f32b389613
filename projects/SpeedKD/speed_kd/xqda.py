"""XQDA, Cross-view Quadratic Discriminant Analysis, in closed form (NumPy/SciPy, float64).

Differences ``x_i - x_j`` of same-identity pairs and of different-identity pairs are both modelled
as zero-mean Gaussians, with covariances ``Sigma_I`` (intra-personal) and ``Sigma_E``
(extra-personal). XQDA learns a subspace ``W`` (d x r) maximising ``w' Sigma_E w / w' Sigma_I w``
(a generalised eigenproblem) and, in that subspace, the log-likelihood-ratio metric
``M = (W' Sigma_I W)^-1 - (W' Sigma_E W)^-1``; the distance is ``(x - z)' W M W' (x - z)``.

Pairs are all ordered pairs ``(i, j)``, ``i != j``, of training samples. Both covariances come from
per-class sums in ``O(n d^2)``, never from the ``O(n^2)`` pairs. When ``d`` exceeds the number of
samples (LOMO: 26,960 dimensions), the problem is first solved in the span of the samples (a thin
QR decomposition), which gives the same subspace and metric, as in Liao's reference code.
"""

import numpy as np
import scipy.linalg

__all__ = ["XQDA"]


def pair_covariances(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intra- and extra-personal covariances of all ordered pairs of distinct samples.

    Over the ordered pairs of one class ``k`` with ``n_k`` samples summing to ``s_k``,
    ``sum (x_i - x_j)(x_i - x_j)' = 2 (n_k sum_i x_i x_i' - s_k s_k')`` (pairs ``i = j`` add
    nothing); over all pairs, the same with ``n`` and the total sum; extra = all - intra.

    Args:
        features: (n, d) float64 samples.
        labels: (n,) identity labels, any hashable dtype NumPy can sort.

    Returns:
        ``Sigma_I`` and ``Sigma_E``, each (d, d): pair scatter divided by the number of pairs.
    """
    n = len(features)
    _, classes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(classes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    class_sums = np.add.reduceat(features[order], starts, axis=0)  # (c, d)
    weighted = features * np.sqrt(counts[classes])[:, None]
    intra = 2 * (weighted.T @ weighted - class_sums.T @ class_sums)
    total = features.sum(axis=0)
    every = 2 * (n * (features.T @ features) - np.outer(total, total))
    num_intra = int((counts * (counts - 1)).sum())
    num_extra = n * (n - 1) - num_intra
    return intra / num_intra, (every - intra) / num_extra


class XQDA:
    """Cross-view Quadratic Discriminant Analysis.

    Args:
        dim: subspace dimension ``r``; ``None`` keeps every generalised eigenvalue above 1. A
            given ``dim`` is capped at that number (at least 1), as in Liao's reference code.
        ridge: added to the diagonal of ``Sigma_I`` before solving (Liao's ``lambda``).

    Attributes:
        W: (d, r) float64 projection, set by :meth:`fit`.
        M: (r, r) float64 symmetric metric in the subspace, set by :meth:`fit`.
        eigenvalues: (r,) generalised eigenvalues of the kept directions, descending.

    Reference:
        Liao, Hu, Zhu and Li, "Person Re-identification by Local Maximal Occurrence Representation
        and Metric Learning", CVPR 2015.
    """

    def __init__(self, dim: int | None = None, ridge: float = 1e-3) -> None:
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be a positive integer or None, got {dim}")
        if ridge < 0:
            raise ValueError(f"ridge must be non-negative, got {ridge}")
        self.dim = dim
        self.ridge = ridge
        self.W: np.ndarray | None = None
        self.M: np.ndarray | None = None
        self.eigenvalues: np.ndarray | None = None

    @property
    def num_parameters(self) -> int:
        """Learned numbers: ``W.size + M.size``."""
        self._check_fitted()
        return int(self.W.size + self.M.size)

    def fit(self, features, labels) -> "XQDA":
        """Learn ``W`` and ``M`` from labelled samples.

        Args:
            features: (n, d) array-like of samples (torch tensors are converted).
            labels: (n,) identity labels; at least 2 identities, one with 2 or more samples.

        Returns:
            self.

        Raises:
            ValueError: mismatched lengths, non-finite features, fewer than 2 identities, or no
                identity with two samples.
        """
        x = _as_matrix(features, "features")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(x):
            raise ValueError(
                f"labels must be a vector with one label per sample: {len(x)} samples, labels "
                f"of shape {labels.shape}"
            )
        _, counts = np.unique(labels, return_counts=True)
        if len(counts) < 2:
            raise ValueError(f"XQDA needs samples of at least 2 identities, got {len(counts)}")
        if counts.max() < 2:
            raise ValueError("XQDA needs an identity with at least 2 samples (no intra pairs)")
        basis = None
        if x.shape[1] > x.shape[0]:  # work in the span of the samples
            basis, r_factor = scipy.linalg.qr(x.T, mode="economic", overwrite_a=True)
            x = r_factor.T
        intra, extra = pair_covariances(x, labels)
        intra[np.diag_indices_from(intra)] += self.ridge
        values, vectors = scipy.linalg.eigh(extra, intra)
        values, vectors = values[::-1], vectors[:, ::-1]
        above_one = int((values > 1).sum())
        keep = max(1, above_one if self.dim is None else min(self.dim, above_one))
        vectors = vectors[:, :keep]
        sub_intra = vectors.T @ intra @ vectors
        sub_extra = vectors.T @ extra @ vectors
        metric = np.linalg.inv(sub_intra) - np.linalg.inv(sub_extra)
        self.M = (metric + metric.T) / 2
        self.W = np.ascontiguousarray(vectors if basis is None else basis @ vectors)
        self.eigenvalues = values[:keep].copy()
        return self

    def transform(self, features) -> np.ndarray:
        """Project onto the subspace.

        Args:
            features: (n, d) array-like.

        Returns:
            (n, r) float64 ``features @ W``.
        """
        self._check_fitted()
        x = _as_matrix(features, "features")
        if x.shape[1] != self.W.shape[0]:
            raise ValueError(
                f"features have {x.shape[1]} dimensions, XQDA was fit on {len(self.W)}"
            )
        return x @ self.W

    def distance(self, query, gallery, projected: bool = False) -> np.ndarray:
        """XQDA distances ``(x - z)' W M W' (x - z)`` of every query to every gallery sample.

        Computed as ``x'Mx + z'Mz - 2 x'Mz`` on the projections, by matrix products.

        Args:
            query: (nq, d) array-like, or (nq, r) if ``projected``.
            gallery: (ng, d) array-like, or (ng, r) if ``projected``.
            projected: the inputs are already :meth:`transform`-ed.

        Returns:
            (nq, ng) float64 distances.
        """
        self._check_fitted()
        if projected:
            q, g = _as_matrix(query, "query"), _as_matrix(gallery, "gallery")
            r = len(self.M)
            if q.shape[1] != r or g.shape[1] != r:
                raise ValueError(
                    f"projected query {q.shape} and gallery {g.shape} must have {r} columns"
                )
        else:
            q, g = self.transform(query), self.transform(gallery)
        qm = q @ self.M
        gm = g @ self.M
        q_norms = np.einsum("ij,ij->i", qm, q)
        g_norms = np.einsum("ij,ij->i", gm, g)
        return q_norms[:, None] + g_norms[None, :] - 2 * qm @ g.T

    def _check_fitted(self) -> None:
        if self.W is None:
            raise RuntimeError("XQDA is not fitted: call fit(features, labels) first")


def _as_matrix(array, name: str) -> np.ndarray:
    """A finite (n, d) float64 array (a copy), from NumPy or torch."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    x = np.array(array, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x
