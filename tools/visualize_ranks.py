"""Draw the ranked lists of a trained model's worst (or best) queries, to see how it fails.

    python tools/visualize_ranks.py --config-file CONFIG [--dataset NAME] [--num-queries N]
        [--topk K] [--order worst|best] [--rerank] [--output-dir DIR]
        MODEL.WEIGHTS path/to/model_final.pth [KEY VALUE ...]

Builds the model of the config, loads ``MODEL.WEIGHTS`` strictly (as ``--eval-only`` does),
extracts the features of the test set (``--dataset``, default the first of ``DATASETS.TESTS``;
``TEST.FLIP.ENABLED`` is honoured), computes ``TEST.METRIC`` distances, ranks, and writes one PNG
per query for the ``--num-queries`` queries of lowest AP (``--order best``: highest) to
``--output-dir``: the query, then its top-k gallery images (green border: true match, red: false
match; junk left out). With ``--rerank`` a second row shows the k-reciprocal re-ranked list
(``TEST.RERANK.K1/K2/LAMBDA``). Bad input ends with ``error: ...`` and exit status 2.
"""

import argparse
import logging
import os

import numpy as np
import torch

os.environ.setdefault("FASTREID_DATASETS", "datasets")  # FastReID reads it once, at import

import kdreid  # noqa: E402, F401  (repairs fastreid before it is imported)

# isort: split
from fastreid.data.datasets import DATASET_REGISTRY  # noqa: E402
from fastreid.evaluation import DatasetEvaluator, inference_on_dataset  # noqa: E402
from fastreid.evaluation.query_expansion import aqe  # noqa: E402
from fastreid.utils.compute_dist import build_dist  # noqa: E402
from fastreid.utils.logger import setup_logger  # noqa: E402

from kdreid.checkpoint import prepare_output_dir  # noqa: E402
from kdreid.cli import at_least, build_inference_model, report_user_errors  # noqa: E402
from kdreid.engine import ProgressLoader, Trainer  # noqa: E402
from kdreid.engine.validation import check_registered  # noqa: E402
from kdreid.errors import ConfigError, OutputDirError, UserInputError  # noqa: E402
from kdreid.evaluation import evaluate_rank  # noqa: E402
from kdreid.evaluation.visualize import (  # noqa: E402
    pick_queries,
    render_ranked_lists,
    valid_queries,
)

logger = logging.getLogger("kdreid.visualize_ranks")


class FeatureCollector(DatasetEvaluator):
    """Keeps the features, ids and image paths of every processed batch, in loader order."""

    def reset(self):
        self.feats, self.pids, self.camids, self.paths = [], [], [], []

    def process(self, inputs, outputs):
        self.feats.append(outputs.to("cpu", torch.float32))
        self.pids.append(inputs["targets"].cpu())
        self.camids.append(inputs["camids"].cpu())
        self.paths.extend(inputs["img_paths"])

    def evaluate(self):
        return {}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="test set to draw (default: DATASETS.TESTS[0])")
    parser.add_argument("--num-queries", type=at_least(1), default=20, help="queries to draw (20)")
    parser.add_argument("--topk", type=at_least(1), default=10, help="gallery images per row (10)")
    parser.add_argument(
        "--order", choices=("worst", "best"), default="worst", help="lowest or highest AP first"
    )
    parser.add_argument(
        "--rerank", action="store_true", help="add a row with the k-reciprocal re-ranked list"
    )
    parser.add_argument("--output-dir", default="logs/ranked_lists", help="folder for the PNGs")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def extract(cfg, model, dataset_name):
    """Features and labels of a test set.

    Returns:
        tuple[FeatureCollector, int]: the collected batches and the number of queries (the first
        ``num_query`` images are the queries).
    """
    loader, num_query = Trainer.build_test_loader(cfg, dataset_name)
    collector = FeatureCollector()
    progress = ProgressLoader(loader, f"Extracting {dataset_name}", enabled=cfg.KDREID.PROGRESS)
    inference_on_dataset(model, progress, collector, flip_test=cfg.TEST.FLIP.ENABLED)
    return collector, num_query


