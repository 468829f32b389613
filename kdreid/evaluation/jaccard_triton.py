"""Jaccard distances of k-reciprocal re-ranking from sparse rows: a Triton kernel, a torch path.

For chunks of query rows of the sparse encoding ``V`` (rows sum to 1) :func:`jaccard_chunks`
gives ``d_J(i, j) = 1 - m / (2 - m)`` against every gallery row ``j``, where

    m(i, j) = sum_k min(V[i, k], V[j, k])

over the gallery rows ``j`` that share a nonzero column ``k`` with row ``i``, found through an
inverted index (column ``k`` -> the gallery rows holding it). Only those pairs are visited: a query
row with ``n`` nonzeros costs the sum of its ``n`` columns' lengths, not ``G``; chunks of query rows
are sized so that their contributions and their (rows, G) block fit a memory budget.

:func:`jaccard_accumulate` picks the implementation:

- CUDA tensors (and Triton installed): the Triton kernel, one program per query entry ``(i, k)``
  walking column ``k`` in tiles with atomic adds (the order of the additions into one ``m(i, j)``
  is then unspecified: results may differ from the torch path in the last bit);
- ``TRITON_INTERPRET=1`` in the environment (and Triton installed): the same kernel under
  Triton's interpreter, on any device; this is how the kernel is tested on a CPU. Triton reads the
  variable when a kernel is decorated, so the kernel is decorated lazily, once per mode;
- otherwise the torch path: every contribution is expanded and added with ``index_add_``. On the
  CPU the additions into one ``m(i, j)`` follow ascending ``k``, the order of the reference's loop,
  so its float32 sums are reproduced bit for bit.

Reference:
    Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017.
"""

import functools
import os
from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # torch wheels without Triton (e.g. CPU-only): the torch path is used
    triton = None

__all__ = [
    "SparseRows",
    "sparse_rows",
    "segments",
    "jaccard_chunks",
    "jaccard_accumulate",
    "triton_mode",
]

BLOCK = 64
"""Inverted-index entries one kernel program handles per step (about one column's length)."""

BYTES_PER_CONTRIBUTION = 20
"""Temporary bytes per visited (query entry, gallery entry) pair on the torch path."""


class SparseRows(NamedTuple):
    """Rows of ``V`` in CSR form, columns ascending within a row."""

    crow: torch.Tensor  # (N + 1,) int64 start of each row's entries
    rows: torch.Tensor  # (nnz,) int64
    cols: torch.Tensor  # (nnz,) int64
    vals: torch.Tensor  # (nnz,) float32


def _starts(index, size):
    """(size + 1,) int64 start of each value's run in the sorted ``index`` (a CSR pointer)."""
    ptr = torch.zeros(size + 1, dtype=torch.int64, device=index.device)
    ptr[1:] = torch.cumsum(torch.bincount(index, minlength=size), 0)
    return ptr


def sparse_rows(rows, cols, vals, num_rows):
    """:class:`SparseRows` from entries sorted by (row, col)."""
    return SparseRows(_starts(rows, num_rows), rows, cols, vals)


def segments(ptr, which):
    """Positions of the entries of segments ``which`` of a CSR pointer, concatenated.

    Args:
        ptr (Tensor): (S + 1,) int64 segment starts.
        which (Tensor): (M,) int64 segment ids.

    Returns:
        tuple[Tensor, Tensor]: positions (T,) int64 and, for each, its index into ``which``.
    """
    counts = ptr[which + 1] - ptr[which]
    owner = torch.repeat_interleave(torch.arange(which.numel(), device=which.device), counts)
    first = ptr[which] - (torch.cumsum(counts, 0) - counts)
    return torch.arange(owner.numel(), device=which.device) + first[owner], owner


def _chunks(costs, limit):
    """Consecutive ranges of items whose summed ``costs`` stay within ``limit`` (one at least)."""
    ends = torch.cumsum(costs.double(), 0).cpu()
    bounds, start, total = [], 0, costs.numel()
    while start < total:
        done = float(ends[start - 1]) if start else 0.0
        stop = int(torch.searchsorted(ends, done + limit, right=True))
        stop = min(max(stop, start + 1), total)
        bounds.append((start, stop))
        start = stop
    return bounds


