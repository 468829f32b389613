"""FastReID's ReID evaluator, ranking with kdreid's vectorised :func:`evaluate_rank`.

Same results dict as ``fastreid.evaluation.ReidEvaluator`` (Rank-1/5/10, mAP, mINP, metric and,
with ``TEST.ROC.ENABLED``, TPR@FPR), same config keys (``TEST.METRIC``, ``TEST.AQE.*``,
``TEST.RERANK.*``, ``TEST.ROC.ENABLED``) and the same multi-process gathering, but it never
compiles Cython and it logs how long distances, re-ranking and ranking took. ``evaluate`` runs
named steps, each a method a subclass may override: gather predictions, split query and gallery,
distances (:meth:`ReidEvaluator.distances`, which calls the re-ranking hook
:meth:`ReidEvaluator.rerank`), ranking, results.
"""

import copy
import itertools
import logging
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from fastreid.evaluation import ReidEvaluator as FastReidEvaluator
from fastreid.evaluation.query_expansion import aqe
from fastreid.utils import comm
from fastreid.utils.compute_dist import build_dist

from kdreid.errors import ConfigError
from kdreid.evaluation.rank import evaluate_rank

__all__ = ["ReidEvaluator"]

logger = logging.getLogger(__name__)


class ImageSet(NamedTuple):
    """Features and labels of the query or the gallery."""

    feats: torch.Tensor  # (N, D) float32
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64


@contextmanager
def _log_duration(what):
    """Log the wall time of the enclosed block as '<what>: <seconds> s'."""
    start = time.perf_counter()
    yield
    logger.info("%s: %.2f s", what, time.perf_counter() - start)


def _fastreid_jaccard_available():
    """Whether FastReID's ``compute_jaccard_distance`` can run: it needs CUDA and faiss-gpu."""
    import faiss

    return torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources")