def load_reranker():
    """kdreid's ``re_ranking_features``, imported when asked for (it may not exist yet).

    Raises:
        ConfigError: this version of kdreid has no feature-input re-ranking.
    """
    try:
        from kdreid.evaluation import re_ranking_features
    except ImportError:
        raise ConfigError(
            "--rerank needs kdreid.evaluation.re_ranking_features, which this version of kdreid "
            "does not have; run without --rerank"
        ) from None
    return re_ranking_features


def rerank_distances(cfg, reranker, q_feat, g_feat):
    """k-reciprocal re-ranked distances with ``TEST.RERANK.K1/K2/LAMBDA`` and ``TEST.METRIC``.

    Args:
        cfg (CfgNode): the config.
        reranker (Callable): ``re_ranking_features``.
        q_feat (Tensor): (Q, D) query features.
        g_feat (Tensor): (G, D) gallery features.

    Returns:
        np.ndarray: (Q, G) distances.
    """
    rerank = cfg.TEST.RERANK
    dist = reranker(
        q_feat,
        g_feat,
        k1=rerank.K1,
        k2=rerank.K2,
        lambda_value=rerank.LAMBDA,
        metric=cfg.TEST.METRIC,
    )
    return dist.cpu().numpy() if isinstance(dist, torch.Tensor) else np.asarray(dist)


def run(args):
    def dataset_registered(cfg):
        if args.dataset:
            check_registered(DATASET_REGISTRY, [args.dataset], "--dataset", "dataset")

    setup_logger(name="kdreid")  # FastReID's INFO logs (the whole model printed) stay quiet
    reranker = load_reranker() if args.rerank else None
    cfg, model = build_inference_model(args.config_file, args.opts, check=dataset_registered)
    prepare_output_dir(args.output_dir)  # once the weights are known to fit
    dataset_name = args.dataset or cfg.DATASETS.TESTS[0]

    data, num_query = extract(cfg, model, dataset_name)
    feats = torch.cat(data.feats)
    pids = torch.cat(data.pids).numpy()
    camids = torch.cat(data.camids).numpy()
    q_feat, g_feat = feats[:num_query], feats[num_query:]
    if cfg.TEST.AQE.ENABLED:  # as the evaluator ranks
        aqe_cfg = cfg.TEST.AQE
        q_feat, g_feat = aqe(q_feat, g_feat, aqe_cfg.QE_TIME, aqe_cfg.QE_K, aqe_cfg.ALPHA)
    labels = (pids[:num_query], pids[num_query:], camids[:num_query], camids[num_query:])
    dist = build_dist(q_feat, g_feat, cfg.TEST.METRIC)
    rerank = rerank_distances(cfg, reranker, q_feat, g_feat) if reranker else None

    _, all_ap, _ = evaluate_rank(dist, *labels)
    chosen = pick_queries(all_ap, valid_queries(*labels), args.num_queries, args.order)
    logger.info(
        "%s: mAP %.1f%%; drawing the %d queries of %s AP",
        dataset_name,
        100 * all_ap.mean(),
        len(chosen),
        "lowest" if args.order == "worst" else "highest",
    )
    try:
        written = render_ranked_lists(
            data.paths[:num_query],
            data.paths[num_query:],
            dist,
            *labels,
            query_indices=chosen,
            out_dir=args.output_dir,
            topk=args.topk,
            rerank_distmat=rerank,
        )
    except UserInputError:
        raise
    except OSError as exc:
        raise OutputDirError(f"Cannot write the pictures: {exc}") from exc
    print(f"Wrote {len(written)} picture(s) to {args.output_dir}")
    return written


def main(argv=None):
    report_user_errors(run, parse_args(argv))


if __name__ == "__main__":
    main()
