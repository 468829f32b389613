"""Pictures of ranked lists: layout, border colours, junk removal, query picking (the command
line, tools/visualize_ranks.py, is tested in tests/tools/test_visualize_ranks.py).

Sizes with the default ``Layout`` (thumbnail 64 x 128 in a 4-pixel border: tiles 72 x 136; tiles
6 apart; 18 between the query and the gallery; margin 8; a row is a 22-pixel title, a tile and
a 30-pixel caption, 188 in all; rows 10 apart):
width = 2*8 + 72 + 18 + k*72 + (k - 1)*6, i.e. 412 for k = 4 and 490 for k = 5;
height = 2*8 + 188 = 204 for one row, 2*8 + 2*188 + 10 = 402 for two.
Gallery tile ``p`` of row ``r`` starts at x = 8 + 72 + 18 + 78p, y = 8 + 198r + 22.
"""

import os

import cv2
import numpy as np
import pytest

from kdreid.errors import UnreadableImageError
from kdreid.evaluation import evaluate_rank
from kdreid.evaluation.visualize import (
    MATCH_COLOUR,
    MISMATCH_COLOUR,
    QUERY_COLOUR,
    Layout,
    pick_queries,
    rank_gallery,
    render_ranked_list,
    render_ranked_lists,
    valid_queries,
)

# One query (pid 1, camera 0) and six gallery images, each a solid colour:
#   item  distance  pid  cam  role
#   0     0.05      1    0    junk (same pid and camera): never drawn
#   1     0.10      2    1    false match, rank 1
#   2     0.20      1    1    true match, rank 2
#   3     0.30      3    0    false match, rank 3
#   4     0.40      1    2    true match, rank 4
#   5     0.50      4    1    false match, rank 5
# AP = (1/2 + 2/4) / 2 = 0.5; first true match at rank 2.
DIST = np.array([[0.05, 0.10, 0.20, 0.30, 0.40, 0.50]])
Q_PIDS, Q_CAMS = np.array([1]), np.array([0])
G_PIDS = np.array([1, 2, 1, 3, 1, 4])
G_CAMS = np.array([0, 1, 1, 0, 2, 1])
COLOURS = [  # BGR, far apart so that JPEG rounding cannot confuse them
    (255, 255, 255),
    (0, 0, 0),
    (255, 0, 0),
    (0, 255, 255),
    (255, 0, 255),
    (128, 128, 128),
]
QUERY_BGR = (40, 200, 120)
SIZES = [(128, 64), (100, 50), (200, 90), (128, 64), (64, 32), (128, 64)]  # (h, w)


def _write_jpeg(path, colour, size):
    image = np.empty((*size, 3), dtype=np.uint8)
    image[:] = colour
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """(query paths, gallery paths): solid-colour JPEGs, the gallery in several sizes."""
    query = [_write_jpeg(tmp_path / "q0.jpg", QUERY_BGR, (128, 64))]
    gallery = [
        _write_jpeg(tmp_path / f"g{i}.jpg", colour, size)
        for i, (colour, size) in enumerate(zip(COLOURS, SIZES))
    ]
    return query, gallery


def _tile_origin(position, row=0):
    layout = Layout()
    return layout.gallery_x(position), layout.row_y(row)


def _border(image, position, row=0):
    x, y = _tile_origin(position, row)
    return tuple(int(v) for v in image[y + 1, x + 1])