def jaccard_chunks(v, num_query, memory_budget):
    """Jaccard distances of the query rows to the gallery rows, chunk by chunk.

    Args:
        v (SparseRows): the N rows of ``V``, queries first (rows ``< num_query``).
        num_query (int): number of query rows ``q``; the other ``g = N - q`` are the gallery.
        memory_budget (int): bytes of temporaries per chunk (a chunk holds one row at least).

    Yields:
        tuple[int, int, Tensor]: ``start``, ``stop`` and the (stop - start, g) float32
        ``1 - m / (2 - m)`` of query rows ``start:stop``.
    """
    num_items = v.crow.numel() - 1
    num_gallery = num_items - num_query
    gallery = v.rows >= num_query
    by_col = torch.argsort(v.cols[gallery], stable=True)
    inv_rows = (v.rows[gallery] - num_query)[by_col].int()
    inv_vals = v.vals[gallery][by_col]
    inv_ptr = _starts(v.cols[gallery][by_col], num_items)
    q_entries = int(v.crow[num_query])
    visits = (inv_ptr[1:] - inv_ptr[:-1])[v.cols[:q_entries]].double()
    cost = torch.full((num_query,), 12.0 * num_gallery, dtype=torch.float64, device=v.vals.device)
    cost.index_add_(0, v.rows[:q_entries], BYTES_PER_CONTRIBUTION * visits)
    workspace = _Workspace()
    for start, stop in _chunks(cost, memory_budget):
        first, last = int(v.crow[start]), int(v.crow[stop])
        m = torch.zeros(stop - start, num_gallery, dtype=torch.float32, device=v.vals.device)
        jaccard_accumulate(
            v.rows[first:last] - start, v.cols[first:last], v.vals[first:last],
            inv_ptr, inv_rows, inv_vals, m, workspace,
        )  # fmt: skip
        yield start, stop, m.div_(2 - m).neg_().add_(1)


def triton_mode(device):
    """How :func:`jaccard_accumulate` runs on ``device``.

    Returns:
        str: ``"interpreter"`` (``TRITON_INTERPRET=1``), ``"triton"`` (CUDA) or ``"torch"``.
    """
    if triton is None:
        return "torch"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "interpreter"
    return "triton" if torch.device(device).type == "cuda" else "torch"


def jaccard_accumulate(
    entry_rows, entry_cols, entry_vals, inv_ptr, inv_rows, inv_vals, out, workspace=None
):  # fmt: skip
    """Add ``min(v, w)`` into ``out[r, j]`` for every query entry and every index entry sharing it.

    For each query entry ``e`` (row ``r = entry_rows[e]`` of ``out``, column ``k = entry_cols[e]``,
    value ``v = entry_vals[e]``) and each ``p`` in ``inv_ptr[k]:inv_ptr[k + 1]``, add
    ``min(v, inv_vals[p])`` into ``out[r, inv_rows[p]]``. Within one column the rows
    ``inv_rows[p]`` must be distinct (they are the rows holding that column).

    Args:
        entry_rows (Tensor): (E,) int64 row of ``out`` of each query entry.
        entry_cols (Tensor): (E,) int64 column ``k`` of each query entry, in ``[0, K)``.
        entry_vals (Tensor): (E,) float32 values ``V[i, k]``.
        inv_ptr (Tensor): (K + 1,) int64 start of each column's entries in the index.
        inv_rows (Tensor): (P,) int32 column of ``out`` (gallery row) of each index entry.
        inv_vals (Tensor): (P,) float32 values ``V[j, k]``.
        out (Tensor): (B, G) float32 contiguous accumulator, updated in place; ``B * G < 2**31``.
        workspace (_Workspace | None): buffers the torch path reuses across calls.

    Returns:
        Tensor: ``out``.
    """
    if entry_rows.numel() == 0:
        return out
    mode = triton_mode(out.device)
    if mode == "torch":
        workspace = _Workspace() if workspace is None else workspace
        return _accumulate_torch(
            entry_rows, entry_cols, entry_vals, inv_ptr, inv_rows, inv_vals, out, workspace
        )
    kernel = _kernel(interpret=mode == "interpreter")
    kernel[(entry_rows.numel(),)](
        entry_rows, entry_cols, entry_vals, inv_ptr, inv_rows, inv_vals, out, out.stride(0),
        BLOCK=BLOCK, num_warps=2,
    )  # fmt: skip
    return out