class ReidEvaluator(FastReidEvaluator):
    """Evaluates ReID retrieval (Market-1501 protocol) from the features collected by ``process``.

    Constructed as FastReID's, ``ReidEvaluator(cfg, num_query, output_dir)``: the first
    ``num_query`` processed images are the query set, the rest the gallery. ``process`` and
    ``reset`` are FastReID's.

    Reference:
        Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015 (CMC, mAP).
        Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021
        (mINP).
    """

    def _compile_dependencies(self):
        """Nothing to compile: ranking is :func:`kdreid.evaluation.evaluate_rank`."""

    def evaluate(self):
        """Compute the metrics over everything processed since the last ``reset``.

        Returns:
            OrderedDict: 'Rank-1', 'Rank-5', 'Rank-10', 'mAP', 'mINP', 'metric' in percent
            ('metric' is the mean of mAP and Rank-1), plus 'TPR@FPR=1e-04/1e-03/1e-02' (fractions,
            as FastReID) with ``TEST.ROC.ENABLED``; an empty dict on non-main processes.
        """
        predictions = self.gather_predictions()
        if predictions is None:
            return {}
        query, gallery = self.split(predictions)
        dist = self.distances(query.feats, gallery.feats)
        with _log_duration(f"Ranking ({len(query.pids)} x {len(gallery.pids)})"):
            cmc, all_ap, all_inp = evaluate_rank(
                dist, query.pids, gallery.pids, query.camids, gallery.camids
            )
        self._results = self.results(cmc, all_ap, all_inp)
        if self.cfg.TEST.ROC.ENABLED:
            self._results.update(self.roc(dist, query, gallery))
        return copy.deepcopy(self._results)

    def gather_predictions(self):
        """This process's predictions, or all processes' on the main one (None elsewhere)."""
        if comm.get_world_size() == 1:
            return self._predictions
        comm.synchronize()
        predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        return list(itertools.chain(*predictions))

    def split(self, predictions):
        """Concatenate the processed batches and split them into query and gallery.

        Args:
            predictions (list[dict]): FastReID's per-batch dicts with 'feats' (B, D), 'pids' (B,)
                and 'camids' (B,).

        Returns:
            tuple[ImageSet, ImageSet]: the first ``num_query`` images, then the rest.
        """
        if not predictions:
            raise ValueError("Nothing to evaluate: process() was not called since the last reset")
        feats = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        num_query = self._num_query
        if not 0 < num_query < len(pids):
            raise ValueError(
                f"num_query is {num_query} but {len(pids)} images were processed; the first "
                "num_query images are the queries and at least one gallery image must follow"
            )
        query = ImageSet(feats[:num_query], pids[:num_query], camids[:num_query])
        gallery = ImageSet(feats[num_query:], pids[num_query:], camids[num_query:])
        return query, gallery

    def distances(self, query_feats, gallery_feats):
        """Query-gallery distances: AQE, then ``TEST.METRIC``, then re-ranking, as configured.

        Args:
            query_feats (Tensor): (Q, D) query features.
            gallery_feats (Tensor): (G, D) gallery features.

        Returns:
            np.ndarray | Tensor: (Q, G) distances, smaller is closer.
        """
        test = self.cfg.TEST
        if test.AQE.ENABLED:
            logger.info("Test with AQE setting")
            with _log_duration("Query expansion (AQE)"):
                query_feats, gallery_feats = aqe(
                    query_feats, gallery_feats, test.AQE.QE_TIME, test.AQE.QE_K, test.AQE.ALPHA
                )
        shape = f"{len(query_feats)} x {len(gallery_feats)}"
        with _log_duration(f"Distances ({test.METRIC}, {shape})"):
            dist = build_dist(query_feats, gallery_feats, test.METRIC)
        if test.RERANK.ENABLED:
            logger.info("Test with rerank setting")
            with _log_duration(f"Re-ranking ({shape})"):
                dist = self.rerank(query_feats, gallery_feats, dist)
        return dist

    def rerank(self, query_feats, gallery_feats, dist):
        """Blend ``dist`` with the k-reciprocal Jaccard distance (``TEST.RERANK.K1/K2/LAMBDA``).

        ``(1 - LAMBDA) * jaccard + LAMBDA * dist``, exactly as FastReID's evaluator does, through
        FastReID's ``build_dist(metric='jaccard')`` (features are L2-normalised first when
        ``TEST.METRIC`` is 'cosine'). That implementation needs CUDA and faiss-gpu.

        Args:
            query_feats (Tensor): (Q, D) query features (after AQE).
            gallery_feats (Tensor): (G, D) gallery features (after AQE).
            dist (np.ndarray | Tensor): (Q, G) distances under ``TEST.METRIC``.

        Returns:
            np.ndarray | Tensor: (Q, G) re-ranked distances.

        Reference:
            Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
            CVPR 2017.
        """
        if not _fastreid_jaccard_available():
            raise ConfigError(
                "TEST.RERANK.ENABLED needs CUDA and faiss-gpu here (FastReID's Jaccard re-ranking "
                "runs only on a GPU); set TEST.RERANK.ENABLED False to evaluate without it"
            )
        rerank = self.cfg.TEST.RERANK
        if self.cfg.TEST.METRIC == "cosine":
            query_feats = F.normalize(query_feats, dim=1)
            gallery_feats = F.normalize(gallery_feats, dim=1)
        jaccard = build_dist(
            query_feats, gallery_feats, metric="jaccard", k1=rerank.K1, k2=rerank.K2
        )
        return jaccard * (1 - rerank.LAMBDA) + dist * rerank.LAMBDA

    @staticmethod
    def results(cmc, all_ap, all_inp):
        """FastReID's results dict from the ranking output.

        Args:
            cmc (np.ndarray): (R,) float32 CMC curve.
            all_ap (np.ndarray): (V,) AP per valid query.
            all_inp (np.ndarray): (V,) INP per valid query.

        Returns:
            OrderedDict: 'Rank-1', 'Rank-5', 'Rank-10', 'mAP', 'mINP', 'metric', in percent. With
            fewer than k gallery images, Rank-k is the last CMC value (where FastReID fails).
        """
        m_ap = np.mean(all_ap)
        m_inp = np.mean(all_inp)
        results = OrderedDict()
        for r in (1, 5, 10):
            results[f"Rank-{r}"] = cmc[min(r, len(cmc)) - 1] * 100
        results["mAP"] = m_ap * 100
        results["mINP"] = m_inp * 100
        results["metric"] = (m_ap + cmc[0]) / 2 * 100
        return results

    @staticmethod
    def roc(dist, query, gallery):
        """True-positive rates at false-positive rates 1e-4, 1e-3, 1e-2 (FastReID's ROC keys).

        Args:
            dist (np.ndarray | Tensor): (Q, G) distances.
            query (ImageSet): query labels.
            gallery (ImageSet): gallery labels.

        Returns:
            OrderedDict: 'TPR@FPR=1e-04', 'TPR@FPR=1e-03', 'TPR@FPR=1e-02'.
        """
        from sklearn import metrics

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Cython roc evaluation")
            from fastreid.evaluation.roc import evaluate_roc

        if isinstance(dist, torch.Tensor):
            dist = dist.cpu().numpy()
        scores, labels = evaluate_roc(dist, query.pids, gallery.pids, query.camids, gallery.camids)
        fprs, tprs, _ = metrics.roc_curve(labels, scores)
        results = OrderedDict()
        for fpr in (1e-4, 1e-3, 1e-2):
            results[f"TPR@FPR={fpr:.0e}"] = tprs[np.argmin(np.abs(fprs - fpr))]
        return results
