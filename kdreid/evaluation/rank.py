"""CMC, mAP and mINP under the Market-1501 protocol, vectorised in torch and chunked over queries.

Same numbers as FastReID's ``fastreid.evaluation.rank.evaluate_rank`` (its Python and Cython paths
agree), without Cython, on the device of the distance matrix, with bounded memory.

Protocol, per query: gallery items with the query's pid **and** camera are junk and removed; the
remaining items with the query's pid are its positives; a query without positives is skipped and
every average runs over the valid queries only. Ranks are 1-based positions in the query's ranked
list after junk removal.

Ties: the ranked list is the **stable** sort of the row, i.e. items ordered by ``(distance, gallery
index)``, what ``torch.sort(stable=True)`` and ``np.argsort(kind="stable")`` give: a negative at the
same distance as a positive comes before it iff its gallery index is smaller. FastReID sorts with
``np.argsort``'s default quicksort, which is not stable, so on exact ties its order (and numbers)
are implementation-defined; on tie-free rows both agree exactly.

How it is computed: AP, INP and CMC need only the ranks of the positives, so rows are not sorted.
The gallery is grouped by pid once, which gives each query its few same-pid items (positives and
junk) without scanning the row; they are sorted, which orders the positives and says how many
same-pid items rank before each. A positive's rank is then its place among the positives plus the
number of all items before it minus those same-pid ones. All items before it are counted with a
histogram: each distance of a block of rows gets a bin on a uniform grid over the block's range
(``BINS_PER_ITEM`` bins per gallery item), a per-row histogram and its running sum count the
items in lower bins than the positive's (all closer), and the few items in the positive's own bin
are compared with it exactly, ties by gallery index. The work is a handful of passes over the
row, ``O(G)``, whatever the data: it does not grow with how deep the positives rank, where a sort
costs ``O(G log G)`` always. A row whose distances crowd into its positives' bins (many exact
ties, or a range stretched by an outlier; see ``CROWDED_SHARE``) is ranked by a stable sort.

Memory: the distance matrix is read one block of query rows at a time and never copied on its
device (a NumPy matrix is used in place on the CPU). A block of ``B`` rows holds at most about
``BYTES_PER_ENTRY * B * G`` bytes of temporaries (the stable-sort fallback is the largest), so the
default block size keeps them within ``DEFAULT_MEMORY_BUDGET`` on the CPU, 64 MiB (87 rows of
Market-1501's 15,913 gallery images, 17 of MSMT17's 82,161: blocks that stay in the caches run
about 1.5x faster than 256 MiB ones), and ``CUDA_MEMORY_BUDGET``, 256 MiB, on a GPU (fewer kernel
launches).
"""

import logging
import numbers
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "evaluate_rank",
    "default_chunk_size",
    "DEFAULT_MEMORY_BUDGET",
    "CUDA_MEMORY_BUDGET",
    "BYTES_PER_ENTRY",
    "BINS_PER_ITEM",
    "CROWDED_SHARE",
]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 64 * 2**20
"""Bytes of temporaries one block of query rows may use on the CPU when ``chunk_size`` is not
given."""

CUDA_MEMORY_BUDGET = 256 * 2**20
"""The same on a CUDA device."""

BYTES_PER_ENTRY = 48
"""Bound on temporary bytes per distance entry of a block. Measured peaks (VmHWM, one block of
400 x 20,000): 12 to 14 when rows are counted (int64 bins, the histogram, the marked items); 36
when every row is crowded and sorted (float32: sorted values, int64 order, gathered ids, masks,
cumulative ranks); 48 for an integer matrix, converted to float64 first, whose ties crowd every
row."""

BINS_PER_ITEM = 0.5
"""Histogram bins per gallery item in :func:`_block_ranks`, spread uniformly over the block's
range of distances: the more bins, the fewer items share a positive's bin and need an exact
comparison, the larger the histogram. 0.25 to 1 time alike on Market-1501-sized data."""

CROWDED_SHARE = 0.125
"""A row is ranked by a stable sort when the exact comparisons of the items sharing its
positives' bins (each item once per positive in its bin) outnumber this share of its length (see
:func:`_block_ranks`). ReID rows have a few items per positive there: a few dozen of 15,913."""


