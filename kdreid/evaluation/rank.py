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
junk) without scanning the row. The ``P`` positive distances are sorted; every gallery item is
placed among them by binary search (``torch.searchsorted``); a per-row histogram of the placements,
minus those of the same-pid items, counts the negatives ranked before each positive. That is
``O(G log P)`` per query instead of the ``O(G log G)`` of a sort. Faster still, only negatives no
farther than the query's last positive can rank before one, so a row is first cut to those
candidates (one comparison per entry, compacted by ``nonzero``) and only they are placed; a row
with too many candidates (a weak model) is placed whole instead (see ``CANDIDATE_WORK_RATIO``). A
row in which some negative's distance equals a positive's exactly is detected and ranked by a
stable sort instead (float32 distances do tie: a few dozen of Market-1501's 3,368 query rows
typically have one).

Memory: the distance matrix is read one block of query rows at a time and never copied on its
device (a NumPy matrix is used in place on the CPU). A block of ``B`` rows holds at most about
``BYTES_PER_ENTRY * B * G`` bytes of temporaries (the stable-sort fallback is the largest), so the
default block size keeps them within ``DEFAULT_MEMORY_BUDGET``: 256 MiB, i.e. 81 rows for MSMT17's
82,161 gallery images and 421 rows for Market-1501's 15,913.
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
    "BYTES_PER_ENTRY",
    "CANDIDATE_WORK_RATIO",
]

logger = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of temporaries one block of query rows may use when ``chunk_size`` is not given."""

BYTES_PER_ENTRY = 40
"""Bound on temporary bytes per distance entry of a block. Measured peaks: 17 on the binary-search
path (int64 placements, gathered distances, masks); 27 (float32) and 31 (float64) when every row
needs the stable-sort fallback (sorted values, int64 order, gathered ids, masks, cumulative ranks);
39 for an integer matrix, which is first converted to float64; 19 on random float32 distances,
where most rows leave the candidate path (its compacted indices) for the binary search."""

CANDIDATE_WORK_RATIO = 1.0
"""A row takes the candidate path iff ``candidates * (P + 1) <= CANDIDATE_WORK_RATIO * G``, where
``candidates`` counts its items no farther than its last positive and ``P`` is the block's widest
positive count; other rows are placed whole by binary search. At 1.0 the candidate path's
temporaries (each candidate compared with the ``P + 1`` sorted positives: 8 to 10 bytes per
comparison) stay within those of placing the whole row, and its work within one pass over it. A
good model has about a hundred candidates per row (Market-1501-like data: 120 on average, rows
of 20+ positives a few thousand), a random one half the gallery, which on the candidate path would
take ~340 bytes per entry. Ratios from 1 to 1000 time alike on the former."""


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
    positive: torch.Tensor  # (B, S) bool: same pid, other camera
    junk: torch.Tensor  # (B, S) bool: same pid, same camera


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
    """Rows ``start:stop`` as float32/float64, checked for NaN and inf."""
    dist = distmat[start:stop]
    if dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    elif not dist.is_floating_point():
        dist = dist.double()
    low, high = torch.aminmax(dist)  # NaN propagates
    if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
        row = int((~torch.isfinite(dist)).any(dim=1).nonzero()[0, 0]) + start
        raise ValueError(f"distmat contains NaN or inf (first in query row {row})")
    return dist


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
        positive=valid & ~same_cam,
        junk=valid & same_cam,
    )


def _sorted_positive_distances(same):
    """Sorted positive distances of each query, padded with +inf.

    Args:
        same (_SamePid): the block's same-pid items.

    Returns:
        tuple[Tensor, Tensor]: (B, P + 1) sorted distances whose last column (at least) is +inf,
        with ``P = max(num_pos, 1)``, and num_pos (B,) int64.
    """
    num_pos = same.positive.sum(dim=1)
    width = max(int(num_pos.max()), 1)
    pos_dist = torch.where(same.positive, same.dist, float("inf"))
    pos_dist = torch.sort(pos_dist, dim=1).values[:, :width]
    return torch.nn.functional.pad(pos_dist, (0, 1), value=float("inf")), num_pos


def _ranks_by_placement(dist, same):
    """Ranks of the positives by binary search, and which rows need the stable-sort fallback.

    ``place[b, j]`` is the number of positives strictly closer than item ``j``. Without ties a
    negative with ``place = l`` lies between positives ``l - 1`` and ``l``, so positive ``k``
    (0-based) has ``k`` positives and ``#{negatives with place <= k}`` negatives before it. A row
    where some negative's distance equals a positive's is flagged: its ranks here are not exact.

    Args:
        dist (Tensor): (B, G) finite distances.
        same (_SamePid): the block's same-pid items.

    Returns:
        tuple[_BlockRanks, Tensor]: the ranks and a (B,) bool mask of the tied rows.
    """
    pos_dist, num_pos = _sorted_positive_distances(same)
    width = pos_dist.shape[1] - 1
    same_valid = same.positive | same.junk
    place = torch.searchsorted(pos_dist, dist)  # (B, G), at most width (last column is +inf)
    place_same = torch.searchsorted(pos_dist, same.dist)  # (B, S)
    # Counting a bool matrix through uint8 with an int32 accumulator is ~9x faster on the CPU than
    # the default bool -> int64 reduction.
    ties_all = (pos_dist.gather(1, place) == dist).view(torch.uint8).sum(dim=1, dtype=torch.int32)
    ties_same = ((pos_dist.gather(1, place_same) == same.dist) & same_valid).sum(dim=1)
    hist = torch.zeros(dist.shape[0], width + 1, dtype=torch.int64, device=dist.device)
    ones = torch.ones(1, dtype=torch.int64, device=dist.device).expand_as(place)
    hist.scatter_add_(1, place, ones)
    hist.scatter_add_(1, place_same, -same_valid.long())
    negatives_before = hist[:, :width].cumsum(dim=1)
    slots = torch.arange(1, width + 1, device=dist.device)
    return _BlockRanks(ranks=negatives_before + slots, num_pos=num_pos), ties_all != ties_same


def _ranks_by_sorting(dist, q_pids, q_camids, gallery, width):
    """Ranks of the positives from a stable sort of each row (exact under ties).

    Args:
        dist (Tensor): (B, G) finite distances.
        q_pids, q_camids (Tensor): (B,) int64.
        gallery (_Gallery): gallery ids.
        width (int): number of rank columns, at least the largest num_pos of these rows.

    Returns:
        _BlockRanks
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
    return _BlockRanks(ranks=ranks, num_pos=num_pos)


