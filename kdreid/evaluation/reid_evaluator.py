"""FastReID's ReID evaluator, ranking with kdreid's vectorised :func:`evaluate_rank`.

Same results dict as ``fastreid.evaluation.ReidEvaluator`` (Rank-1/5/10, mAP, mINP, metric and,
with ``TEST.ROC.ENABLED``, TPR@FPR), same config keys (``TEST.METRIC``, ``TEST.AQE.*``,
``TEST.RERANK.*``, ``TEST.ROC.ENABLED``) and the same multi-process gathering, but it ranks
without FastReID's Cython code (which :mod:`kdreid.compat` keeps FastReID from compiling), it
logs how long each stage took, and with ``TEST.RERANK.ENABLED`` it re-ranks with kdreid's exact
sparse k-reciprocal re-ranking and logs the metrics without and with it.
``evaluate`` runs named steps, each a method a subclass may override: gather predictions, split
query and gallery, query expansion, distances, ranking, re-ranking, results.
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
from fastreid.evaluation import ReidEvaluator as FastReidEvaluator
from fastreid.evaluation.query_expansion import aqe
from fastreid.utils import comm
from fastreid.utils.compute_dist import build_dist
from tabulate import tabulate

from kdreid.evaluation.rank import evaluate_rank

__all__ = ["ReidEvaluator"]

logger = logging.getLogger(__name__)


class ImageSet(NamedTuple):
    """Features and labels of the query or the gallery."""

    feats: torch.Tensor  # (N, D) float32
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64


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

    def evaluate(self):
        """Compute the metrics over everything processed since the last ``reset``.

        With ``TEST.RERANK.ENABLED`` the metrics are computed without and with k-reciprocal
        re-ranking, both are logged side by side, and the re-ranked ones are returned (as
        FastReID does). The time of every stage is logged.

        Returns:
            OrderedDict: 'Rank-1', 'Rank-5', 'Rank-10', 'mAP', 'mINP', 'metric' in percent
            ('metric' is the mean of mAP and Rank-1), plus 'TPR@FPR=1e-04/1e-03/1e-02' (fractions,
            as FastReID) with ``TEST.ROC.ENABLED``; an empty dict on non-main processes.
        """
        self.stage_seconds = OrderedDict()
        predictions = self.gather_predictions()
        if predictions is None:
            return {}
        query, gallery = self.split(predictions)
        query_feats, gallery_feats = self.expand_queries(query.feats, gallery.feats)
        dist = self.distances(query_feats, gallery_feats)
        self._results = self.rank(dist, query, gallery)
        if self.cfg.TEST.RERANK.ENABLED:
            plain = self._results
            dist = self.rerank(query_feats, gallery_feats)
            self._results = self.rank(dist, query, gallery, stage="ranking (re-ranked)")
            self.log_comparison(plain, self._results)
        if self.cfg.TEST.ROC.ENABLED:
            self._results.update(self.roc(dist, query, gallery))
        logger.info(
            "Evaluation stages: %s",
            ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.stage_seconds.items()),
        )
        return copy.deepcopy(self._results)

    @contextmanager
    def timed(self, stage):
        """Record the wall time of the enclosed block under ``stage`` in ``self.stage_seconds``.

        On CUDA the device is synchronised at both ends, so the stage owns the kernels it queued.
        """
        device = self._device()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.stage_seconds[stage] = time.perf_counter() - start

    def rank(self, dist, query, gallery, stage="ranking"):
        """Market-1501 metrics of a (Q, G) distance matrix (see :meth:`results`)."""
        with self.timed(stage):
            cmc, all_ap, all_inp = evaluate_rank(
                dist, query.pids, gallery.pids, query.camids, gallery.camids
            )
        return self.results(cmc, all_ap, all_inp)

    def log_comparison(self, plain, reranked):
        """Log the metrics without and with re-ranking as one table."""
        rerank = self.cfg.TEST.RERANK
        keys = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP")
        rows = [
            ["without re-ranking", *(plain[k] for k in keys)],
            [
                f"re-ranked (k1={rerank.K1}, k2={rerank.K2}, lambda={rerank.LAMBDA})",
                *(reranked[k] for k in keys),
            ],
        ]
        table = tabulate(rows, headers=["", *keys], tablefmt="pipe", floatfmt=".2f")
        logger.info("Re-ranking:\n%s", table)

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

    def expand_queries(self, query_feats, gallery_feats):
        """Average query expansion (``TEST.AQE.*``) when enabled, else the features unchanged.

        Args:
            query_feats (Tensor): (Q, D) query features.
            gallery_feats (Tensor): (G, D) gallery features.

        Returns:
            tuple[Tensor, Tensor]: (Q, D) and (G, D) features.
        """
        aqe_cfg = self.cfg.TEST.AQE
        if not aqe_cfg.ENABLED:
            return query_feats, gallery_feats
        with self.timed("query expansion (AQE)"):
            return aqe(query_feats, gallery_feats, aqe_cfg.QE_TIME, aqe_cfg.QE_K, aqe_cfg.ALPHA)

    def distances(self, query_feats, gallery_feats):
        """Query-gallery distances under ``TEST.METRIC`` (FastReID's ``build_dist``).

        Args:
            query_feats (Tensor): (Q, D) query features.
            gallery_feats (Tensor): (G, D) gallery features.

        Returns:
            np.ndarray: (Q, G) distances, smaller is closer.
        """
        with self.timed(f"distances ({self.cfg.TEST.METRIC})"):
            return build_dist(query_feats, gallery_feats, self.cfg.TEST.METRIC)

    def rerank(self, query_feats, gallery_feats):
        """k-reciprocal re-ranked distances (``TEST.RERANK.K1/K2/LAMBDA``), on the model's device.

        kdreid's exact, sparse :func:`~kdreid.evaluation.re_ranking_features` (the reference
        algorithm of Zhong et al., which FastReID ships but its evaluator does not call): the
        final distance is ``(1 - LAMBDA) * jaccard + LAMBDA * d``, with ``d`` the squared
        ``TEST.METRIC`` distance normalised per row, as in the reference.

        Args:
            query_feats (Tensor): (Q, D) query features (after AQE).
            gallery_feats (Tensor): (G, D) gallery features (after AQE).

        Returns:
            Tensor: (Q, G) re-ranked distances.

        Reference:
            Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
            CVPR 2017.
        """
        from kdreid.evaluation.rerank import re_ranking_features

        rerank = self.cfg.TEST.RERANK
        device = self._device()
        parts = {}
        with self.timed("re-ranking"):
            dist = re_ranking_features(
                query_feats.to(device),
                gallery_feats.to(device),
                k1=rerank.K1,
                k2=rerank.K2,
                lambda_value=rerank.LAMBDA,
                metric=self.cfg.TEST.METRIC,
                timings=parts,
            )
        logger.info(
            "Re-ranking on %s: %s",
            device,
            ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in parts.items()),
        )
        return dist

    def _device(self):
        requested = str(self.cfg.MODEL.DEVICE)
        if requested.startswith("cuda") and torch.cuda.is_available():
            return torch.device(requested)
        return torch.device("cpu")

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
