"""SpeedKD's train-then-benchmark runs: :mod:`kdreid.runs` with SpeedKD's ``train_net.py``, for
the demo and the evidence benchmark."""

import os

from kdreid.runs import REPO, Run, run_logged
from kdreid.runs import train_and_record as _train_and_record

__all__ = [
    "REPO",
    "STUDENTS",
    "TRAIN_NET",
    "Run",
    "missing_student",
    "train_and_record",
    "run_logged",
]

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/SpeedKD
TRAIN_NET = os.path.join(PROJECT, "train_net.py")
"""SpeedKD's train_net.py: trains SpeedKD's distillers and any plain FastReID config."""

STUDENTS = "configs/SpeedKD/Synthetic"
"""The SynthReID students, relative to :data:`REPO`: ``<name>.yml`` alone, ``kd_<name>.yml``
distilled."""


def missing_student(student):
    """Why ``student`` cannot be run (a config of the pair is missing, the students there named),
    or ``None`` when both configs exist."""
    folder = os.path.join(REPO, STUDENTS)
    for name in (f"{student}.yml", f"kd_{student}.yml"):
        if not os.path.isfile(os.path.join(folder, name)):
            files = os.listdir(folder)
            known = sorted(f[3:-4] for f in files if f.startswith("kd_") and f[3:] in files)
            return f"'{student}' has no config {STUDENTS}/{name}; students: {', '.join(known)}"
    return None


def train_and_record(name, config, output_dir, seed, opts=(), echo=None, weights=None):
    """:func:`kdreid.runs.train_and_record` with SpeedKD's :data:`TRAIN_NET`.

    Returns:
        Run
    """
    return _train_and_record(
        name, config, output_dir, seed, opts, echo, weights, train_net=TRAIN_NET
    )