def _ranks_by_candidates(dist, q_pids, same, gallery):
    """Ranks of the positives from the negatives no farther than each row's last positive.

    Other negatives rank after every positive and do not matter. Each candidate negative is
    compared with the row's sorted positives; its placement is counted as in
    :func:`_ranks_by_placement`. Rows over the ``CANDIDATE_WORK_RATIO`` budget are left out.

    Args:
        dist (Tensor): (B, G) finite distances.
        q_pids (Tensor): (B,) int64.
        same (_SamePid): the block's same-pid items.
        gallery (_Gallery): gallery ids.

    Returns:
        tuple[_BlockRanks, Tensor, Tensor]: the ranks (exact unless tied; ``1..P`` in left-out
        rows), a (B,) bool mask of the tied rows, and a (B,) bool mask of the left-out rows.
    """
    pos_dist, num_pos = _sorted_positive_distances(same)
    width = pos_dist.shape[1] - 1
    last = pos_dist.gather(1, (num_pos - 1).clamp(min=0).unsqueeze(1))
    last = torch.where(num_pos.unsqueeze(1) > 0, last, float("-inf"))  # skipped rows: none
    # At most 16 bytes per entry (all candidates), then cut to the rows within the budget. The
    # counts come from the compacted rows: cheaper than reducing the (B, G) mask once more.
    rows, cols = (dist <= last).nonzero(as_tuple=True)
    count = torch.bincount(rows, minlength=dist.shape[0])
    dense = count * (width + 1) > CANDIDATE_WORK_RATIO * dist.shape[1]
    if bool(dense.any()):
        keep = ~dense[rows]
        rows, cols = rows[keep], cols[keep]
    negative = gallery.pids[cols] != q_pids[rows]
    rows, cols = rows[negative], cols[negative]
    value = dist[rows, cols].unsqueeze(1)
    row_pos = pos_dist[rows]  # (N, P + 1)
    place = (row_pos < value).sum(dim=1)
    tied = torch.zeros(dist.shape[0], dtype=torch.bool, device=dist.device)
    tied[rows[(row_pos == value).any(dim=1)]] = True
    hist = torch.bincount(rows * (width + 1) + place, minlength=dist.shape[0] * (width + 1))
    negatives_before = hist.view(-1, width + 1)[:, :width].cumsum(dim=1)
    slots = torch.arange(1, width + 1, device=dist.device)
    return _BlockRanks(ranks=negatives_before + slots, num_pos=num_pos), tied, dense


def _block_ranks(dist, q_pids, q_camids, gallery):
    """Ranks of every positive of a block of queries, junk removed, in stable order.

    Rows with few candidates are ranked from those, the others by placing the whole row; rows
    where a negative ties exactly with a positive are re-ranked by a stable sort.
    """
    same = _same_pid_items(dist, q_pids, q_camids, gallery)
    block, tied, dense = _ranks_by_candidates(dist, q_pids, same, gallery)
    if bool(dense.any()):
        rows = dense.nonzero().squeeze(1)
        dense_same = _SamePid(*(field[rows] for field in same))
        placed, tied[rows] = _ranks_by_placement(dist[rows], dense_same)
        block.ranks[rows, : placed.ranks.shape[1]] = placed.ranks
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        exact = _ranks_by_sorting(
            dist[rows], q_pids[rows], q_camids[rows], gallery, block.ranks.shape[1]
        )
        block.ranks[rows] = exact.ranks
    return block


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
        chunk_size (int | None): query rows per block; default :func:`default_chunk_size`.
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
        chunk_size = default_chunk_size(num_g)
    _check_positive_int("chunk_size", chunk_size)
    if num_g < max_rank:
        logger.info("Gallery has only %d items; CMC is computed up to rank %d", num_g, num_g)
        max_rank = num_g

    gallery = _index_gallery(inputs.g_pids, inputs.g_camids)
    all_ap, all_inp, first_hits = [], [], []
    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        dist = _block_distances(inputs.distmat, start, stop)
        block = _block_ranks(dist, inputs.q_pids[start:stop], inputs.q_camids[start:stop], gallery)
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
