"""Rows of the joint distance matrix that re-ranking reads, from matrices or from features.

:func:`~kdreid.evaluation.rerank.re_ranking` reads FastReID's three matrices (``q_g``, ``q_q``,
``g_g``); :func:`~kdreid.evaluation.rerank.re_ranking_features` computes rows from the features
block by block, never holding the ``N x N`` matrix. Both give the reference's squared distances.
"""

import torch
import torch.nn.functional as F

__all__ = ["pairwise_distance", "MatrixRows", "FeatureRows", "row_blocks"]


def row_blocks(num_query, num_items, size):
    """Row ranges of at most ``size`` rows, none straddling the query/gallery boundary."""
    for first, last in ((0, num_query), (num_query, num_items)):
        for start in range(first, last, size):
            yield start, min(start + size, last)


class MatrixRows:
    """The reference's squared joint matrix, transposed, read from ``q_g``, ``q_q``, ``g_g``."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
        self.num_query, self.num_items = q_g.shape[0], sum(q_g.shape)
        self.bytes_per_row = self.num_items * _bytes_per_entry(q_g.dtype)

    def rows(self, start, stop, out):
        """Write the (B, N) float32 squared distances of rows ``start:stop`` into ``out``."""
        q = self.num_query
        block = _workspace(out, self.q_g.dtype)
        if start < q:
            _copy_transposed(block[:, :q], self.q_q[:, start:stop])
            block[:, q:].copy_(self.q_g[start:stop])
        else:
            _copy_transposed(block[:, :q], self.q_g[:, start - q : stop - q])
            _copy_transposed(block[:, q:], self.g_g[:, start - q : stop - q])
        return out.copy_(block.mul_(block))

    def pairs(self, rows, cols):
        """(P,) float32 squared distances of the pairs ``(rows[p], cols[p])``."""
        q = self.num_query
        value = torch.empty(rows.shape, dtype=self.q_g.dtype, device=rows.device)
        for row_q in (True, False):
            for col_q in (True, False):
                sel = ((rows < q) == row_q) & ((cols < q) == col_q)
                i, j = rows[sel] - (0 if row_q else q), cols[sel] - (0 if col_q else q)
                if row_q != col_q:
                    value[sel] = self.q_g[i, j] if row_q else self.q_g[j, i]
                else:
                    value[sel] = (self.q_q if row_q else self.g_g)[j, i]
        return (value * value).float()


def _copy_transposed(dst, src, tile=512):
    """``dst.copy_(src.T)`` by tiles of ``src`` rows: several times faster than one strided copy."""
    for start in range(0, src.shape[0], tile):
        dst[:, start : start + tile].copy_(src[start : start + tile].T)


def _bytes_per_entry(dtype):
    """The float32 block, and a workspace in ``dtype`` unless that is float32."""
    return 4 + (dtype != torch.float32) * dtype.itemsize


def _workspace(out, dtype):
    """``out`` itself for float32, else a block of its shape in ``dtype`` (squared, then cast)."""
    return out if dtype == torch.float32 else torch.empty(out.shape, dtype=dtype, device=out.device)


def _prepare(feats, metric):
    """Features in a float dtype, unit-normalised for cosine; their squared norms."""
    feats = feats.float() if feats.dtype in (torch.float16, torch.bfloat16) else feats
    if metric == "cosine":
        feats = F.normalize(feats, dim=1)
    return feats, (feats * feats).sum(dim=1)


def _finish(dots, norms_x, norms_y, metric):
    """Distances from inner products (in place): see :func:`pairwise_distance`."""
    if metric == "cosine":
        return dots.neg_().add_(1)
    return dots.mul_(-2).add_(norms_x).add_(norms_y).clamp_(min=0).sqrt_()


def pairwise_distance(x, y, metric="euclidean"):
    """The (m, n) distances of (m, d) ``x`` to (n, d) ``y`` that :func:`re_ranking_features` uses.

    ``"euclidean"``: ``sqrt(max(-2 x.y + |x|^2 + |y|^2, 0))``, which the reference then squares;
    ``"cosine"``: ``1 - x.y`` of the rows normalised by ``F.normalize``. In the features' dtype
    (float16/bfloat16 in float32).
    """
    (x, norms_x), (y, norms_y) = _prepare(x, metric), _prepare(y, metric)
    return _finish(x @ y.T, norms_x[:, None], norms_y[None, :], metric)


class FeatureRows:
    """Squared distances of the joint features, by GEMM blocks or pair by pair."""

    def __init__(self, q_feat, g_feat, metric, memory_budget):
        self.feats, self.norms = _prepare(torch.cat([q_feat, g_feat]), metric)
        self.metric, self.memory_budget = metric, memory_budget
        self.num_query, self.num_items = q_feat.shape[0], self.feats.shape[0]
        self.bytes_per_row = self.num_items * _bytes_per_entry(self.feats.dtype)

    def rows(self, start, stop, out):
        """Write the (B, N) float32 squared distances of rows ``start:stop`` into ``out``."""
        block = _workspace(out, self.feats.dtype)
        torch.matmul(self.feats[start:stop], self.feats.T, out=block)
        dist = _finish(block, self.norms[start:stop, None], self.norms[None, :], self.metric)
        return out.copy_(dist.mul_(dist))

    def pairs(self, rows, cols):
        """(P,) float32 squared distances of the pairs ``(rows[p], cols[p])``."""
        out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
        step = max(1, self.memory_budget // (2 * self.feats.shape[1] * self.feats.element_size()))
        for start in range(0, rows.numel(), step):
            i, j = rows[start : start + step], cols[start : start + step]
            dots = (self.feats[i] * self.feats[j]).sum(dim=1)
            dist = _finish(dots, self.norms[i], self.norms[j], self.metric)
            out[start : start + step] = dist.mul_(dist)
        return out