def _centre(image, position, row=0):
    layout = Layout()
    x, y = _tile_origin(position, row)
    return image[y + layout.tile_height // 2, x + layout.tile_width // 2].astype(int)


def _render(images, tmp_path, **kwargs):
    query, gallery = images
    paths = render_ranked_lists(
        query,
        gallery,
        DIST,
        Q_PIDS,
        G_PIDS,
        Q_CAMS,
        G_CAMS,
        [0],
        out_dir=tmp_path / "out",
        **kwargs,
    )
    assert len(paths) == 1 and os.path.isfile(paths[0])
    return cv2.imread(paths[0])


def test_rank_gallery_leaves_out_junk_and_keeps_ties_in_gallery_order():
    ranked = rank_gallery(DIST[0], 1, 0, G_PIDS, G_CAMS)
    assert ranked.order.tolist() == [1, 2, 3, 4, 5]
    assert ranked.is_match.tolist() == [False, True, False, True, False]
    assert ranked.average_precision == pytest.approx(0.5)
    assert ranked.first_match == 2
    tied = rank_gallery(np.array([0.3, 0.2, 0.2, 0.2]), 9, 0, np.array([1, 2, 3, 4]), np.zeros(4))
    assert tied.order.tolist() == [1, 2, 3, 0]
    assert tied.average_precision is None and tied.first_match is None


def test_one_row_size_borders_and_junk(images, tmp_path):
    image = _render(images, tmp_path, topk=4)
    assert image.shape == (204, 412, 3)
    assert _border(image, 0) == MISMATCH_COLOUR  # item 1
    assert _border(image, 1) == MATCH_COLOUR  # item 2
    assert _border(image, 2) == MISMATCH_COLOUR  # item 3
    assert _border(image, 3) == MATCH_COLOUR  # item 4
    layout = Layout()
    assert tuple(int(v) for v in image[layout.row_y(0) + 1, layout.margin + 1]) == QUERY_COLOUR
    for position, item in enumerate([1, 2, 3, 4]):  # junk item 0 (white) is not drawn
        assert np.abs(_centre(image, position) - COLOURS[item]).max() <= 8, position


def test_rerank_adds_a_second_row(images, tmp_path):
    rerank = np.array([[0.0, 0.9, 0.3, 0.8, 0.1, 0.2]])  # ranks items 4, 5, 2, 3
    image = _render(images, tmp_path, topk=4, rerank_distmat=rerank)
    assert image.shape == (402, 412, 3)
    assert _border(image, 0, row=0) == MISMATCH_COLOUR  # first row unchanged
    assert [_border(image, p, row=1) for p in range(4)] == [
        MATCH_COLOUR,
        MISMATCH_COLOUR,
        MATCH_COLOUR,
        MISMATCH_COLOUR,
    ]
    for position, item in enumerate([4, 5, 2, 3]):
        assert np.abs(_centre(image, position, row=1) - COLOURS[item]).max() <= 8, position


def test_short_gallery_draws_what_is_left(images):
    query, gallery = images
    image = render_ranked_list(
        query[0], gallery, [("initial", DIST[0])], 1, 0, G_PIDS, G_CAMS, topk=10
    )
    assert image.shape[:2] == Layout().size(5, 1)  # six items, one of them junk


def test_bad_inputs(images, tmp_path):
    query, gallery = images
    args = (query, gallery, DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    with pytest.raises(ValueError, match="gallery_paths has 5"):
        render_ranked_lists(query, gallery[:5], *args[2:], [0], out_dir=tmp_path)
    with pytest.raises(ValueError, match="outside 0..0"):
        render_ranked_lists(*args, [1], out_dir=tmp_path)
    with pytest.raises(ValueError, match="topk"):
        render_ranked_lists(*args, [0], out_dir=tmp_path, topk=0)
    with pytest.raises(ValueError, match="rerank_distmat"):
        render_ranked_lists(*args, [0], out_dir=tmp_path, rerank_distmat=DIST[:, :5])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    broken = [*gallery[:1], str(tmp_path / "broken.jpg"), *gallery[2:]]
    with pytest.raises(UnreadableImageError, match="broken.jpg"):
        render_ranked_lists(query, broken, *args[2:], [0], out_dir=tmp_path)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):
        render_ranked_lists(*args, [0], out_dir=tmp_path / "a_file" / "out")


def test_valid_queries_and_ap_agree_with_evaluate_rank():
    """valid_queries lines up with evaluate_rank's per-query APs, recomputed from rank_gallery."""
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 8, 40), rng.integers(0, 8, 120)
    q_cams, g_cams = rng.integers(0, 3, 40), rng.integers(0, 3, 120)
    q_pids[:2] = 99  # absent from the gallery: not valid
    dist = rng.random((40, 120))
    _, all_ap, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    valid = valid_queries(q_pids, g_pids, q_cams, g_cams)
    assert len(valid) == len(all_ap) and valid[0] >= 2
    for ap, q in zip(all_ap, valid):
        ranked = rank_gallery(dist[q], q_pids[q], q_cams[q], g_pids, g_cams)
        assert ranked.average_precision == pytest.approx(ap, abs=1e-12)


def test_pick_queries():
    all_ap = np.array([0.5, 0.1, 0.9, 0.1, 0.7])
    indices = np.array([2, 3, 5, 7, 8])
    assert pick_queries(all_ap, indices, 3).tolist() == [3, 7, 2]  # equal APs: query order
    assert pick_queries(all_ap, indices, 2, order="best").tolist() == [5, 8]
    assert pick_queries(all_ap, indices, 10).tolist() == [3, 7, 2, 8, 5]
    with pytest.raises(ValueError, match="'worst' or 'best'"):
        pick_queries(all_ap, indices, 2, order="random")
    with pytest.raises(ValueError, match="same length"):
        pick_queries(all_ap, indices[:4], 2)


def test_cameras_are_labelled_as_the_file_names_write_them(images, monkeypatch):
    # FastReID stores 0001_c1s1_... as camera 0; the pictures said "c0"
    from kdreid.evaluation import visualize

    captions = []
    draw = visualize._draw_tile
    monkeypatch.setattr(
        visualize, "_draw_tile", lambda *a: captions.append(a[5]) or draw(*a)
    )  # fmt: skip
    query, gallery = images
    g_pids = np.array([7, 7, 3, 7, 3, 5])
    g_camids = np.array([0, 1, 0, 2, 5, 1])
    distances = np.arange(6, dtype=float)[None]
    render_ranked_list(query[0], gallery, [("", distances[0])], 7, 0, g_pids, g_camids, topk=3)
    assert captions[0] == ["query", "id 7 c1"]
    assert [c[1] for c in captions[1:]] == ["id 7 c2", "id 3 c1", "id 7 c3"]  # item 0: junk
