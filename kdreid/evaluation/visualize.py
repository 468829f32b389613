"""Pictures of ranked lists, to inspect where a model (or re-ranking) fails.

For a query, :func:`render_ranked_list` draws its thumbnail and then its top-k gallery images in
rank order under the Market-1501 protocol (gallery images of the query's person *and* camera are
junk and left out, as :func:`kdreid.evaluation.evaluate_rank` does; ties keep gallery order, as
there). Each gallery thumbnail has a green border for a true match and a red one for a false
match, and under it its rank, its distance and its person and camera ids. Given a second distance
matrix (re-ranked), a second row "after re-ranking" follows the first. Each row's title gives the
query's AP and the rank of its first true match, from the whole ranked list.

:func:`render_ranked_lists` writes one PNG per chosen query; :func:`pick_queries` chooses them,
worst AP first by default, from :func:`evaluate_rank`'s per-query APs.
"""

import os
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch

from kdreid.checkpoint import atomic_write
from kdreid.errors import UnreadableImageError

__all__ = [
    "Layout",
    "MATCH_COLOUR",
    "MISMATCH_COLOUR",
    "QUERY_COLOUR",
    "RankedList",
    "pick_queries",
    "rank_gallery",
    "render_ranked_list",
    "render_ranked_lists",
    "valid_queries",
]

MATCH_COLOUR = (0, 180, 0)
"""Border of a true match (BGR)."""
MISMATCH_COLOUR = (0, 0, 220)
"""Border of a false match (BGR)."""
QUERY_COLOUR = (200, 120, 0)
"""Border of the query (BGR)."""
_BACKGROUND = (255, 255, 255)
_TEXT = (30, 30, 30)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Layout:
    """Sizes in pixels of a picture's parts.

    A row is a title strip, then the query tile, a gap, and the gallery tiles separated by
    ``spacing``, then two caption lines. A tile is a ``thumb_width`` x ``thumb_height``
    thumbnail inside a ``border`` of its colour.
    """

    thumb_width: int = 64
    thumb_height: int = 128
    border: int = 4
    spacing: int = 6
    query_gap: int = 18
    title_height: int = 22
    caption_height: int = 30
    row_gap: int = 10
    margin: int = 8

    @property
    def tile_width(self):
        return self.thumb_width + 2 * self.border

    @property
    def tile_height(self):
        return self.thumb_height + 2 * self.border

    @property
    def row_height(self):
        return self.title_height + self.tile_height + self.caption_height

    def size(self, num_shown, num_rows):
        """(height, width) of a picture with ``num_shown`` gallery tiles per row."""
        width = 2 * self.margin + self.tile_width + self.query_gap
        width += num_shown * self.tile_width + max(num_shown - 1, 0) * self.spacing
        height = 2 * self.margin + num_rows * self.row_height + (num_rows - 1) * self.row_gap
        return height, width

    def gallery_x(self, position):
        """Left edge of the tile of the gallery item at ``position`` (0-based) in a row."""
        return (
            self.margin
            + self.tile_width
            + self.query_gap
            + position * (self.tile_width + self.spacing)
        )

    def row_y(self, row):
        """Top edge of the tiles of row ``row`` (0-based)."""
        return self.margin + row * (self.row_height + self.row_gap) + self.title_height


class RankedList(NamedTuple):
    """One query's ranked gallery after junk removal."""

    order: np.ndarray  # (N,) int64 gallery indices, closest first, junk left out
    distances: np.ndarray  # (N,) their distances
    is_match: np.ndarray  # (N,) bool: same person (and, junk being out, another camera)

    @property
    def average_precision(self):
        """AP over the whole list (``(1/n) sum_k k / r_k``), or None without a true match."""
        ranks = np.flatnonzero(self.is_match) + 1
        if len(ranks) == 0:
            return None
        return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))

    @property
    def first_match(self):
        """1-based rank of the first true match, or None."""
        hits = np.flatnonzero(self.is_match)
        return int(hits[0]) + 1 if len(hits) else None


def _numpy(array, name):
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if name == "distmat":
        if array.ndim != 2:
            raise ValueError(f"{name} must be 2-D (num_query, num_gallery), got {array.shape}")
    elif array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def camera_label(camid):
    """The camera as the dataset's file names write it: FastReID's loaders (Market-1501,
    DukeMTMC-reID, MSMT17, and SynthReID like them) store the file's camera number minus one, so
    ``0001_c1s1_...`` has camera id 0 and is labelled ``c1``."""
    return f"c{int(camid) + 1}"


