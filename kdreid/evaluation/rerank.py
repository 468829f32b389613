"""Exact k-reciprocal re-ranking in torch: sparse, chunked, on the device of its inputs.

The same numbers as FastReID's ``fastreid.evaluation.rerank.re_ranking`` (a NumPy port of the
authors' code), without its dense N x N matrices (``N = q + g``). Its steps, on the joint set:

1. ``D = d**2`` (squared in the input's dtype, then float32) for the joint matrix
   ``[[q_q, q_g], [q_g.T, g_g]]``, each column divided by its maximum, then transposed: row ``i``
   of ``D`` is column ``i`` of the squared joint matrix over that column's maximum;
2. ``rank[i]``: the items by ascending ``D[i]``;
3. ``R(i) = {j in rank[i, :k1+1] : i in rank[j, :k1+1]}`` (k-reciprocal neighbours);
4. for each ``c`` in ``R(i)``, ``H(c)``, the same with ``round(k1/2)`` (half to even, as
   ``np.around``), is added when ``|H(c) & R(i)| > 2/3 |H(c)|``; ``R*(i)`` is the union;
5. ``V[i, j] = exp(-D[i, j])`` over ``j`` in ``R*(i)``, normalised to sum 1;
6. if ``k2 != 1``: ``V[i] <- mean(V[rank[i, :k2]])`` (local query expansion);
7. ``m(i, j) = sum_k min(V[i, k], V[j, k])`` and ``d_J = 1 - m / (2 - m)``, query rows only;
8. output ``(1 - lambda) d_J + lambda D``, the query x gallery block, float32.

Here ``rank`` keeps its first ``max(k1 + 1, k2)`` columns, found per block of rows (row maximum,
then top-k); ``R*`` and ``V`` are sparse rows (tens of entries); Jaccard sums go through an
inverted index (:mod:`~kdreid.evaluation.jaccard_triton`) for chunks of query rows; only the
``q x g`` output is dense. All on the input's device, vectorised (loops run over blocks).

Exactness: on the CPU the matrix path repeats every float32 operation of the reference in its
order, so its output is the reference's bit for bit (checked at Market-1501 size). That covers
``D``; the neighbour lists, whose order only matters as the sets ``rank[i, :p]`` at the cuts
``p = k1 + 1, round(k1/2) + 1, k2``: rows where equal values straddle a cut are ordered by
``np.argsort`` itself, as in the reference (its quicksort orders ties by implementation; float32
``D`` does tie: 6 such rows of a Market-1501-sized set change 1,630 outputs, by up to 0.07, if
ordered by index), the other rows by (value, index); NumPy's float32 ``exp`` and pairwise sums
for ``V``; the query expansion and Jaccard sums in the reference's order. The feature path
differs by the rounding of BLAS inner products (a few 1e-7); on CUDA the Jaccard kernel's atomic
adds may change the last bit. ``k1 >= N`` or ``k2 > N`` work as in the reference: a neighbour
list is then the whole set.

Reference:
    Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
"""

import time
from typing import NamedTuple

import numpy as np
import torch

from kdreid.evaluation.jaccard_triton import jaccard_chunks, segments, sparse_rows
from kdreid.evaluation.rank import as_tensor
from kdreid.evaluation.rerank_rows import FeatureRows, MatrixRows, pairwise_distance, row_blocks