def _accumulate_torch(
    entry_rows, entry_cols, entry_vals, inv_ptr, inv_rows, inv_vals, out, workspace
):  # fmt: skip
    """:func:`jaccard_accumulate` in torch: expand every contribution, then ``index_add_``.

    Index positions and owning entries are running sums of jumps, in int32; every per-contribution
    array lives in ``workspace`` (fresh allocations of that size cost more in page faults on the
    CPU than the arithmetic).
    """
    first = inv_ptr[entry_cols]
    counts = inv_ptr[entry_cols + 1] - first
    keep = counts > 0
    rows, vals, first, counts = entry_rows[keep], entry_vals[keep], first[keep], counts[keep]
    if counts.numel() == 0:
        return out
    total = int(counts.sum())
    jumps, pos, owner, mins, other = workspace.get(total, out.device)
    starts = (torch.cumsum(counts, 0) - counts)[1:]
    jumps.fill_(1)[starts] = (first[1:] - first[:-1] - counts[:-1] + 1).int()
    jumps[0] = first[0]
    torch.cumsum(jumps, 0, dtype=torch.int32, out=pos)
    jumps.zero_()[starts] = 1
    torch.cumsum(jumps, 0, dtype=torch.int32, out=owner)
    torch.index_select(vals, 0, owner, out=mins)
    torch.minimum(mins, torch.index_select(inv_vals, 0, pos, out=other), out=mins)
    flat = torch.index_select((rows * out.stride(0)).int(), 0, owner, out=jumps)
    flat += torch.index_select(inv_rows, 0, pos, out=owner)
    out.view(-1).index_add_(0, flat, mins)
    return out


class _Workspace:
    """Per-contribution arrays of the torch path, reused from chunk to chunk."""

    def __init__(self):
        self.buffer = None

    def get(self, size, device):
        """Three int32 and two float32 arrays of ``size`` entries."""
        if self.buffer is None or self.buffer.shape[1] < size or self.buffer.device != device:
            self.buffer = torch.empty(5, size, dtype=torch.int32, device=device)
        ints = [row[:size] for row in self.buffer[:3]]
        return (*ints, *(row[:size].view(torch.float32) for row in self.buffer[3:]))


@functools.cache
def _kernel(interpret):
    """The Triton kernel, decorated now so that Triton sees the current ``TRITON_INTERPRET``.

    Args:
        interpret (bool): only the cache key: one kernel per mode.
    """
    del interpret
    return triton.jit(_jaccard_kernel)


if triton is not None:

    def _jaccard_kernel(
        entry_rows, entry_cols, entry_vals, inv_ptr, inv_rows, inv_vals, out, row_stride,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        """One program per query entry: walk its column's index entries ``BLOCK`` at a time."""
        entry = tl.program_id(0)
        row = tl.load(entry_rows + entry)
        col = tl.load(entry_cols + entry)
        val = tl.load(entry_vals + entry)
        start = tl.load(inv_ptr + col)
        end = tl.load(inv_ptr + col + 1)
        base = out + row * row_stride
        for tile in range(start, end, BLOCK):
            offs = tile + tl.arange(0, BLOCK)
            mask = offs < end
            gallery = tl.load(inv_rows + offs, mask=mask, other=0)
            weight = tl.load(inv_vals + offs, mask=mask, other=0.0)
            tl.atomic_add(base + gallery, tl.minimum(weight, val), mask=mask, sem="relaxed")
