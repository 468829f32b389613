"""Retrieval evaluation: exact vectorised CMC/mAP/mINP and FastReID's evaluator built on them."""

from kdreid.evaluation.rank import evaluate_rank
from kdreid.evaluation.reid_evaluator import ReidEvaluator

__all__ = ["evaluate_rank", "ReidEvaluator"]