__all__ = ["re_ranking", "re_ranking_features", "pairwise_distance", "DEFAULT_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 64 * 2**20
"""Bytes of temporaries one block or chunk may use (row blocks, sparse steps, Jaccard). Larger
chunks run slower on the CPU: their fresh allocations cost page faults (about 1 s per GB here)."""

METRICS = ("euclidean", "cosine")

STAGES = ("neighbours", "encoding", "query expansion", "jaccard")
"""The stages ``timings`` reports: the pass over row blocks (distances, row maxima, nearest
neighbours), the sparse ``V`` (steps 3-5), the local query expansion (step 6, absent with
``k2 = 1``), the Jaccard sums and the blend (steps 7-8)."""


class _StageClock:
    """Adds the wall time since the previous mark to ``times[name]``; a no-op for ``None``.

    On CUDA every mark synchronises the device first, so each stage owns the kernels it queued.
    """

    def __init__(self, times, device):
        self.times = times
        if times is not None:
            self.cuda = device.type == "cuda"
            self.device = device
            self.last = self._now()

    def _now(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def mark(self, name):
        if self.times is not None:
            now = self._now()
            self.times[name] = self.times.get(name, 0.0) + now - self.last
            self.last = now


def _ordered_topk(dist, k, cuts):
    """The first ``k`` columns of ``np.argsort(dist)`` wherever their order matters.

    The algorithm only uses the prefixes ``[:p]``, ``p`` in ``cuts``, as sets. Rows where equal
    values straddle a cut are ordered by ``np.argsort`` itself (on the CPU, as the reference
    does: its quicksort leaves the order of ties to the implementation); the others by
    (value, index), which gives the same prefix sets.

    Args:
        dist (Tensor): (B, N) float32.
        k (int): at most N.
        cuts (list[int]): prefix lengths in ``[1, k]``.

    Returns:
        Tensor: (B, k) int64.
    """
    if k == dist.shape[1]:
        tied = torch.ones(dist.shape[0], dtype=torch.bool, device=dist.device)
        idx = torch.empty(dist.shape[0], k, dtype=torch.int64, device=dist.device)
    else:
        vals, idx = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True)
        tied = torch.zeros_like(vals[:, 0], dtype=torch.bool)
        for cut in cuts:
            tied |= vals[:, cut - 1] == vals[:, cut]
        vals, idx = vals[:, :k], idx[:, :k]
        by_index = idx.argsort(dim=1)
        vals, idx = vals.gather(1, by_index), idx.gather(1, by_index)
        idx = idx.gather(1, vals.argsort(dim=1, stable=True))
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        order = np.argsort(dist[rows].cpu().numpy(), axis=1)[:, :k]
        idx[rows] = torch.from_numpy(order).to(device=idx.device, dtype=torch.int64)
    return idx


class _Neighbours(NamedTuple):
    """The first ``w`` columns of the reference's ``initial_rank``, their ``D``, row maxima."""

    ranks: torch.Tensor  # (N, w) int64
    dist: torch.Tensor  # (N, w) float32, D[i, ranks[i]]
    row_max: torch.Tensor  # (N,) float32 maximum of each row of the squared distances


def _neighbours(source, width, cuts, out, block_rows):
    """Pass over row blocks: each row's maximum, its first ``width`` neighbours, and ``D[:q, q:]``.

    Args:
        source (MatrixRows | FeatureRows): the squared distances, by blocks of rows.
        width (int): neighbours kept per row.
        cuts (list[int]): prefix lengths whose sets are used (see :func:`_ordered_topk`).
        out (Tensor): (q, g) float32, receives ``D[:q, q:]``.
        block_rows (int): rows per block.

    Returns:
        _Neighbours
    """
    num_query, num_items = source.num_query, source.num_items
    device = out.device
    ranks = torch.empty(num_items, width, dtype=torch.int64, device=device)
    near = torch.empty(num_items, width, dtype=torch.float32, device=device)
    row_max = torch.empty(num_items, dtype=torch.float32, device=device)
    buffer = torch.empty(min(block_rows, num_items), num_items, dtype=torch.float32, device=device)
    for start, stop in row_blocks(num_query, num_items, block_rows):
        dist = source.rows(start, stop, buffer[: stop - start])
        peak = dist.amax(dim=1)
        if not bool(torch.isfinite(peak).all()):
            bad = _item(int((~torch.isfinite(peak)).nonzero()[0, 0]) + start, num_query)
            raise ValueError(f"distances of {bad} contain NaN or inf (or overflow when squared)")
        if not bool((peak > 0).all()):
            bad = _item(int((peak <= 0).nonzero()[0, 0]) + start, num_query)
            raise ValueError(f"all distances of {bad} are zero: D cannot be normalised")
        dist.div_(peak[:, None])
        ranks[start:stop] = _ordered_topk(dist, width, cuts)
        near[start:stop] = dist.gather(1, ranks[start:stop])
        row_max[start:stop] = peak
        if start < num_query:
            out[start:stop] = dist[:, num_query:]
    return _Neighbours(ranks, near, row_max)


def _item(index, num_query):
    """A joint index as ``"query i"`` or ``"gallery item j"``."""
    return f"query {index}" if index < num_query else f"gallery item {index - num_query}"


def _reciprocal(ranks, rows, k):
    """(b, k) bool: ``ranks[i, s]`` has ``i`` among its own first ``k``, for ``i`` in ``rows``."""
    forward = ranks[rows, :k]
    return (ranks[forward, :k] == rows[:, None, None]).any(dim=2)


def _isin_rows(values, sorted_rows):
    """(b, n) bool: ``values[r, t]`` occurs in the sorted row ``sorted_rows[r]`` (b, m)."""
    pos = torch.searchsorted(sorted_rows, values).clamp_(max=sorted_rows.shape[1] - 1)
    return sorted_rows.gather(1, pos) == values


def _expanded_sets(ranks, k1, memory_budget):
    """``R*(i)`` of every item (steps 3-4): (rows, cols) pairs, row-major, columns ascending."""
    num_items = ranks.shape[0]
    k, k_half = min(k1 + 1, num_items), min(round(k1 / 2) + 1, num_items)
    step = max(1, memory_budget // (64 * k * (k_half + 1)))
    everyone = torch.arange(num_items, device=ranks.device)
    half = torch.cat(
        [_reciprocal(ranks, everyone[s : s + step], k_half) for s in range(0, num_items, step)]
    )
    found_rows, found_cols = [], []
    for start in range(0, num_items, step):
        rows = everyone[start : start + step]
        forward = ranks[rows, :k]
        recip = _reciprocal(ranks, rows, k)
        members = torch.where(recip, forward, -1)  # R(i), -1 elsewhere
        cand, cand_ok = ranks[forward, :k_half], half[forward]  # H(c) of every c, (b, k, k_half)
        in_r = _isin_rows(cand.flatten(1), members.sort(dim=1).values).view_as(cand)
        common = (in_r & cand_ok).sum(dim=2).double()
        accept = recip & (common > cand_ok.sum(dim=2).double() * (2.0 / 3))
        added = torch.where(accept[..., None] & cand_ok, cand, -1).flatten(1)
        ids = torch.cat([members, added], dim=1).sort(dim=1).values
        keep = ids >= 0
        keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
        r, c = keep.nonzero(as_tuple=True)
        found_rows.append(rows[r])
        found_cols.append(ids[r, c])
    return torch.cat(found_rows), torch.cat(found_cols)


def _pair_distances(source, near, rows, cols):
    """``D[rows[p], cols[p]]``: from the neighbour lists where there, else from ``source``."""
    num_items = near.ranks.shape[0]
    listed = near.ranks + num_items * torch.arange(num_items, device=rows.device)[:, None]
    listed, order = listed.flatten().sort()
    wanted = rows * num_items + cols
    pos = torch.searchsorted(listed, wanted).clamp_(max=listed.numel() - 1)
    dist = near.dist.flatten()[order[pos]]
    missing = (listed[pos] != wanted).nonzero().squeeze(1)
    if missing.numel():
        far_rows = rows[missing]
        dist[missing] = source.pairs(far_rows, cols[missing]) / near.row_max[far_rows]
    return dist


def _pairwise_sum(block):
    """Row sums of a (r, n) float32 block in the order of NumPy's pairwise summation."""
    n = block.shape[1]
    if n > 128:
        half = n // 2 - (n // 2) % 8
        return _pairwise_sum(block[:, :half]) + _pairwise_sum(block[:, half:])
    total, rest = torch.zeros_like(block[:, 0]), 0
    if n >= 8:
        lanes, rest = block[:, :8].clone(), n - n % 8
        for i in range(8, rest, 8):
            lanes += block[:, i : i + 8]
        pairs = lanes[:, 0::2] + lanes[:, 1::2]
        total = (pairs[:, 0] + pairs[:, 1]) + (pairs[:, 2] + pairs[:, 3])
    for i in range(rest, n):
        total = total + block[:, i]
    return total


def _row_sums(v):
    """Sum of each row of ``v`` as ``np.sum`` computes it, looping over the distinct row lengths."""
    lengths = v.crow[1:] - v.crow[:-1]
    sums = torch.zeros(lengths.shape, dtype=v.vals.dtype, device=v.vals.device)
    for n in torch.unique(lengths[lengths > 0]).tolist():
        rows = (lengths == n).nonzero().squeeze(1)
        span = v.crow[rows, None] + torch.arange(n, device=rows.device)
        sums[rows] = _pairwise_sum(v.vals[span])
    return sums


def _encode(source, near, k1, memory_budget):
    """Sparse ``V`` (step 5): ``exp(-D)`` over ``R*(i)``, normalised per row.

    Bit for bit as the reference: ``np.exp`` (NumPy's float32 exp, which differs from torch's in
    the last bit for ~40% of inputs; on the CPU) and NumPy's pairwise summation of each row.
    """
    rows, cols = _expanded_sets(near.ranks, k1, memory_budget)
    dist = _pair_distances(source, near, rows, cols)
    weight = torch.from_numpy(np.exp(-dist.cpu().numpy())).to(dist.device)
    v = sparse_rows(rows, cols, weight, near.ranks.shape[0])
    return v._replace(vals=weight / _row_sums(v)[rows])


def _expand_queries(v, ranks, k2, memory_budget):
    """Local query expansion (step 6): row ``i`` becomes the mean of its first ``k2`` rows."""
    num_items = ranks.shape[0]
    k2 = min(k2, num_items)
    neighbours = ranks[:, :k2]
    nnz = v.crow[1:] - v.crow[:-1]
    step = max(1, memory_budget // (64 * max(1, int(nnz[neighbours].sum(dim=1).max()))))
    parts = []
    for start in range(0, num_items, step):
        pos, owner = segments(v.crow, neighbours[start : start + step].reshape(-1))
        key = (start + owner // k2) * num_items + v.cols[pos]
        unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
        total = torch.zeros(unique.numel(), dtype=torch.float32, device=key.device)
        parts.append((unique, total.index_add_(0, inverse, v.vals[pos]) / k2))
    key = torch.cat([p[0] for p in parts])
    return sparse_rows(
        key // num_items, key % num_items, torch.cat([p[1] for p in parts]), num_items
    )


def _blend(v, out, lambda_value, memory_budget):
    """Steps 7-8 in place on ``out``, which holds ``D[:q, q:]``."""
    for start, stop, jaccard in jaccard_chunks(v, out.shape[0], memory_budget):
        out[start:stop].mul_(lambda_value).add_(jaccard.mul_(1 - lambda_value))
    return out


def _rerank(source, k1, k2, lambda_value, out, memory_budget, block_rows, timings=None):
    """Steps 1-8 on a row source; ``out`` (q, g) float32 receives the result.

    ``timings`` (dict | None) receives the seconds of each of :data:`STAGES`.
    """
    clock = _StageClock(timings, out.device)
    num_items = source.num_items
    width = min(max(k1 + 1, k2), num_items)
    cuts = {k1 + 1, round(k1 / 2) + 1} | ({k2} if k2 != 1 else set())
    cuts = sorted(cut for cut in cuts if cut < num_items)
    near = _neighbours(source, width, cuts, out, block_rows)
    clock.mark("neighbours")
    v = _encode(source, near, k1, memory_budget)
    clock.mark("encoding")
    if k2 != 1:
        v = _expand_queries(v, near.ranks, k2, memory_budget)
        clock.mark("query expansion")
    _blend(v, out, lambda_value, memory_budget)
    clock.mark("jaccard")
    return out


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_parameters(k1, k2, lambda_value, memory_budget=DEFAULT_MEMORY_BUDGET):
    """``k1``, ``k2`` as ints >= 1, ``lambda_value`` as a float in [0, 1], ``memory_budget`` an
    int >= 1 (bytes)."""
    _check_int("memory_budget", memory_budget)
    try:
        lam = float(lambda_value)
    except (TypeError, ValueError):
        raise ValueError(f"lambda_value must be a number in [0, 1], got {lambda_value!r}") from None
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    return _check_int("k1", k1), _check_int("k2", k2), lam


def _check_matrices(q_g_dist, q_q_dist, g_g_dist):
    """The three matrices as tensors of one real dtype on one device, with matching shapes."""
    names = ("q_g_dist", "q_q_dist", "g_g_dist")
    q_g, q_q, g_g = mats = [as_tensor(m) for m in (q_g_dist, q_q_dist, g_g_dist)]
    for name, m in zip(names, mats):
        if m.dim() != 2 or m.is_complex() or m.dtype == torch.bool:
            raise ValueError(f"{name} must be 2-D and real, got {tuple(m.shape)} {m.dtype}")
    (num_q, num_g), shape = q_g.shape, f"q_g_dist ({q_g.shape[0]} x {q_g.shape[1]})"
    if num_q == 0 or num_g == 0:
        raise ValueError(f"query and gallery must be non-empty: {shape}")
    for name, m, n in (("q_q_dist", q_q, num_q), ("g_g_dist", g_g, num_g)):
        if tuple(m.shape) != (n, n):
            raise ValueError(f"{name} must be {n} x {n} to match {shape}, got {tuple(m.shape)}")
    if len({m.device for m in mats}) > 1:
        raise ValueError(f"the matrices are on different devices: {[m.device for m in mats]}")
    dtype = torch.promote_types(torch.promote_types(q_g.dtype, q_q.dtype), g_g.dtype)
    return [m.to(dtype) for m in mats]


def _check_features(q_feat, g_feat, metric):
    """Both feature sets as tensors of one dtype on one device, non-empty, finite, one width."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    q, g = feats = [as_tensor(q_feat), as_tensor(g_feat)]
    for name, f in zip(("q_feat", "g_feat"), feats):
        if f.dim() != 2 or 0 in f.shape or not f.is_floating_point():
            raise ValueError(f"{name} must be 2-D, non-empty, float: {tuple(f.shape)} {f.dtype}")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"{name} contains NaN or inf")
    if q.shape[1] != g.shape[1] or q.device != g.device:
        raise ValueError(
            f"q_feat and g_feat differ: {q.shape} on {q.device}, {g.shape} on {g.device}"
        )
    dtype = torch.promote_types(q.dtype, g.dtype)
    return q.to(dtype), g.to(dtype)


@torch.no_grad()
def re_ranking(
    q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3,
    memory_budget=DEFAULT_MEMORY_BUDGET, timings=None,
):  # fmt: skip
    """k-reciprocal re-ranking of distance matrices, as ``fastreid.evaluation.rerank.re_ranking``.

    The inputs are read in place (NumPy on the CPU, tensors on their device); beyond them memory
    is O(N k1^2 k2 + q g) plus blocks of ``memory_budget`` bytes.

    Args:
        q_g_dist (np.ndarray | Tensor): (q, g) query-gallery distances, any real dtype (squared
            in it, then float32, as the reference does).
        q_q_dist (np.ndarray | Tensor): (q, q) query-query distances.
        g_g_dist (np.ndarray | Tensor): (g, g) gallery-gallery distances.
        k1 (int): k of the k-reciprocal sets, >= 1 (``k1 >= q + g`` takes every item).
        k2 (int): neighbours averaged by the local query expansion, >= 1 (1 skips it).
        lambda_value (float): weight of the original distance, in [0, 1].
        memory_budget (int): bytes of temporaries per block.
        timings (dict | None): if given, receives the seconds each of :data:`STAGES` took
            (synchronised on CUDA, which costs a few device syncs).

    Returns:
        np.ndarray | Tensor: (q, g) float32 re-ranked distances; NumPy when ``q_g_dist`` is NumPy,
        else a tensor on its device.

    Raises:
        ValueError: mismatched shapes or devices, empty query or gallery, NaN/inf distances, an
            item whose distances are all zero, ``k1``/``k2`` < 1, ``lambda_value`` not in [0, 1].

    Reference:
        Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
    """
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value, memory_budget)
    q_g, q_q, g_g = _check_matrices(q_g_dist, q_q_dist, g_g_dist)
    source = MatrixRows(q_g, q_q, g_g)
    out = torch.empty(q_g.shape, dtype=torch.float32, device=q_g.device)
    block_rows = max(1, memory_budget // source.bytes_per_row)
    _rerank(source, k1, k2, lambda_value, out, memory_budget, block_rows, timings)
    return out if isinstance(q_g_dist, torch.Tensor) else out.numpy()


@torch.no_grad()
def re_ranking_features(
    q_feat, g_feat, k1=20, k2=6, lambda_value=0.3, metric="euclidean", chunk_size=None,
    memory_budget=DEFAULT_MEMORY_BUDGET, timings=None,
):  # fmt: skip
    """k-reciprocal re-ranking from features, never building an N x N matrix (N = q + g).

    Equals :func:`re_ranking` on the matrices ``pairwise_distance(a, b, metric)`` of the same
    features (up to the rounding of the inner products, which BLAS may sum in another order): the
    reference squares what it is fed, so ``"euclidean"`` gives it the Euclidean distance (``D`` is
    the squared Euclidean distance over its row maximum) and ``"cosine"`` gives it ``1 - cos``.

    Memory: O(N k1^2 k2 + q g) (neighbour lists and sparse rows of tens of entries, the (q, g)
    output), a copy of the features, plus one block: ``chunk_size`` rows of the N-wide distance
    matrix (``4 N chunk_size`` bytes, twice that for float64; by default as many rows as fit
    ``memory_budget``), and sparse chunks within ``memory_budget``. At MSMT17 size (N = 93,820,
    q = 11,659, d = 128) a CPU run took 4.0 GB beyond its inputs, 3.8 GB of it the output.
    On CUDA the distances assume float32 GEMMs (TF32 off, torch's default).

    Args:
        q_feat (np.ndarray | Tensor): (q, d) query features, floating point.
        g_feat (np.ndarray | Tensor): (g, d) gallery features, on the same device.
        k1 (int): k of the k-reciprocal sets, >= 1.
        k2 (int): neighbours averaged by the local query expansion, >= 1 (1 skips it).
        lambda_value (float): weight of the original distance, in [0, 1].
        metric (str): ``"euclidean"`` or ``"cosine"``, see :func:`pairwise_distance`.
        chunk_size (int | None): rows of the joint distance matrix per GEMM block.
        memory_budget (int): bytes of temporaries per block (and per sparse chunk).
        timings (dict | None): if given, receives the seconds each of :data:`STAGES` took
            (synchronised on CUDA); ``"neighbours"`` includes the distance GEMMs.

    Returns:
        np.ndarray | Tensor: (q, g) float32 re-ranked distances, NumPy for NumPy features, else a
        tensor on their device.

    Raises:
        ValueError: mismatched or empty features, NaN/inf, an unknown metric, bad ``k1``, ``k2``,
            ``lambda_value`` or ``chunk_size``, or an item at distance zero from every item.

    Reference:
        Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
    """
    k1, k2, lambda_value = _check_parameters(k1, k2, lambda_value, memory_budget)
    q, g = _check_features(q_feat, g_feat, metric)
    source = FeatureRows(q, g, metric, memory_budget)
    if chunk_size is None:
        chunk_size = max(1, memory_budget // source.bytes_per_row)
    chunk_size = _check_int("chunk_size", chunk_size)
    out = torch.empty(q.shape[0], g.shape[0], dtype=torch.float32, device=q.device)
    _rerank(source, k1, k2, lambda_value, out, memory_budget, chunk_size, timings)
    return out if isinstance(q_feat, torch.Tensor) else out.numpy()