def rank_gallery(dist_row, q_pid, q_camid, g_pids, g_camids):
    """A query's gallery ranked by distance, junk (same person and camera) left out.

    Args:
        dist_row (np.ndarray): (G,) distances of the query to the gallery.
        q_pid (int): the query's person id.
        q_camid (int): the query's camera id.
        g_pids (np.ndarray): (G,) gallery person ids.
        g_camids (np.ndarray): (G,) gallery camera ids.

    Returns:
        RankedList: equal distances keep gallery order (a stable sort, as ``evaluate_rank``).
    """
    order = np.argsort(dist_row, kind="stable")
    same_pid = g_pids[order] == q_pid
    keep = ~(same_pid & (g_camids[order] == q_camid))
    order = order[keep]
    return RankedList(order=order, distances=dist_row[order], is_match=same_pid[keep])


def valid_queries(q_pids, g_pids, q_camids, g_camids):
    """Queries with a true match in the gallery (same person, another camera).

    These are the queries :func:`kdreid.evaluation.evaluate_rank` keeps, in its order: its
    ``all_AP[i]`` belongs to query ``valid_queries(...)[i]``.

    Args:
        q_pids, q_camids (np.ndarray): (Q,) query ids.
        g_pids, g_camids (np.ndarray): (G,) gallery ids.

    Returns:
        np.ndarray: (V,) int64 query indices, ascending.
    """
    per_pid = Counter(np.asarray(g_pids).tolist())
    per_pid_cam = Counter(zip(np.asarray(g_pids).tolist(), np.asarray(g_camids).tolist()))
    q_pairs = zip(np.asarray(q_pids).tolist(), np.asarray(q_camids).tolist())
    valid = [per_pid[pid] > per_pid_cam[(pid, cam)] for pid, cam in q_pairs]
    return np.flatnonzero(np.asarray(valid, dtype=bool)).astype(np.int64)


def pick_queries(all_ap, query_indices, num, order="worst"):
    """The ``num`` queries with the lowest (or highest) AP.

    Args:
        all_ap (np.ndarray): (V,) AP per valid query, as ``evaluate_rank`` returns it.
        query_indices (np.ndarray): (V,) the query index of each AP (:func:`valid_queries`).
        num (int): how many to pick (fewer if there are fewer queries).
        order (str): 'worst' (lowest AP first) or 'best' (highest first); equal APs keep query
            order.

    Returns:
        np.ndarray: (min(num, V),) int64 query indices.
    """
    all_ap = np.asarray(all_ap, dtype=np.float64)
    query_indices = np.asarray(query_indices, dtype=np.int64)
    if all_ap.shape != query_indices.shape or all_ap.ndim != 1:
        raise ValueError(
            f"all_ap {all_ap.shape} and query_indices {query_indices.shape} must be 1-D and "
            "of the same length (query_indices = valid_queries(...))"
        )
    if order not in ("worst", "best"):
        raise ValueError(f"order must be 'worst' or 'best', got {order!r}")
    if num < 0:
        raise ValueError(f"num must be non-negative, got {num}")
    key = all_ap if order == "worst" else -all_ap
    return query_indices[np.argsort(key, kind="stable")[:num]]


