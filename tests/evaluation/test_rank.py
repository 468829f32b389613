"""kdreid.evaluation.evaluate_rank against FastReID's Python ranker and hand-derived values."""

import numpy as np
import pytest
import torch
from fastreid.evaluation.rank import eval_market1501

from kdreid.evaluation import evaluate_rank, rank


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """FastReID's Python Market-1501 ranker, with per-query results as arrays."""
    cmc, all_ap, all_inp = eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return cmc, np.asarray(all_ap), np.asarray(all_inp)


def assert_same_metrics(ours, theirs):
    """CMC, AP and INP per query equal to 1e-6, with the same number of valid queries."""
    (cmc, ap, inp), (ref_cmc, ref_ap, ref_inp) = ours, theirs
    assert cmc.dtype == np.float32
    assert cmc.shape == ref_cmc.shape
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert ap.shape == ref_ap.shape and inp.shape == ref_inp.shape
    np.testing.assert_allclose(ap, ref_ap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(inp, ref_inp, rtol=0, atol=1e-6)


def uniform_case(seed, num_query, num_gallery, num_ids=10, num_cams=4):
    """Uniformly random float64 distances and random labels (ties have probability zero)."""
    rng = np.random.default_rng(seed)
    return (
        rng.random((num_query, num_gallery)),
        rng.integers(0, num_ids, num_query),
        rng.integers(0, num_ids, num_gallery),
        rng.integers(0, num_cams, num_query),
        rng.integers(0, num_cams, num_gallery),
    )


def clustered_case(seed, num_query, num_gallery, num_ids=12, num_cams=5, dim=16, junk=True):
    """ReID-like float32 Euclidean distances: each feature is its identity's centre plus noise.

    Query 0's identity has gallery images only under its own camera (all junk: the query is
    skipped); query 1's identity is absent from the gallery (skipped); with ``junk`` the other
    queries share cameras with the gallery, so same-pid same-camera items must be excluded,
    without it query and gallery cameras are disjoint (no junk at all).
    """
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_pids = rng.integers(0, num_ids, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query) if junk else np.full(num_query, num_cams)
    g_pids[:2], g_camids[:2] = num_ids, 0
    q_pids[:2], q_camids[:2] = (num_ids, num_ids + 1), (0, num_cams + 1)
    centres = rng.standard_normal((num_ids + 2, dim))
    q_feats = torch.from_numpy(centres[q_pids] + 0.8 * rng.standard_normal((num_query, dim)))
    g_feats = torch.from_numpy(centres[g_pids] + 0.8 * rng.standard_normal((num_gallery, dim)))
    distmat = torch.cdist(q_feats.float(), g_feats.float()).numpy()
    return distmat, q_pids, g_pids, q_camids, g_camids


SHAPES = [  # (num_query, num_gallery, max_rank, chunk_size)
    (37, 211, 50, 8),
    (53, 97, 10, None),
    (29, 140, 1, 4),
    (3, 64, 50, 1),
    (64, 300, 50, 64),
]


@pytest.mark.parametrize("num_query,num_gallery,max_rank,chunk_size", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_matches_fastreid(seed, num_query, num_gallery, max_rank, chunk_size):
    case = uniform_case(seed, num_query, num_gallery)
    assert_same_metrics(
        evaluate_rank(*case, max_rank=max_rank, chunk_size=chunk_size),
        reference(*case, max_rank=max_rank),
    )


@pytest.mark.parametrize("num_query,num_gallery,max_rank,chunk_size", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_clustered_matches_fastreid(seed, num_query, num_gallery, max_rank, chunk_size):
    case = clustered_case(seed, num_query, num_gallery)
    ours = evaluate_rank(*case, max_rank=max_rank, chunk_size=chunk_size)
    assert_same_metrics(ours, reference(*case, max_rank=max_rank))
    assert len(ours[1]) <= num_query - 2  # queries 0 and 1 have no valid match


@pytest.mark.parametrize("max_rank,chunk_size", [(50, 3), (20, None), (5, 7)])
def test_gallery_smaller_than_max_rank(max_rank, chunk_size):
    """CMC is cut to num_gallery; cameras are disjoint so every kept list has num_gallery items."""
    case = clustered_case(3, 19, 12, num_ids=4, junk=False)
    ours = evaluate_rank(*case, max_rank=max_rank, chunk_size=chunk_size)
    assert len(ours[0]) == min(max_rank, 12)
    assert_same_metrics(ours, reference(*case, max_rank=max_rank))


def test_hand_derived_single_query():
    """One query (pid 1, camera 0) against five gallery items.

    ====  ========  ===  ===  ======================
    item  distance  pid  cam  role
    ====  ========  ===  ===  ======================
    0     0.5       1    0    junk (same pid and cam)
    1     0.1       2    1    negative
    2     0.3       1    1    positive
    3     0.9       3    0    negative
    4     0.6       1    2    positive
    ====  ========  ===  ===  ======================

    Sorted: 1, 2, 0, 4, 3; without the junk item 0 the list is (neg, pos, pos, neg), so the
    positives are at ranks 2 and 3: AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, and CMC over
    min(50, 5) = 5 ranks is (0, 1, 1, 1, 1). (Keeping the junk item would put the second
    positive at rank 4 and give AP = 1/2, INP = 1/2.) FastReID agrees with max_rank = 3; with
    max_rank = 50 it returns only the 4 ranks of the shortened list.
    """
    distmat = np.array([[0.5, 0.1, 0.3, 0.9, 0.6]])
    case = (
        distmat,
        np.array([1]),
        np.array([1, 2, 1, 3, 1]),
        np.array([0]),
        np.array([0, 1, 1, 0, 2]),
    )
    cmc, ap, inp = evaluate_rank(*case)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    np.testing.assert_allclose(ap, [7 / 12])
    np.testing.assert_allclose(inp, [2 / 3])
    assert_same_metrics(evaluate_rank(*case, max_rank=3), reference(*case, max_rank=3))


@pytest.mark.parametrize("negative_first", [True, False])
def test_hand_derived_tie_is_stable(negative_first):
    """A negative and a positive at the same distance 0.2, a second positive at 0.4.

    Stable order puts the lower gallery index first. Negative first: positives at ranks 2 and 3,
    AP = (1/2 + 2/3) / 2 = 7/12, INP = 2/3, CMC = (0, 1, 1). Positive first: ranks 1 and 3,
    AP = (1 + 2/3) / 2 = 5/6, INP = 2/3, CMC = (1, 1, 1).
    """
    g_pids = np.array([2, 1, 1]) if negative_first else np.array([1, 2, 1])
    cmc, ap, inp = evaluate_rank(
        np.array([[0.2, 0.2, 0.4]], dtype=np.float32),
        np.array([1]),
        g_pids,
        np.array([0]),
        np.array([1, 1, 1]),
    )
    np.testing.assert_allclose(ap, [7 / 12 if negative_first else 5 / 6])
    np.testing.assert_allclose(inp, [2 / 3])
    np.testing.assert_allclose(cmc, [0, 1, 1] if negative_first else [1, 1, 1])


def stable_positions(distmat):
    """Each entry's position in its row's stable sort: a tie-free matrix with the same order."""
    order = np.argsort(distmat, axis=1, kind="stable")
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(distmat.shape[1])[None], axis=1)
    return positions.astype(np.float64)


@pytest.mark.parametrize("chunk_size", [5, None])
def test_ties_follow_stable_sort(chunk_size):
    """Integer distances (ties in every row) in half the rows, continuous ones in the other half.

    Compared with FastReID on the stable-sort positions, which order each row as a stable sort.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = uniform_case(4, 30, 120, num_ids=6)
    distmat[::2] = np.floor(distmat[::2] * 6)
    ours = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size=chunk_size)
    theirs = reference(stable_positions(distmat), q_pids, g_pids, q_camids, g_camids)
    assert_same_metrics(ours, theirs)


def test_torch_inputs_match_numpy():
    case = clustered_case(5, 41, 150)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in case]
    assert tensors[0].dtype == torch.float32
    for ours, theirs in zip(evaluate_rank(*tensors, chunk_size=6), evaluate_rank(*case)):
        assert isinstance(ours, np.ndarray)
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_match_fastreid():
    case = clustered_case(6, 45, 180)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in case]
    assert_same_metrics(evaluate_rank(*tensors, chunk_size=7), reference(*case))


def test_chunking_is_exact():
    case = clustered_case(7, 50, 230)
    whole = evaluate_rank(*case, chunk_size=50)
    for chunk_size in (1, 3, 7, None, 1000):
        for ours, theirs in zip(evaluate_rank(*case, chunk_size=chunk_size), whole):
            np.testing.assert_array_equal(ours, theirs)


def tied_case():
    """Integer distances (ties in every row) in half the rows, continuous ones in the other half."""
    distmat, q_pids, g_pids, q_camids, g_camids = uniform_case(12, 36, 150, num_ids=6)
    distmat[::2] = np.floor(distmat[::2] * 6)
    return distmat, q_pids, g_pids, q_camids, g_camids


PATH_CASES = {
    # Random distances, a weak model: about half of each row lies before its last positive.
    "weak": lambda: uniform_case(10, 40, 300, num_ids=5),
    "clustered": lambda: clustered_case(11, 45, 260),
    "tied": tied_case,
}


@pytest.fixture
def sorted_rows(monkeypatch):
    """The row counts of every block ranked by a stable sort (``_ranks_by_sorting``)."""
    rows = []
    sort = rank._ranks_by_sorting

    def counting_sort(dist, *args):
        rows.append(dist.shape[0])
        return sort(dist, *args)

    monkeypatch.setattr(rank, "_ranks_by_sorting", counting_sort)
    return rows


@pytest.mark.parametrize("chunk_size", [7, None])
@pytest.mark.parametrize("name", sorted(PATH_CASES))
def test_histogram_counts_match_sorting(monkeypatch, sorted_rows, name, chunk_size):
    """One bin (every row with two positives crowded: sorted), the default and 64 bins per item
    give the same numbers, FastReID's on stable-sort positions."""
    case = PATH_CASES[name]()
    results = {}
    for bins in (1e-9, rank.BINS_PER_ITEM, 64.0):
        sorted_rows.clear()
        monkeypatch.setattr(rank, "BINS_PER_ITEM", bins)
        results[bins] = evaluate_rank(*case, chunk_size=chunk_size)
        if bins == 1e-9:
            assert sum(sorted_rows) >= len(results[bins][1]) // 2
        elif bins == 64.0 and name == "clustered":  # few items share a bin: none sorted
            assert not sorted_rows
    default = results[rank.BINS_PER_ITEM]
    for other in results.values():
        for ours, theirs in zip(other, default):
            np.testing.assert_array_equal(ours, theirs)
    distmat = stable_positions(case[0]) if name == "tied" else case[0]
    assert_same_metrics(default, reference(distmat, *case[1:]))


@pytest.mark.parametrize(
    "outliers",
    [
        (1e30,),  # every other distance in the first bin: crowded rows, sorted
        (-3e38, 3e38),  # a spread that overflows float32 and float64 arithmetic on it
        (0.5 + 1e-7,),  # a narrow range: still exact
    ],
)
def test_distances_crowded_by_outliers_stay_exact(outliers):
    distmat, q_pids, g_pids, q_camids, g_camids = uniform_case(13, 25, 90, num_ids=4)
    distmat = distmat.astype(np.float32)
    if len(outliers) == 1 and outliers[0] < 1:
        distmat = np.where(distmat < 0.5, 0.5, outliers[0]).astype(np.float32)
    else:
        distmat[:, : len(outliers)] = outliers
    theirs = reference(stable_positions(distmat), q_pids, g_pids, q_camids, g_camids)
    assert_same_metrics(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids), theirs)


@pytest.mark.parametrize(
    "case",
    [
        lambda: clustered_case(15, 40, 6000, num_ids=150),  # ReID-like: ~30 positives per query
        lambda: uniform_case(14, 12, 20000, num_ids=20),  # hundreds of positives per query
    ],
)
def test_rows_of_a_large_gallery_are_counted_not_sorted(sorted_rows, case):
    case = case()
    assert_same_metrics(evaluate_rank(*case), reference(*case))
    assert not sorted_rows


def valid_case():
    return uniform_case(8, 6, 20, num_ids=3)


@pytest.mark.parametrize(
    "position,bad,message",
    [
        (1, np.zeros(5, dtype=np.int64), r"q_pids must be 1-D with 6 entries"),
        (2, np.zeros(21, dtype=np.int64), r"g_pids must be 1-D with 20 entries"),
        (3, np.zeros((6, 1), dtype=np.int64), r"q_camids must be 1-D with 6 entries"),
        (4, np.zeros(19, dtype=np.int64), r"g_camids must be 1-D with 20 entries.*gallery"),
        (1, np.zeros(6), r"q_pids must hold integers"),
        (0, np.zeros(20), r"distmat must be 2-D"),
    ],
)
def test_rejects_mismatched_inputs(position, bad, message):
    case = list(valid_case())
    case[position] = bad
    with pytest.raises(ValueError, match=message):
        evaluate_rank(*case)


@pytest.mark.parametrize("cuhk03", [False, True])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_distances(value, cuhk03):
    case = list(valid_case())
    case[0][4, 7] = value
    with pytest.raises(ValueError, match=r"NaN or inf \(first in query row 4\)"):
        evaluate_rank(*case, chunk_size=2, use_metric_cuhk03=cuhk03)


def test_cuhk03_rejects_an_all_nan_matrix():
    case = list(valid_case())
    case[0][:] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf \(first in query row 0\)"):
        evaluate_rank(*case, use_metric_cuhk03=True)


def test_rejects_empty_gallery_and_query():
    distmat, q_pids, g_pids, q_camids, g_camids = valid_case()
    with pytest.raises(ValueError, match="both must be non-empty"):
        evaluate_rank(distmat[:, :0], q_pids, g_pids[:0], q_camids, g_camids[:0])
    with pytest.raises(ValueError, match="both must be non-empty"):
        evaluate_rank(distmat[:0], q_pids[:0], g_pids, q_camids[:0], g_camids)


def test_rejects_when_no_query_has_a_valid_match():
    """Gallery ids differ from the query's, or match only under the query's own camera."""
    distmat = np.random.default_rng(9).random((3, 4))
    q_pids, q_camids = np.array([1, 2, 3]), np.array([0, 0, 1])
    g_pids, g_camids = np.array([1, 2, 3, 7]), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="all query identities do not appear in gallery"):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)