class _RankInputs(NamedTuple):
    """Validated inputs, all on the distance matrix's device."""

    distmat: torch.Tensor  # (num_query, num_gallery)
    q_pids: torch.Tensor  # (num_query,) int64
    g_pids: torch.Tensor  # (num_gallery,) int64
    q_camids: torch.Tensor  # (num_query,) int64
    g_camids: torch.Tensor  # (num_gallery,) int64


class _Gallery(NamedTuple):
    """Gallery ids, with the gallery grouped by person id."""

    pids: torch.Tensor  # (G,) int64
    camids: torch.Tensor  # (G,) int64
    by_pid: torch.Tensor  # (G,) int64 gallery indices ordered by (pid, index)
    sorted_pids: torch.Tensor  # (G,) int64, pids[by_pid]


class _SamePid(NamedTuple):
    """Each query's gallery items of its own identity, padded to a width S."""

    dist: torch.Tensor  # (B, S) their distances (arbitrary on padding)
    index: torch.Tensor  # (B, S) their gallery indices, ascending (arbitrary on padding)
    positive: torch.Tensor  # (B, S) bool: same pid, other camera
    junk: torch.Tensor  # (B, S) bool: same pid, same camera


class _Positives(NamedTuple):
    """Each query's positives in ranked order, padded to a width P."""

    dist: torch.Tensor  # (B, P) distances, +inf on padding
    index: torch.Tensor  # (B, P) gallery indices, G on padding
    same_before: torch.Tensor  # (B, P) int64 same-pid items (positives, junk) ranked before it
    num_pos: torch.Tensor  # (B,) int64


class _BlockRanks(NamedTuple):
    """Ranks of the positives of a block of queries."""

    ranks: torch.Tensor  # (B, P) int64: rank of the k-th closest positive; >= 1 past num_pos
    num_pos: torch.Tensor  # (B,) int64: positives per query after junk removal


