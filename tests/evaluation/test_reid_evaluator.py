"""kdreid's ReidEvaluator against FastReID's on the same processed predictions."""

import logging

import numpy as np
import pytest
import torch
from fastreid.evaluation import ReidEvaluator as FastReidEvaluator

from kdreid.config import get_cfg
from kdreid.evaluation import ReidEvaluator

NUM_QUERY = 30
NUM_GALLERY = 130
METRIC_KEYS = ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric"]


def make_cfg(metric="cosine", aqe=False, roc=False, rerank=False):
    cfg = get_cfg()
    cfg.TEST.METRIC = metric
    cfg.TEST.AQE.ENABLED = aqe
    cfg.TEST.AQE.QE_K = 3
    cfg.TEST.ROC.ENABLED = roc
    cfg.TEST.RERANK.ENABLED = rerank
    return cfg


def batches(seed=0, batch_size=16, dim=32, num_ids=15, num_cams=4):
    """(inputs, outputs) pairs as a test loader and model give them: identity centre plus noise."""
    gen = torch.Generator().manual_seed(seed)
    total = NUM_QUERY + NUM_GALLERY
    pids = torch.randint(0, num_ids, (total,), generator=gen)
    camids = torch.randint(0, num_cams, (total,), generator=gen)
    centres = torch.randn(num_ids, dim, generator=gen)
    feats = centres[pids] + 0.9 * torch.randn(total, dim, generator=gen)
    for start in range(0, total, batch_size):
        part = slice(start, start + batch_size)
        yield {"targets": pids[part], "camids": camids[part]}, feats[part]


def run(evaluator, seed=0):
    evaluator.reset()
    for inputs, outputs in batches(seed):
        evaluator.process(inputs, outputs)
    return evaluator.evaluate()


@pytest.mark.parametrize(
    "metric,aqe,roc",
    [("cosine", False, False), ("euclidean", False, True), ("cosine", True, False)],
)
def test_results_match_fastreid(metric, aqe, roc):
    cfg = make_cfg(metric, aqe=aqe, roc=roc)
    ours = run(ReidEvaluator(cfg, NUM_QUERY))
    theirs = run(FastReidEvaluator(cfg, NUM_QUERY))
    assert list(ours) == list(theirs)
    assert list(ours)[:6] == METRIC_KEYS
    assert 0 < ours["mAP"] < 100  # neither trivial nor hopeless
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-4), key


def test_logs_durations_and_adds_no_time_key(caplog):
    with caplog.at_level(logging.INFO, logger="kdreid.evaluation.reid_evaluator"):
        results = run(ReidEvaluator(make_cfg(), NUM_QUERY))
    stages = [r.getMessage() for r in caplog.records if "Evaluation stages" in r.getMessage()]
    assert len(stages) == 1
    assert "distances (cosine)" in stages[0] and "ranking" in stages[0]
    assert list(results) == METRIC_KEYS


def test_never_compiles(monkeypatch):
    """FastReID's evaluator runs ``make`` in site-packages and exits if that fails; kdreid.compat
    keeps it from compiling, ours included."""
    import subprocess
    import sys

    from fastreid.evaluation import rank_cylib

    def refuse(*args, **kwargs):
        raise AssertionError("tried to compile or exit")

    monkeypatch.setattr(rank_cylib, "compile_helper", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(sys, "exit", refuse)
    ReidEvaluator(make_cfg(), NUM_QUERY)


def test_reset_forgets_predictions():
    evaluator = ReidEvaluator(make_cfg(), NUM_QUERY)
    first = run(evaluator, seed=1)
    assert run(evaluator, seed=1) == first
    evaluator.reset()
    with pytest.raises(ValueError, match="process\\(\\) was not called"):
        evaluator.evaluate()


@pytest.mark.parametrize("num_query", [0, NUM_QUERY + NUM_GALLERY])
def test_rejects_num_query_without_gallery_or_queries(num_query):
    with pytest.raises(ValueError, match=f"num_query is {num_query} but 160 images"):
        run(ReidEvaluator(make_cfg(), num_query))


def test_rank_k_beyond_gallery_uses_last_cmc_value():
    cmc = np.array([0.5, 0.75, 1.0], dtype=np.float32)
    results = ReidEvaluator.results(cmc, np.array([0.5, 0.7]), np.array([0.25, 0.5]))
    assert results["Rank-1"] == pytest.approx(50)
    assert results["Rank-5"] == results["Rank-10"] == pytest.approx(100)
    assert results["mAP"] == pytest.approx(60)
    assert results["mINP"] == pytest.approx(37.5)
    assert results["metric"] == pytest.approx(55)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rerank_matches_the_reference_and_logs_both(metric, caplog):
    """TEST.RERANK: the reference re_ranking on build_dist's matrices, then the same ranking."""
    from fastreid.evaluation.rerank import re_ranking as reference
    from fastreid.utils.compute_dist import build_dist

    from kdreid.evaluation import evaluate_rank

    cfg = make_cfg(metric=metric, rerank=True)
    with caplog.at_level(logging.INFO, logger="kdreid.evaluation.reid_evaluator"):
        ours = run(ReidEvaluator(cfg, NUM_QUERY))
    inputs = list(batches())
    feats = torch.cat([f for _, f in inputs])
    pids = torch.cat([i["targets"] for i, _ in inputs]).numpy()
    camids = torch.cat([i["camids"] for i, _ in inputs]).numpy()
    q, g = feats[:NUM_QUERY], feats[NUM_QUERY:]
    rerank = cfg.TEST.RERANK
    dist = reference(
        build_dist(q, g, metric),
        build_dist(q, q, metric),
        build_dist(g, g, metric),
        k1=rerank.K1,
        k2=rerank.K2,
        lambda_value=rerank.LAMBDA,
    )
    cmc, all_ap, _ = evaluate_rank(
        dist, pids[:NUM_QUERY], pids[NUM_QUERY:], camids[:NUM_QUERY], camids[NUM_QUERY:]
    )
    assert ours["mAP"] == pytest.approx(np.mean(all_ap) * 100, abs=1e-4)
    assert ours["Rank-1"] == pytest.approx(cmc[0] * 100, abs=1e-4)
    plain = run(ReidEvaluator(make_cfg(metric=metric), NUM_QUERY))
    assert ours["mAP"] != pytest.approx(plain["mAP"], abs=1e-3)  # re-ranking changed something
    assert "without re-ranking" in caplog.text and "re-ranked (k1=20" in caplog.text
    assert "re-ranking" in [r.getMessage() for r in caplog.records if "stages" in r.getMessage()][0]
    assert "Re-ranking on cpu: neighbours" in caplog.text and "jaccard" in caplog.text