@pytest.mark.parametrize("keyword", ["max_rank", "chunk_size"])
def test_rejects_non_positive_sizes(keyword):
    with pytest.raises(ValueError, match=f"{keyword} must be an integer of at least 1"):
        evaluate_rank(*valid_case(), **{keyword: 0})


# FastReID's signature: max_rank, use_metric_cuhk03, use_cython at the same positions.


def _market_matlab_ap(distmat, q_pids, g_pids, q_camids, g_camids):
    """The original Market-1501 ``compute_AP.m``, transcribed loop by loop: junk (same identity
    and camera) skipped, trapezoids between the precision before and at each position."""
    aps = []
    for q in range(len(distmat)):
        order = np.argsort(distmat[q], kind="stable")
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        good = (g_pids[order] == q_pids[q]) & ~junk
        n_good = good.sum()
        if n_good == 0:
            continue
        ap, old_recall, old_precision, hits, j = 0.0, 0.0, 1.0, 0, 0
        for i in range(len(order)):
            if junk[i]:
                continue
            hits += int(good[i])
            recall, precision = hits / n_good, hits / (j + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision, j = recall, precision, j + 1
            if hits == n_good:
                break
        aps.append(ap)
    return np.asarray(aps)


@pytest.mark.parametrize("seed", [3, 17])
def test_trapezoidal_ap_is_market_matlab_code(seed):
    case = clustered_case(seed, 40, 300)
    _, trapezoid, inp = evaluate_rank(*case, ap="trapezoid", chunk_size=7)
    np.testing.assert_allclose(trapezoid, _market_matlab_ap(*case), rtol=0, atol=1e-12)
    cmc, standard, standard_inp = evaluate_rank(*case)
    assert not np.allclose(trapezoid, standard)  # a different measure, on the same ranks
    np.testing.assert_array_equal(inp, standard_inp)


@pytest.mark.parametrize("num_query,num_gallery,num_cams,max_rank", [(30, 200, 2, 50),
                         (60, 500, 3, 5), (5, 40, 2, 50), (80, 900, 6, 20)])  # fmt: skip
def test_cuhk03_protocol_equals_fastreid_for_a_seed(num_query, num_gallery, num_cams, max_rank):
    """Single-gallery-shot CUHK03: the same random draws as FastReID's, hence the same numbers
    (float64 distances: no ties, whose order FastReID's unstable sort leaves open)."""
    from fastreid.evaluation.rank import eval_cuhk03

    case = uniform_case(num_gallery, num_query, num_gallery, num_ids=20, num_cams=num_cams)
    np.random.seed(num_query)  # noqa: NPY002  (FastReID draws from the global generator)
    ref_cmc, ref_map = eval_cuhk03(*case, max_rank)
    np.random.seed(num_query)  # noqa: NPY002  (FastReID draws from the global generator)
    cmc, m_ap = evaluate_rank(*case, max_rank, True)  # FastReID's positional use_metric_cuhk03
    assert cmc.dtype == np.float32 and cmc.shape == ref_cmc.shape
    np.testing.assert_array_equal(cmc, ref_cmc)
    assert m_ap == pytest.approx(ref_map, abs=1e-12)
    np.random.seed(num_query + 1)  # noqa: NPY002  (other draws: the same mAP)
    other, other_map = evaluate_rank(*case, max_rank, use_metric_cuhk03=True)
    assert other_map == pytest.approx(m_ap, abs=1e-12)


def test_fastreid_positional_and_keyword_arguments():
    case = uniform_case(5, 20, 100)
    market = evaluate_rank(*case)
    for ours in (evaluate_rank(*case, 50, False), evaluate_rank(*case, 50, False, True),
                 evaluate_rank(*case, use_metric_cuhk03=False, use_cython=False)):  # fmt: skip
        assert_same_metrics(ours, market)


def test_string_ids_as_fastreid_python_ranker():
    """FastReID's Python ranker compares ids with ==, so strings work there: here too."""
    case = uniform_case(8, 20, 120)
    names = np.array([f"person_{i:03d}" for i in range(10)])
    cams = np.array(["cam_a", "cam_b", "cam_c", "cam_d"])
    named = (case[0], names[case[1]], names[case[2]], cams[case[3]], cams[case[4]])
    assert_same_metrics(evaluate_rank(*named), evaluate_rank(*case))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_rank": 5.0}, "max_rank must be an integer"), ({"max_rank": None}, "max_rank"),
     ({"chunk_size": 2.5}, "chunk_size must be an integer"), ({"ap": "11-point"}, "ap must be")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_rank(*uniform_case(1, 4, 20), **kwargs)
