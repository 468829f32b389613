"""Train-then-benchmark runs of ``train_net.py``, each in its own process, for the demo and the
benchmarks: every run trains a config into its own folder (resuming if it was interrupted), then
``--eval-only`` writes its speed/accuracy record. A run whose record exists is not repeated."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["REPO", "TRAIN_NET", "Run", "train_and_record", "run_logged"]

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # projects/SpeedKD
REPO = os.path.dirname(os.path.dirname(PROJECT))
TRAIN_NET = os.path.join(PROJECT, "train_net.py")


@dataclass
class Run:
    """A finished run: its checkpoint, its record, and the seconds its training took (wall clock,
    evaluations during training included; ``None`` if it was trained elsewhere)."""

    weights: str
    record: dict
    train_seconds: float | None


def run_logged(cmd, log_path, echo=None):
    """Run ``cmd`` from the repository root with its output in ``log_path``.

    Args:
        cmd (list[str]): the command.
        log_path (str): where its stdout and stderr go.
        echo (callable | None): called with each output line that reports training progress
            (FastReID's ``eta:`` lines), e.g. to show them on the console.

    Returns:
        float: seconds it ran.

    Raises:
        RuntimeError: it failed; the message names the log and repeats its last lines.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.perf_counter()
    tail = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-5:]
            if echo is not None and "eta:" in line:
                echo(line.rstrip())
        proc.wait()
    if proc.returncode:
        last = "\n    ".join(tail)
        raise RuntimeError(f"failed (exit {proc.returncode}), see {log_path}:\n    {last}")
    return time.perf_counter() - start


def train_and_record(name, config, output_dir, seed, opts=(), echo=None, weights=None):
    """Train ``config`` into ``output_dir`` unless done, then write and return its record.

    Args:
        name (str): the record's name (``KDREID.NAME``).
        config (str): a config file, relative to the repository root or absolute.
        output_dir (str): the run's folder; the record goes to ``<output_dir>/eval``.
        seed (int): ``KDREID.SEED``.
        opts (Sequence[str]): more ``KEY VALUE`` options for training.
        echo (callable | None): see :func:`run_logged`.
        weights (str | None): a checkpoint trained elsewhere: evaluate it, do not train.

    Returns:
        Run
    """
    record_path = os.path.join(output_dir, "eval", "speed_accuracy.json")
    trained_elsewhere = weights is not None
    weights = os.path.abspath(weights) if weights else os.path.join(output_dir, "model_final.pth")
    common = ["KDREID.PROGRESS", "False", "KDREID.SEED", str(seed)]
    time_path = os.path.join(output_dir, "train_seconds.json")
    if not os.path.isfile(record_path):
        if not trained_elsewhere and not os.path.isfile(weights):
            seconds = run_logged(
                [sys.executable, TRAIN_NET, "--config-file", config, "--resume",
                 "OUTPUT_DIR", output_dir, *common, *opts],
                os.path.join(output_dir, "train.out"),
                echo,
            )  # fmt: skip
            with open(time_path, "w") as f:
                json.dump({"seconds": seconds}, f)
        run_logged(
            [sys.executable, TRAIN_NET, "--config-file", config, "--eval-only",
             "MODEL.WEIGHTS", weights, "OUTPUT_DIR", os.path.join(output_dir, "eval"),
             "KDREID.NAME", name, *common],
            os.path.join(output_dir, "eval.out"),
        )  # fmt: skip
    seconds = None
    if os.path.isfile(time_path):
        with open(time_path) as f:
            seconds = json.load(f)["seconds"]
    with open(record_path) as f:
        return Run(weights=weights, record=json.load(f), train_seconds=seconds)
