"""Retrieval evaluation: exact vectorised CMC/mAP/mINP and FastReID's evaluator built on them."""

from kdreid.evaluation.rank import evaluate_rank
from kdreid.evaluation.reid_evaluator import ReidEvaluator
from kdreid.evaluation.rerank import re_ranking, re_ranking_features

__all__ = ["evaluate_rank", "ReidEvaluator", "re_ranking", "re_ranking_features"]
