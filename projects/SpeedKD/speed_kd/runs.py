"""SpeedKD's train-then-benchmark runs: :mod:`kdreid.runs` with SpeedKD's ``train_net.py``, for
the demo and the evidence benchmark."""

import os

from kdreid.runs import REPO, Run, run_logged
from kdreid.runs import train_and_record as _train_and_record

__all__ = ["REPO", "TRAIN_NET", "Run", "train_and_record", "run_logged"]

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/SpeedKD
TRAIN_NET = os.path.join(PROJECT, "train_net.py")
"""SpeedKD's train_net.py: trains SpeedKD's distillers and any plain FastReID config."""


def train_and_record(name, config, output_dir, seed, opts=(), echo=None, weights=None):
    """:func:`kdreid.runs.train_and_record` with SpeedKD's :data:`TRAIN_NET`.

    Returns:
        Run
    """
    return _train_and_record(
        name, config, output_dir, seed, opts, echo, weights, train_net=TRAIN_NET
    )
