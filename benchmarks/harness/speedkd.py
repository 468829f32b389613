"""SpeedKD's train-then-benchmark runs: :mod:`harness.runs` with SpeedKD's ``train_net.py``, for
the demo and the SpeedKD evidence benchmark."""

import os

from harness import runs

__all__ = ["STUDENTS", "TRAIN_NET", "missing_student", "train_and_record"]

TRAIN_NET = os.path.join(runs.REPO, "projects", "SpeedKD", "train_net.py")
"""SpeedKD's train_net.py: trains SpeedKD's distillers and any plain FastReID config."""

STUDENTS = "configs/SpeedKD/Synthetic"
"""The SynthReID students, relative to the repository root: ``<name>.yml`` alone,
``kd_<name>.yml`` distilled."""


def missing_student(student):
    """Why ``student`` cannot be run (a config of the pair is missing, the students there named),
    or ``None`` when both configs exist."""
    folder = os.path.join(runs.REPO, STUDENTS)
    for name in (f"{student}.yml", f"kd_{student}.yml"):
        if not os.path.isfile(os.path.join(folder, name)):
            files = os.listdir(folder)
            known = sorted(f[3:-4] for f in files if f.startswith("kd_") and f[3:] in files)
            return f"'{student}' has no config {STUDENTS}/{name}; students: {', '.join(known)}"
    return None


def train_and_record(name, config, output_dir, seed, opts=(), echo=None, weights=None):
    """:func:`harness.runs.train_and_record` with SpeedKD's :data:`TRAIN_NET`.

    Returns:
        harness.runs.Run
    """
    return runs.train_and_record(
        name, config, output_dir, seed, opts, echo, weights, train_net=TRAIN_NET
    )