def default_chunk_size(num_gallery, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Number of query rows per block so that a block's temporaries fit ``memory_budget`` bytes.

    Args:
        num_gallery (int): number of gallery items ``G``.
        memory_budget (int): bytes of temporaries allowed per block.

    Returns:
        int: at least 1.
    """
    return max(1, int(memory_budget) // (BYTES_PER_ENTRY * max(1, num_gallery)))


def as_tensor(array):
    """A NumPy array or tensor as a tensor, shared in place where torch can share it (a copy in
    native byte order where it cannot: read-only, non-native or negatively strided arrays)."""
    if isinstance(array, torch.Tensor):
        return array.detach()
    array = np.asarray(array)
    shareable = (
        array.flags.writeable and array.dtype.isnative and all(s >= 0 for s in array.strides)
    )
    if not shareable:
        array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C")
    return torch.from_numpy(array)


def _as_ids(array, name, expected, expected_what, device):
    """Validate a 1-D integer id array of ``expected`` entries; return it on ``device`` as int64."""
    ids = as_tensor(array)
    if ids.dim() != 1 or ids.numel() != expected:
        raise ValueError(
            f"{name} must be 1-D with {expected} entries ({expected_what}), "
            f"got shape {tuple(ids.shape)}"
        )
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
    return ids.to(device=device, dtype=torch.int64)


def _codes(query, gallery, name):
    """Ids that are not numbers (strings, as FastReID's Python ranker accepts) as integer codes,
    the same code for the same id in the query and the gallery; numbers as they are."""
    arrays = [a if torch.is_tensor(a) else np.asarray(a) for a in (query, gallery)]
    if all(torch.is_tensor(a) or a.dtype.kind in "biuf" for a in arrays):
        return query, gallery
    try:
        _, codes = np.unique(np.concatenate([np.asarray(a).reshape(-1) for a in arrays]),
                             return_inverse=True)  # fmt: skip
    except TypeError as exc:
        raise ValueError(
            f"q_{name} and g_{name} must be integers or comparable ids (e.g. strings): {exc}"
        ) from exc
    split = np.asarray(arrays[0]).size
    return codes[:split].reshape(np.shape(arrays[0])), codes[split:].reshape(np.shape(arrays[1]))


def _validate(distmat, q_pids, g_pids, q_camids, g_camids):
    """Check shapes, dtypes and emptiness; return every input on the distmat's device."""
    q_pids, g_pids = _codes(q_pids, g_pids, "pids")
    q_camids, g_camids = _codes(q_camids, g_camids, "camids")
    dist = as_tensor(distmat)
    if dist.dim() != 2:
        raise ValueError(
            f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}"
        )
    if dist.is_complex() or dist.dtype == torch.bool:
        raise ValueError(f"distmat must hold real numbers, got dtype {dist.dtype}")
    num_q, num_g = dist.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(
            f"distmat has {num_q} queries and {num_g} gallery items; both must be non-empty"
        )
    q_what = "distmat.shape[0], the number of queries"
    g_what = "distmat.shape[1], the number of gallery items"
    return _RankInputs(
        distmat=dist,
        q_pids=_as_ids(q_pids, "q_pids", num_q, q_what, dist.device),
        g_pids=_as_ids(g_pids, "g_pids", num_g, g_what, dist.device),
        q_camids=_as_ids(q_camids, "q_camids", num_q, q_what, dist.device),
        g_camids=_as_ids(g_camids, "g_camids", num_g, g_what, dist.device),
    )


def _block_distances(distmat, start, stop):
    """Rows ``start:stop`` as float32/float64, checked for NaN and inf, with their smallest and
    largest value (floats)."""
    dist = distmat[start:stop]
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    elif not dist.is_floating_point():
        dist = dist.double()
    low, high = torch.aminmax(dist)  # NaN propagates
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        row = int((~torch.isfinite(dist)).any(dim=1).nonzero()[0, 0]) + start
        raise ValueError(f"distmat contains NaN or inf (first in query row {row})")
    return dist, low, high


def _index_gallery(g_pids, g_camids):
    """Group the gallery by person id (a stable sort, so indices ascend within a pid)."""
    sorted_pids, by_pid = torch.sort(g_pids, stable=True)
    return _Gallery(pids=g_pids, camids=g_camids, by_pid=by_pid, sorted_pids=sorted_pids)


def _same_pid_items(dist, q_pids, q_camids, gallery):
    """Gallery items sharing each query's pid, split into positives and junk.

    Args:
        dist (Tensor): (B, G) distances.
        q_pids, q_camids (Tensor): (B,) int64.
        gallery (_Gallery): the grouped gallery.

    Returns:
        _SamePid: padded to S = the largest same-pid group of the block (at least 1).
    """
    first = torch.searchsorted(gallery.sorted_pids, q_pids)
    count = torch.searchsorted(gallery.sorted_pids, q_pids, right=True) - first
    width = max(int(count.max()), 1)
    offset = torch.arange(width, device=dist.device)
    valid = offset < count.unsqueeze(1)
    slot = (first.unsqueeze(1) + offset).clamp(max=gallery.by_pid.numel() - 1)
    index = torch.where(valid, gallery.by_pid[slot], 0)
    same_cam = gallery.camids[index] == q_camids.unsqueeze(1)
    return _SamePid(
        dist=dist.gather(1, index),
        index=index,
        positive=valid & ~same_cam,
        junk=valid & same_cam,
    )


def _positives_in_order(same, num_gallery):
    """Each query's positives in ranked order (by distance, then gallery index), and how many of
    its same-pid items (positives and junk) rank before each.

    Args:
        same (_SamePid): the block's same-pid items (slots ascend in gallery index).
        num_gallery (int): ``G``, the index given to padding.

    Returns:
        _Positives: padded to ``P = max(num_pos, 1)`` columns.
    """
    num_rows = same.dist.shape[0]
    device = same.dist.device
    key = torch.where(same.positive | same.junk, same.dist, float("inf"))
    # a stable sort of slots that ascend in gallery index orders by (distance, index)
    order = torch.sort(key, dim=1, stable=True).indices
    positive = same.positive.gather(1, order)
    num_pos = positive.sum(dim=1)
    width = max(int(num_pos.max()), 1)
    rows, cols = positive.nonzero(as_tuple=True)  # row-major, ascending within a row
    slots = torch.arange(rows.numel(), device=device) - (num_pos.cumsum(0) - num_pos)[rows]
    source = order[rows, cols]
    dist = torch.full((num_rows, width), float("inf"), dtype=same.dist.dtype, device=device)
    dist[rows, slots] = same.dist[rows, source]
    index = torch.full((num_rows, width), num_gallery, dtype=torch.int64, device=device)
    index[rows, slots] = same.index[rows, source]
    same_before = torch.zeros(num_rows, width, dtype=torch.int64, device=device)
    same_before[rows, slots] = cols  # its place among the sorted same-pid items
    return _Positives(dist=dist, index=index, same_before=same_before, num_pos=num_pos)


def _before(dist, index, pos_dist, pos_index):
    """Whether items ``(dist, index)`` rank before positives ``(pos_dist, pos_index)``: closer,
    or as close with a smaller gallery index (a stable sort's order)."""
    return (dist < pos_dist) | ((dist == pos_dist) & (index < pos_index))


def _bins(values, low, scale, num_bins):
    """Histogram bins ``floor((values - low) * scale)`` clamped to ``[0, num_bins)``, int64.

    Every step rounds monotonically, so ``a < b`` implies ``bin(a) <= bin(b)``: an item in a
    lower bin than a positive is closer than it, one in a higher bin farther. Each step is a
    separate correctly rounded operation (no fused multiply-add), so equal values share a bin.
    """
    return values.sub(low).mul_(scale).clamp_(0, num_bins - 1).long()  # truncation: floor


def _ranks_by_sorting(dist, q_pids, q_camids, gallery, width):
    """Ranks of the positives from a stable sort of each row (the rows :func:`_block_ranks`
    finds crowded).

    Args:
        dist (Tensor): (B, G) finite distances.
        q_pids, q_camids (Tensor): (B,) int64.
        gallery (_Gallery): gallery ids.
        width (int): number of rank columns, at least the largest num_pos of these rows.

    Returns:
        Tensor: (B, width) int64 ranks, 1-based, junk removed.
    """
    order = torch.sort(dist, dim=1, stable=True).indices
    same_pid = gallery.pids[order] == q_pids.unsqueeze(1)
    junk = same_pid & (gallery.camids[order] == q_camids.unsqueeze(1))
    positive = same_pid & ~junk
    kept_rank = (~junk).cumsum(dim=1)
    num_pos = positive.sum(dim=1)
    rows, cols = positive.nonzero(as_tuple=True)  # row-major: ascending rank within a row
    slots = torch.arange(rows.numel(), device=dist.device) - (num_pos.cumsum(0) - num_pos)[rows]
    ranks = torch.ones(dist.shape[0], width, dtype=torch.int64, device=dist.device)
    ranks[rows, slots] = kept_rank[rows, cols]
    return ranks


def _block_ranks(dist, low, high, q_pids, q_camids, gallery):
    """Ranks of every positive of a block of queries, junk removed, in stable order.

    A positive's rank is its place among the positives plus the negatives before it: all items
    before it, minus the same-pid ones (a handful per query, sorted directly). Items in a lower
    histogram bin than the positive are before it, items in a higher one after it (see
    :func:`_bins`), so a per-row histogram of the block's bins and its running sum count all but
    the items sharing the positive's bin, and those few are compared exactly. Rows where that
    comparison would cost more than a pass over the row (distances crowded into a few bins: many
    exact ties, or a range stretched by outliers) are ranked by a stable sort instead.

    Args:
        dist (Tensor): (B, G) finite distances.
        low, high (float): their smallest and largest value.
        q_pids, q_camids (Tensor): (B,) int64.
        gallery (_Gallery): the grouped gallery.

    Returns:
        _BlockRanks
    """
    num_rows, num_gallery = dist.shape
    device = dist.device
    pos = _positives_in_order(_same_pid_items(dist, q_pids, q_camids, gallery), num_gallery)
    width = pos.dist.shape[1]
    valid = torch.arange(width, device=device) < pos.num_pos.unsqueeze(1)

    num_bins = max(1, round(BINS_PER_ITEM * num_gallery))
    scale = num_bins / (high - low) if high > low else 0.0
    if not 0 < scale < float("inf"):  # one value, or a range too wide or too narrow for floats
        scale = 0.0  # one bin: every row is crowded
    bins = _bins(dist, low, scale, num_bins)  # (B, G)
    pos_bins = torch.where(valid, _bins(pos.dist.clamp(max=high), low, scale, num_bins), num_bins)

    # items in lower bins than each positive, from a per-row histogram
    hist = torch.zeros(num_rows, num_bins + 1, dtype=torch.int32, device=device)
    hist.scatter_add_(1, bins, torch.ones(1, dtype=torch.int32, device=device).expand_as(bins))
    in_bin = hist.gather(1, pos_bins)  # items in each positive's bin (none in padding's)
    below = hist.cumsum(dim=1, dtype=torch.int32).sub_(hist).gather(1, pos_bins)
    del hist

    # items sharing a positive's bin: each compared with that bin's positives, which are
    # consecutive in ranked order (found by binary search on (row, bin) keys); a row with more
    # such comparisons than CROWDED_SHARE of its length is left to the sort
    crowded = in_bin.sum(dim=1) > CROWDED_SHARE * num_gallery
    marked = torch.zeros(num_rows, num_bins + 1, dtype=torch.bool, device=device)
    marked.scatter_(1, pos_bins, True)  # padding marks the extra bin, which holds no item
    if bool(crowded.any()):
        marked &= ~crowded.unsqueeze(1)
    rows, cols = marked.gather(1, bins).nonzero(as_tuple=True)
    keys = pos_bins + (num_bins + 1) * torch.arange(num_rows, device=device).unsqueeze(1)
    keys = keys.view(-1)  # ascending: positives' bins ascend along a row, padding last
    item_keys = bins[rows, cols] + (num_bins + 1) * rows
    del bins
    first = torch.searchsorted(keys, item_keys)
    count = torch.searchsorted(keys, item_keys, right=True) - first
    owner = torch.repeat_interleave(count)  # one entry per (item, positive in its bin)
    slot = (
        first[owner] + torch.arange(owner.numel(), device=device) - (count.cumsum(0) - count)[owner]
    )
    item = rows[owner], cols[owner]
    ahead = _before(dist[item], item[1], pos.dist.view(-1)[slot], pos.index.view(-1)[slot])
    within = torch.bincount(slot[ahead], minlength=num_rows * width).view(num_rows, width)

    ranks = below + within - pos.same_before + torch.arange(1, width + 1, device=device)
    if bool(crowded.any()):
        rows = crowded.nonzero().squeeze(1)
        ranks[rows] = _ranks_by_sorting(dist[rows], q_pids[rows], q_camids[rows], gallery, width)
    return _BlockRanks(ranks=ranks, num_pos=pos.num_pos)


def _query_metrics(block, ap="standard"):
    """AP, INP and first-hit rank of the valid queries of a block.

    Args:
        block (_BlockRanks): ranks (B, P) and num_pos (B,).
        ap (str): ``"standard"`` or ``"trapezoid"`` (see :func:`evaluate_rank`).

    Returns:
        tuple[Tensor, Tensor, Tensor]: AP (V,) float64, INP (V,) float64 and the rank of the
        first positive (V,) int64, for the ``V`` queries with a positive, in query order.
    """
    valid = block.num_pos > 0
    ranks = block.ranks[valid].double()
    num_pos = block.num_pos[valid]
    slots = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
    last = (num_pos - 1).unsqueeze(1)
    # A running sum read at the last positive: the same additions whatever the padded width, so
    # results do not depend on how queries are grouped into blocks.
    precision = slots / ranks
    if ap == "trapezoid":
        # the precision just before each positive: 1 before the first rank, as Market's code
        before = torch.where(ranks > 1, (slots - 1) / (ranks - 1).clamp(min=1), 1.0)
        precision = (before + precision) / 2
    ap = precision.cumsum(dim=1).gather(1, last).squeeze(1) / num_pos
    inp = num_pos / ranks.gather(1, last).squeeze(1)
    return ap, inp, block.ranks[valid, 0]


def _cmc(first_hits, max_rank):
    """CMC curve: fraction of valid queries whose first positive is within each rank.

    Args:
        first_hits (Tensor): (V,) int64 1-based rank of each valid query's first positive.
        max_rank (int): length of the curve.

    Returns:
        np.ndarray: (max_rank,) float32, as FastReID computes it (float32 count / count).
    """
    counts = torch.bincount(first_hits.clamp(max=max_rank + 1).cpu() - 1, minlength=max_rank)
    hits = counts[:max_rank].cumsum(0).numpy().astype(np.float32)
    return hits / np.float32(first_hits.numel())


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


@torch.no_grad()
def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank=50,
    use_metric_cuhk03=False,
    use_cython=True,
    *,
    chunk_size=None,
    ap="standard",
):
    """CMC, AP and INP of every query under the Market-1501 protocol.

    A drop-in for ``fastreid.evaluation.rank.evaluate_rank``, same arguments. For a valid query
    with positives at ranks ``r_1 < ... < r_n`` (1-based, junk removed):
    ``AP = (1/n) sum_k k / r_k``, ``INP = n / r_n``, and its CMC curve is 1 from rank ``r_1`` on.
    ``ap="trapezoid"`` averages instead the trapezoids under the precision-recall curve, as the
    original Market-1501 MATLAB code (``compute_AP.m``) does:
    ``AP = (1/n) sum_k ((k - 1) / (r_k - 1) + k / r_k) / 2`` (the first term 1 when ``r_k = 1``).

    Args:
        distmat (np.ndarray | Tensor): (num_query, num_gallery) distances, smaller is closer; any
            real dtype, finite. Computation runs on its device.
        q_pids (np.ndarray | Tensor): (num_query,) integer person ids of the queries.
        g_pids (np.ndarray | Tensor): (num_gallery,) integer person ids of the gallery.
        q_camids (np.ndarray | Tensor): (num_query,) integer camera ids of the queries.
        g_camids (np.ndarray | Tensor): (num_gallery,) integer camera ids of the gallery.
        max_rank (int): length of the CMC curve; lowered to num_gallery when that is smaller, as in
            FastReID. Ranks past the end of a query's list (after junk removal) count as found.
        use_metric_cuhk03 (bool): CUHK03's classic single-gallery-shot protocol instead, as
            FastReID's: per query, one image of each gallery identity drawn at random (numpy's
            global generator, drawn in FastReID's order, so the same seed gives the same
            result), 10 repeats averaged into the CMC; returns ``(cmc, mAP)`` like FastReID. On
            the CPU, in numpy.
        use_cython (bool): accepted for FastReID's signature; there is one implementation.
        chunk_size (int | None): query rows per block; default :func:`default_chunk_size` of
            ``DEFAULT_MEMORY_BUDGET`` (CPU) or ``CUDA_MEMORY_BUDGET`` (CUDA).
        ap (str): ``"standard"`` (FastReID's, the default) or ``"trapezoid"`` (Market's MATLAB).

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray]: ``cmc`` (min(max_rank, num_gallery),) float32
        averaged over the valid queries; ``all_AP`` (V,) and ``all_INP`` (V,) float64 for the
        ``V`` valid queries, in query order. With ``use_metric_cuhk03``: ``(cmc, mAP)``.

    Raises:
        ValueError: mismatched or empty inputs, NaN/inf distances, ``max_rank`` or ``chunk_size``
            not an integer of at least 1, an unknown ``ap``, or no query with a positive in the
            gallery.

    Reference:
        Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015 (protocol, CMC,
        mAP). Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
        TPAMI 2021 (mINP).
    """
    inputs = _validate(distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = inputs.distmat.shape
    _check_positive_int("max_rank", max_rank)
    if ap not in ("standard", "trapezoid"):
        raise ValueError(f"ap must be 'standard' or 'trapezoid', got {ap!r}")
    if use_metric_cuhk03:
        if num_q:  # the same refusal of NaN and inf as below, before numpy ranks them silently
            _block_distances(inputs.distmat, 0, num_q)
        return _evaluate_cuhk03(inputs, min(int(max_rank), num_g))
    if chunk_size is None:
        cuda = inputs.distmat.device.type == "cuda"
        chunk_size = default_chunk_size(
            num_g, CUDA_MEMORY_BUDGET if cuda else DEFAULT_MEMORY_BUDGET
        )
    _check_positive_int("chunk_size", chunk_size)
    if num_g < max_rank:
        logger.info("Gallery has only %d items; CMC is computed up to rank %d", num_g, num_g)
        max_rank = num_g

    gallery = _index_gallery(inputs.g_pids, inputs.g_camids)
    all_ap, all_inp, first_hits = [], [], []
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        dist, low, high = _block_distances(inputs.distmat, start, stop)
        q_pids, q_camids = inputs.q_pids[start:stop], inputs.q_camids[start:stop]
        block = _block_ranks(dist, low, high, q_pids, q_camids, gallery)
        ap_block, inp, first = _query_metrics(block, ap)
        all_ap.append(ap_block)
        all_inp.append(inp)
        first_hits.append(first)

    first_hits = torch.cat(first_hits)
    if first_hits.numel() == 0:
        raise ValueError(
            "No query has a valid match: none of the query identities appears in the gallery "
            "under another camera (FastReID: 'all query identities do not appear in gallery')"
        )
    all_ap = torch.cat(all_ap).cpu().numpy()
    all_inp = torch.cat(all_inp).cpu().numpy()
    return _cmc(first_hits, max_rank), all_ap, all_inp


CUHK03_REPEATS = 10
"""Random single-shot galleries per query in CUHK03's classic protocol (FastReID's count)."""


def _evaluate_cuhk03(inputs, max_rank):
    """CUHK03's single-gallery-shot protocol (see :func:`evaluate_rank`), query by query in numpy.

    FastReID draws, for each valid query, each repeat and each gallery identity in the order of
    its first appearance in the query's ranked list, one image with ``np.random.choice``; one
    vectorised ``np.random.randint`` over the same list of sizes draws the same numbers.
    """
    dist = inputs.distmat.cpu().numpy()
    q_pids, g_pids = inputs.q_pids.cpu().numpy(), inputs.g_pids.cpu().numpy()
    q_cams, g_cams = inputs.q_camids.cpu().numpy(), inputs.g_camids.cpu().numpy()
    all_cmc, all_ap = [], []
    for q in range(len(dist)):
        order = np.argsort(dist[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q]))
        pids = g_pids[order][keep]
        positive = pids == q_pids[q]
        if not positive.any():
            continue
        # identities in order of first appearance; each one's positions, ascending
        _, first, group = np.unique(pids, return_index=True, return_inverse=True)
        rank_of_group = np.argsort(np.argsort(first, kind="stable"), kind="stable")
        group = rank_of_group[group.reshape(-1)]
        counts = np.bincount(group)
        positions = np.argsort(group, kind="stable")  # grouped, ascending within a group
        starts = np.cumsum(counts) - counts
        # FastReID's generator, so that a seed gives its numbers
        sizes = np.tile(counts, CUHK03_REPEATS)
        draws = np.random.randint(0, sizes).reshape(CUHK03_REPEATS, -1)  # noqa: NPY002
        chosen = positions[starts + draws]  # (repeats, identities): one position each
        own = chosen[:, group[np.flatnonzero(positive)[0]]]
        hit_rank = (chosen < own[:, None]).sum(axis=1)  # 0-based among the drawn images
        width = min(max_rank, len(counts))
        cmc = np.float32(0.0)
        for r in range(CUHK03_REPEATS):  # float32 sums in FastReID's order
            cmc = cmc + (np.arange(width) >= hit_rank[r]).astype(np.float32)
        all_cmc.append(cmc / CUHK03_REPEATS)
        hits = np.flatnonzero(positive)
        all_ap.append(float(np.sum(np.arange(1, len(hits) + 1) / (hits + 1.0)) / len(hits)))
    if not all_cmc:
        raise ValueError(
            "No query has a valid match: none of the query identities appears in the gallery "
            "under another camera (FastReID: 'all query identities do not appear in gallery')"
        )
    width = max(len(c) for c in all_cmc)  # ragged only if some query has fewer identities:
    all_cmc = np.stack([np.pad(c, (0, width - len(c)), constant_values=1.0) for c in all_cmc])
    return all_cmc.sum(0) / np.float32(len(all_cmc)), float(np.mean(all_ap))
