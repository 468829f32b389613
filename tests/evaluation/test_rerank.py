"""kdreid's k-reciprocal re-ranking against FastReID's NumPy ``re_ranking``, and by hand."""

import math

import numpy as np
import pytest
import torch
from fastreid.evaluation.rerank import re_ranking as reference

from kdreid.evaluation import evaluate_rank, jaccard_triton, re_ranking, re_ranking_features
from kdreid.evaluation.rerank import STAGES, _ordered_topk, pairwise_distance

TOL = 1e-5


@pytest.fixture(autouse=True)
def torch_path_unless_asked(monkeypatch):
    """The interpreted kernel is slow: only the tests that set TRITON_INTERPRET use it."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def clustered_features(seed, num_query, num_gallery, num_ids=15, dim=24, noise=0.7):
    """ReID-like float32 features: an identity centre plus noise; returns features and pids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, dim))
    q_pids, g_pids = rng.integers(0, num_ids, num_query), rng.integers(0, num_ids, num_gallery)
    q_feat = centres[q_pids] + noise * rng.standard_normal((num_query, dim))
    g_feat = centres[g_pids] + noise * rng.standard_normal((num_gallery, dim))
    return torch.from_numpy(q_feat).float(), torch.from_numpy(g_feat).float(), q_pids, g_pids


def matrices(q_feat, g_feat, metric="euclidean"):
    """The reference's three NumPy inputs, built as the feature path builds its distances."""
    pairs = ((q_feat, g_feat), (q_feat, q_feat), (g_feat, g_feat))
    return tuple(pairwise_distance(a, b, metric).numpy() for a, b in pairs)


def assert_close(ours, theirs, exact=False):
    """Within the 1e-5 tolerance, or bit for bit (the matrix path on the CPU reproduces every
    float32 operation of the reference, in its order)."""
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    if exact:
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


def test_hand_derived_line():
    """Four points on a line, k1 = 1, k2 = 1: query at 0, gallery at 1, 3, 10.

    Squared distances over the row maxima: D[0] = (0, 1, 9, 100) / 100, D[1] = (1, 0, 4, 81) / 81.
    With k1 = 1 the forward lists are {self, nearest}: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2, so
    R(0) = R(1) = {0, 1}, R(2) = {2}, R(3) = {3} (round(1/2) = 0: expansion adds nothing new).
    V[0] = (1, e^-0.01) / (1 + e^-0.01) and V[1] = (e^-1/81, 1) / (1 + e^-1/81) on items {0, 1};
    items 2 and 3 share nothing with the query. Hence m(0, 1) = 1/(1 + e^(1/81)) +
    1/(1 + e^0.01), d_J = (1 - m/(2 - m), 1, 1), and the output 0.7 d_J + 0.3 (0.01, 0.09, 1).
    """
    pos = np.array([0.0, 1.0, 3.0, 10.0])
    dist = np.abs(pos[:, None] - pos[None, :]).astype(np.float32)
    m = 1 / (1 + math.exp(1 / 81)) + 1 / (1 + math.exp(0.01))
    expected = 0.7 * np.array([1 - m / (2 - m), 1, 1]) + 0.3 * np.array([0.01, 0.09, 1])
    ours = re_ranking(dist[:1, 1:], dist[:1, :1], dist[1:, 1:], k1=1, k2=1, lambda_value=0.3)
    np.testing.assert_allclose(ours[0], expected, rtol=0, atol=1e-6)
    assert_close(ours, reference(dist[:1, 1:], dist[:1, :1], dist[1:, 1:], 1, 1, 0.3), exact=True)