def _read_thumbnail(path, layout):
    """The image at ``path`` resized to the thumbnail size, BGR uint8."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UnreadableImageError(f"Cannot read image '{path}': {exc.strerror}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UnreadableImageError(f"Cannot decode image '{path}' (not an image, or truncated)")
    size = (layout.thumb_width, layout.thumb_height)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _draw_tile(canvas, thumb, x, y, colour, captions, layout):
    """A thumbnail in a border of ``colour`` at (x, y), caption lines under it."""
    b = layout.border
    canvas[y : y + layout.tile_height, x : x + layout.tile_width] = colour
    canvas[y + b : y + b + layout.thumb_height, x + b : x + b + layout.thumb_width] = thumb
    line_y = y + layout.tile_height + 12
    for text in captions:
        cv2.putText(canvas, text, (x, line_y), _FONT, 0.35, _TEXT, 1, cv2.LINE_AA)
        line_y += 13


def _format_distance(value):
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _row_title(name, ranked):
    ap = ranked.average_precision
    if ap is None:
        return f"{name}: no true match in the gallery"
    return f"{name}: AP {100 * ap:.1f}%, first true match #{ranked.first_match}"


def render_ranked_list(
    query_path, gallery_paths, rows, q_pid, q_camid, g_pids, g_camids, topk=10, layout=None
):
    """A picture of one query's top-k in one or more rankings.

    Args:
        query_path (str): the query image.
        gallery_paths (Sequence[str]): (G,) gallery images.
        rows (Sequence[tuple[str, np.ndarray]]): per row a title and the query's (G,)
            distances to the gallery.
        q_pid, q_camid (int): the query's person and camera ids.
        g_pids, g_camids (np.ndarray): (G,) gallery ids.
        topk (int): gallery images per row (fewer if fewer remain after junk removal).
        layout (Layout | None): sizes; default ``Layout()``.

    Returns:
        np.ndarray: (H, W, 3) BGR uint8 with ``(H, W) == layout.size(shown, len(rows))``.
    """
    layout = layout or Layout()
    ranked = [(title, rank_gallery(dist, q_pid, q_camid, g_pids, g_camids)) for title, dist in rows]
    shown = min(topk, min(len(r.order) for _, r in ranked))
    height, width = layout.size(shown, len(rows))
    canvas = np.full((height, width, 3), _BACKGROUND, dtype=np.uint8)
    query = _read_thumbnail(query_path, layout)
    thumbs = {}
    for row, (title, ranked_list) in enumerate(ranked):
        y = layout.row_y(row)
        cv2.putText(
            canvas,
            _row_title(title, ranked_list),
            (layout.margin, y - 7),
            _FONT,
            0.45,
            _TEXT,
            1,
            cv2.LINE_AA,
        )
        _draw_tile(
            canvas,
            query,
            layout.margin,
            y,
            QUERY_COLOUR,
            ["query", f"id {q_pid} {camera_label(q_camid)}"],
            layout,
        )
        for position in range(shown):
            index = int(ranked_list.order[position])
            if index not in thumbs:
                thumbs[index] = _read_thumbnail(gallery_paths[index], layout)
            match = bool(ranked_list.is_match[position])
            captions = [
                f"#{position + 1} {_format_distance(float(ranked_list.distances[position]))}",
                f"id {g_pids[index]} {camera_label(g_camids[index])}",
            ]
            colour = MATCH_COLOUR if match else MISMATCH_COLOUR
            _draw_tile(
                canvas, thumbs[index], layout.gallery_x(position), y, colour, captions, layout
            )
    return canvas


def render_ranked_lists(
    query_paths,
    gallery_paths,
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    query_indices,
    out_dir,
    topk=10,
    rerank_distmat=None,
    layout=None,
):
    """Write one PNG per chosen query: its top-k, and with ``rerank_distmat`` its re-ranked top-k.

    Files are named ``<position>_query<index>.png`` (position in ``query_indices``, from 000),
    so a folder listing follows the order asked for (e.g. worst AP first).

    Args:
        query_paths (Sequence[str]): (Q,) query images.
        gallery_paths (Sequence[str]): (G,) gallery images.
        distmat (np.ndarray | Tensor): (Q, G) distances, smaller is closer.
        q_pids, q_camids (np.ndarray | Tensor): (Q,) query person and camera ids.
        g_pids, g_camids (np.ndarray | Tensor): (G,) gallery person and camera ids.
        query_indices (Sequence[int]): the queries to draw, in this order.
        out_dir (str): folder for the PNGs (created if missing).
        topk (int): gallery images per row, at least 1.
        rerank_distmat (np.ndarray | Tensor | None): (Q, G) re-ranked distances: a second row.
        layout (Layout | None): sizes; default ``Layout()``.

    Returns:
        list[str]: the files written, in the order of ``query_indices``.

    Raises:
        ValueError: inconsistent shapes, a query index out of range, or ``topk`` below 1.
        UnreadableImageError: an image cannot be read.
        OSError: ``out_dir`` cannot be created or a file cannot be written.
    """
    distmat = _numpy(distmat, "distmat")
    num_q, num_g = distmat.shape
    ids = {
        "q_pids": _numpy(q_pids, "q_pids"),
        "q_camids": _numpy(q_camids, "q_camids"),
        "g_pids": _numpy(g_pids, "g_pids"),
        "g_camids": _numpy(g_camids, "g_camids"),
    }
    lengths = [
        (name, len(value), num_q if name[0] == "q" else num_g) for name, value in ids.items()
    ]
    lengths += [
        ("query_paths", len(query_paths), num_q),
        ("gallery_paths", len(gallery_paths), num_g),
    ]
    wrong = [f"{name} has {length}" for name, length, want in lengths if length != want]
    if wrong:
        raise ValueError(
            f"distmat is {num_q} x {num_g} (queries x gallery) but " + ", ".join(wrong)
        )
    rows = [("initial ranking", distmat)]
    if rerank_distmat is not None:
        rerank_distmat = _numpy(rerank_distmat, "distmat")
        if rerank_distmat.shape != distmat.shape:
            raise ValueError(
                f"rerank_distmat has shape {rerank_distmat.shape}, distmat {distmat.shape}"
            )
        rows.append(("after re-ranking", rerank_distmat))
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    query_indices = [int(q) for q in query_indices]
    outside = [q for q in query_indices if not 0 <= q < num_q]
    if outside:
        raise ValueError(f"query indices {outside[:5]} are outside 0..{num_q - 1}")

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for position, q in enumerate(query_indices):
        image = render_ranked_list(
            query_paths[q],
            gallery_paths,
            [(title, matrix[q]) for title, matrix in rows],
            int(ids["q_pids"][q]),
            int(ids["q_camids"][q]),
            ids["g_pids"],
            ids["g_camids"],
            topk=topk,
            layout=layout,
        )
        path = os.path.join(out_dir, f"{position:03d}_query{q}.png")
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"Cannot encode the picture '{path}'")
        atomic_write(path, lambda f, png=png: f.write(png.tobytes()))
        written.append(path)
    return written