@pytest.mark.parametrize("shape", [(5, 30), (40, 200), (100, 600)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_clustered_matches_reference(shape, metric):
    q_feat, g_feat, _, _ = clustered_features(sum(shape), *shape)
    q_g, q_q, g_g = matrices(q_feat, g_feat, metric)
    assert_close(re_ranking(q_g, q_q, g_g), reference(q_g, q_q, g_g), exact=True)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    "k1,k2,lam", [(20, 6, 0.3), (4, 3, 1.0), (2, 1, 0.0), (5, 1, 0.3), (7, 4, 0.3), (6, 12, 0.5)]
)
def test_random_matrices_match_reference(symmetric, k1, k2, lam):
    """Uniform float64 matrices; asymmetric ones check the reference's column maxima and
    transposition, and items that are not their own nearest neighbour."""
    rng = np.random.default_rng(k1 * 10 + k2)
    joint = rng.random((45, 45))
    if symmetric:
        joint = joint + joint.T
        np.fill_diagonal(joint, 0)
    q_g, q_q, g_g = joint[:12, 12:], joint[:12, :12], joint[12:, 12:]
    ours = re_ranking(q_g, q_q, g_g, k1, k2, lam)
    assert_close(ours, reference(q_g, q_q, g_g, k1, k2, lam), exact=True)


@pytest.mark.parametrize(
    "shape,k1,k2",
    [((40, 200), 20, 1), ((40, 200), 1, 6), ((40, 200), 2, 2), ((40, 200), 3, 4)]
    + [((3, 5), 20, 6), ((3, 5), 7, 10), ((2, 3), 4, 1), ((1, 1), 1, 2)],
)
def test_edge_parameters_match_reference(shape, k1, k2):
    """k2 = 1 (no query expansion), small k1, and k1 >= N or k2 > N (whole-set lists)."""
    q_feat, g_feat, _, _ = clustered_features(7, *shape)
    q_g, q_q, g_g = matrices(q_feat, g_feat)
    assert_close(re_ranking(q_g, q_q, g_g, k1, k2), reference(q_g, q_q, g_g, k1, k2), exact=True)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_features_equal_matrices(metric, chunk_size):
    q_feat, g_feat, _, _ = clustered_features(3, 30, 150)
    ours = re_ranking_features(q_feat, g_feat, metric=metric, chunk_size=chunk_size)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    theirs = re_ranking(*matrices(q_feat, g_feat, metric))
    assert_close(ours.numpy(), theirs)
    as_numpy = re_ranking_features(q_feat.numpy(), g_feat.numpy(), metric=metric)
    assert isinstance(as_numpy, np.ndarray)
    assert_close(as_numpy, theirs)


def test_small_memory_budget_changes_nothing():
    """A tiny budget splits every stage into many blocks and chunks; the result is the same."""
    q_feat, g_feat, _, _ = clustered_features(5, 20, 90)
    full = re_ranking_features(q_feat, g_feat).numpy()
    chunked = re_ranking_features(q_feat, g_feat, memory_budget=4096).numpy()
    assert_close(chunked, full)
    matrix = re_ranking(*matrices(q_feat, g_feat), memory_budget=4096)
    assert_close(matrix, full)


@pytest.mark.parametrize("k2", [1, 6])
def test_timings_report_every_stage_and_change_nothing(k2):
    """``timings`` gets one non-negative figure per stage (no query expansion with k2 = 1)."""
    q_feat, g_feat, _, _ = clustered_features(7, 20, 90)
    plain = re_ranking_features(q_feat, g_feat, k2=k2).numpy()
    for run in (re_ranking_features, lambda q, g, **kw: re_ranking(*matrices(q, g), **kw)):
        times = {}
        out = run(q_feat, g_feat, k2=k2, timings=times)
        out = out.numpy() if isinstance(out, torch.Tensor) else out
        assert_close(out, plain)
        expected = [s for s in STAGES if k2 != 1 or s != "query expansion"]
        assert list(times) == expected
        assert all(isinstance(t, float) and t >= 0 for t in times.values())


def test_float64_and_tensor_inputs():
    q_feat, g_feat, _, _ = clustered_features(11, 10, 50)
    q_g, q_q, g_g = (m.astype(np.float64) for m in matrices(q_feat.double(), g_feat.double()))
    theirs = reference(q_g, q_q, g_g)
    ours = re_ranking(*(torch.from_numpy(m) for m in (q_g, q_q, g_g)))
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    assert_close(ours.numpy(), theirs, exact=True)
    assert_close(re_ranking_features(q_feat.double(), g_feat.double()).numpy(), theirs)


def test_metrics_identical_to_reference_output():
    q_feat, g_feat, q_pids, g_pids = clustered_features(13, 60, 300, num_ids=20)
    rng = np.random.default_rng(0)
    q_cams, g_cams = rng.integers(0, 3, 60), rng.integers(0, 3, 300)
    q_g, q_q, g_g = matrices(q_feat, g_feat)
    theirs = evaluate_rank(reference(q_g, q_q, g_g), q_pids, g_pids, q_cams, g_cams)
    ours = evaluate_rank(re_ranking(q_g, q_q, g_g), q_pids, g_pids, q_cams, g_cams)
    by_features = evaluate_rank(re_ranking_features(q_feat, g_feat), q_pids, g_pids, q_cams, g_cams)
    for a, b, c in zip(ours, theirs, by_features):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        np.testing.assert_allclose(c, b, rtol=0, atol=1e-6)
    plain = evaluate_rank(q_g, q_pids, g_pids, q_cams, g_cams)
    assert not np.allclose(ours[1], plain[1])  # re-ranking did change the ranking


def test_tied_prefixes_are_numpys():
    """Integer distances tie everywhere: every prefix used is the set ``np.argsort`` gives."""
    dist = torch.from_numpy(np.random.default_rng(0).integers(0, 4, (50, 40))).float()
    expected = np.argsort(dist.numpy(), axis=1)
    for k, cuts in ((1, [1]), (6, [2, 6]), (13, [4, 7, 13]), (40, [3, 21])):
        ours = _ordered_topk(dist, k, cuts).numpy()
        for cut in cuts:
            assert (np.sort(ours[:, :cut]) == np.sort(expected[:, :cut])).all()


@pytest.mark.parametrize("k1,k2", [(20, 6), (5, 3), (3, 1)])
def test_tied_matrices_match_reference(k1, k2):
    """Distances quantised to a few levels: ties straddle every neighbour-list boundary."""
    rng = np.random.default_rng(k1)
    joint = rng.integers(1, 12, (70, 70)).astype(np.float32)
    joint = joint + joint.T
    np.fill_diagonal(joint, 0)
    q_g, q_q, g_g = joint[:20, 20:], joint[:20, :20], joint[20:, 20:]
    assert_close(re_ranking(q_g, q_q, g_g, k1, k2), reference(q_g, q_q, g_g, k1, k2), exact=True)


def random_sparse_problem(seed, num_rows=4, num_gallery=9, num_cols=12):
    """Sparse query rows (entries), a gallery's inverted index, and the dense expected sums."""
    gen = torch.Generator().manual_seed(seed)
    query = (torch.rand(num_rows, num_cols, generator=gen) < 0.4) * torch.rand(num_rows, num_cols)
    gallery = (torch.rand(num_gallery, num_cols, generator=gen) < 0.4) * torch.rand(
        num_gallery, num_cols, generator=gen
    )
    rows, cols = query.nonzero(as_tuple=True)
    g_rows, g_cols = gallery.t().nonzero(as_tuple=True)[::-1]  # column-major: the index order
    ptr = torch.zeros(num_cols + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(g_cols, minlength=num_cols).cumsum(0)
    args = (rows, cols, query[rows, cols], ptr, g_rows.int(), gallery[g_rows, g_cols])
    expected = torch.minimum(query[:, None, :], gallery[None]).sum(dim=2)
    return args, expected


@pytest.mark.skipif(jaccard_triton.triton is None, reason="Triton is not installed")
def test_triton_kernel_interpreted_equals_torch(monkeypatch):
    """The Triton kernel under TRITON_INTERPRET=1 (on the CPU) against the torch path."""
    for seed in range(3):
        args, expected = random_sparse_problem(seed)
        by_torch = jaccard_triton.jaccard_accumulate(*args, torch.zeros_like(expected))
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert jaccard_triton.triton_mode("cpu") == "interpreter"
        by_kernel = jaccard_triton.jaccard_accumulate(*args, torch.zeros_like(expected))
        monkeypatch.delenv("TRITON_INTERPRET")
        assert jaccard_triton.triton_mode("cpu") == "torch"
        torch.testing.assert_close(by_torch, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(by_kernel, by_torch, rtol=0, atol=1e-6)


@pytest.mark.skipif(jaccard_triton.triton is None, reason="Triton is not installed")
def test_pipeline_with_interpreted_kernel(monkeypatch):
    q_feat, g_feat, _, _ = clustered_features(17, 2, 10)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ours = re_ranking(*matrices(q_feat, g_feat), k1=4, k2=2)
    assert_close(ours, reference(*matrices(q_feat, g_feat), 4, 2), exact=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_cuda_equals_cpu(metric):
    q_feat, g_feat, _, _ = clustered_features(19, 50, 400)
    on_cpu = re_ranking_features(q_feat, g_feat, metric=metric)
    times = {}
    on_gpu = re_ranking_features(
        q_feat.cuda(), g_feat.cuda(), metric=metric, chunk_size=64, timings=times
    )
    assert on_gpu.device.type == "cuda" and list(times) == list(STAGES)
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=TOL)
    matrix = re_ranking(*(torch.from_numpy(m).cuda() for m in matrices(q_feat, g_feat, metric)))
    torch.testing.assert_close(matrix.cpu(), on_cpu, rtol=0, atol=TOL)


def good_matrices():
    q_feat, g_feat, _, _ = clustered_features(23, 4, 12)
    return matrices(q_feat, g_feat)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"q_q_dist": np.zeros((3, 3))}, "q_q_dist must be 4 x 4"),
        ({"g_g_dist": np.zeros((12, 11))}, "g_g_dist must be 12 x 12"),
        ({"q_g_dist": np.zeros(12)}, "q_g_dist must be 2-D and real"),
        ({"q_g_dist": np.zeros((0, 12)), "q_q_dist": np.zeros((0, 0))}, "non-empty"),
        ({"q_g_dist": np.full((4, 12), np.nan)}, "distances of query 0 contain NaN or inf"),
        ({"g_g_dist": np.full((12, 12), np.inf)}, "gallery item 0 contain NaN or inf"),
        ({"k1": 0}, "k1 must be an integer >= 1"),
        ({"k1": 2.5}, "k1 must be an integer >= 1"),
        ({"k2": 0}, "k2 must be an integer >= 1"),
        ({"lambda_value": -0.1}, r"lambda_value must be in \[0, 1\]"),
        ({"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
        ({"lambda_value": float("nan")}, r"lambda_value must be in \[0, 1\]"),
        ({"lambda_value": "a"}, r"lambda_value must be a number in \[0, 1\], got 'a'"),
        ({"memory_budget": 0}, "memory_budget must be an integer >= 1"),
    ],
)
def test_bad_matrix_inputs(change, message):
    q_g, q_q, g_g = good_matrices()
    kwargs = {"q_g_dist": q_g, "q_q_dist": q_q, "g_g_dist": g_g, **change}
    with pytest.raises(ValueError, match=message):
        re_ranking(**kwargs)


def test_all_zero_distances_rejected():
    with pytest.raises(ValueError, match="all distances of query 0 are zero"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((3, 3)))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"g_feat": torch.zeros(12, 5)}, "q_feat and g_feat differ"),
        ({"q_feat": torch.zeros(0, 8)}, "q_feat must be 2-D, non-empty, float"),
        ({"g_feat": torch.zeros(12)}, "g_feat must be 2-D, non-empty, float"),
        ({"q_feat": torch.full((4, 8), float("nan"))}, "q_feat contains NaN or inf"),
        ({"q_feat": torch.zeros(4, 8, dtype=torch.int64)}, "q_feat must be 2-D, non-empty, float"),
        ({"metric": "l2"}, "metric must be one of"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"k2": -1}, "k2 must be an integer >= 1"),
        ({"memory_budget": -5}, "memory_budget must be an integer >= 1"),
    ],
)
def test_bad_feature_inputs(change, message):
    kwargs = {"q_feat": torch.randn(4, 8), "g_feat": torch.randn(12, 8), **change}
    with pytest.raises(ValueError, match=message):
        re_ranking_features(**kwargs)
