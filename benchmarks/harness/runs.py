"""Train-then-benchmark runs of a project's ``train_net.py``, each in its own process, for the
demo and the benchmarks: every run trains a config into its own folder (resuming if it was
interrupted), then ``--eval-only`` writes its speed/accuracy record (:mod:`kdreid.benchmark`). A
run whose record exists is not repeated, provided it was made with the same config, seed and
options (``run.json`` in its folder): a folder made otherwise is refused rather than silently
reused.

Any project's ``train_net.py`` trains any FastReID config its package can build; the caller names
the one to use (``train_net``), so this module knows no project.
"""

import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

import yaml

from kdreid.checkpoint import prepare_output_dir, read_json, write_json
from kdreid.errors import OutputDirError, StaleRunError, report_user_errors

__all__ = [
    "REPO",
    "Run",
    "RunFailedError",
    "StaleRunError",
    "check_reuse",
    "main_of_runs",
    "run_logged",
    "train_and_record",
    "training_images",
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The repository root (the folder holding ``benchmarks/``): commands run from here."""


_START = re.compile(r"Starting training from epoch (\d+)")
_STEP = re.compile(r"epoch/iter: (\d+)/(\d+)")


class RunFailedError(RuntimeError):
    """A run's process failed: the message names its log and repeats its last lines."""


@dataclass
class Run:
    """A finished run.

    Attributes:
        weights: its checkpoint.
        record: its speed/accuracy record (:mod:`kdreid.benchmark`).
        train_seconds: wall-clock seconds of the training process (start-up, evaluations during
            training and the final one included); ``None`` if it was trained elsewhere.
        train_images: images that process trained on (iterations × ``SOLVER.IMS_PER_BATCH``);
            ``None`` if it was trained elsewhere or its log does not tell.
    """

    weights: str
    record: dict
    train_seconds: float | None
    train_images: int | None = None

    @property
    def train_throughput(self) -> float | None:
        """Training images per wall-clock second, or ``None`` where either figure is unknown."""
        if not self.train_seconds or self.train_images is None:
            return None
        return self.train_images / self.train_seconds


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
        RunFailedError: it failed; the message names the log and repeats its last lines (from
            its first ``Traceback`` or ``error:`` line on, where it has one).
        OutputDirError: the log's folder cannot be created or written.
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        log = open(log_path, "w")
    except OSError as exc:
        raise OutputDirError(f"Cannot write the log '{log_path}': {exc.strerror or exc}") from exc
    start = time.perf_counter()
    last = _Tail()
    with log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for line in proc.stdout:
                log.write(line)
                last.add(line.rstrip())
                if echo is not None and "eta:" in line:
                    echo(line.rstrip())
            proc.wait()
        except BaseException:  # Ctrl-C, an error in echo: leave no training running unseen
            proc.terminate()
            proc.wait()
            raise
    if proc.returncode:
        lines = "\n    ".join(last.lines())
        raise RunFailedError(f"failed (exit {proc.returncode}), see {log_path}:\n    {lines}")
    return time.perf_counter() - start


class _Tail:
    """The lines of a failed run worth repeating: its last 5, or, where it printed an error (a
    line starting with ``Traceback`` or ``error:``), the lines from the first such one on (that
    one and the last 8 where there are more), not whatever it printed before, e.g. the end of a
    model's dump."""

    MARKERS = ("Traceback", "error:")
    KEEP = 8

    def __init__(self):
        self.plain = deque(maxlen=5)
        self.first = None  # the first error line
        self.after = deque(maxlen=self.KEEP)  # the last lines after it
        self.skipped = 0  # lines after it not kept

    def add(self, line):
        if self.first is None:
            if line.startswith(self.MARKERS):
                self.first = line
            else:
                self.plain.append(line)
            return
        if len(self.after) == self.KEEP:
            self.skipped += 1
        self.after.append(line)

    def lines(self):
        if self.first is None:
            return list(self.plain)
        skipped = [f"... ({self.skipped} lines)"] if self.skipped else []
        return [self.first, *skipped, *self.after]


def main_of_runs(fn, *args):
    """Call ``fn(*args)``, the ``main`` of a script of runs (the demo, the evidence scripts), so
    that it ends with one line, not a traceback: bad input or a folder of other settings, status
    2 (:func:`kdreid.errors.report_user_errors`); a failed run, its log named, status
    1; Ctrl-C, how to continue, status 130."""
    try:
        return report_user_errors(fn, *args)
    except RunFailedError as exc:
        print(f"error: a run {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: run the same command again to continue (finished runs are reused, "
            "an unfinished one resumes from its last checkpoint).",
            file=sys.stderr,
        )
        sys.exit(130)


def training_images(log_path, config_path):
    """Images one training process went through, from its log and its saved config.

    FastReID logs ``Starting training from epoch S`` and, at every epoch's last iteration,
    ``epoch/iter: E/I`` (the epoch and the global iteration, both from 0). The last such line
    is the last iteration, so with n iterations per epoch ``I + 1 = (E + 1) n``, and the
    process ran ``(E + 1 - S) n`` iterations of ``SOLVER.IMS_PER_BATCH`` images (read from
    ``config_path``, the ``config.yaml`` FastReID saves in ``OUTPUT_DIR``).

    Args:
        log_path (str): the training process's output.
        config_path (str): its full config.

    Returns:
        int | None: the number of images, or ``None`` if a file is missing or the log has no
        training (e.g. it resumed a finished run).
    """
    if not (os.path.isfile(log_path) and os.path.isfile(config_path)):
        return None
    start, last = None, None
    with open(log_path) as f:
        for line in f:
            if (m := _START.search(line)) is not None:
                start = int(m.group(1))
            elif start is not None and (m := _STEP.search(line)) is not None:
                last = int(m.group(1)), int(m.group(2))
    if last is None:
        return None
    epoch, iteration = last
    per_epoch, remainder = divmod(iteration + 1, epoch + 1)
    if remainder:
        return None  # the last line is not an epoch's end: the log was cut short
    with open(config_path) as f:
        batch = yaml.safe_load(f)["SOLVER"]["IMS_PER_BATCH"]
    return (epoch + 1 - start) * per_epoch * batch


def _read_training(time_path):
    """Seconds and images of a training recorded in ``time_path``; ``(None, None)`` if none."""
    if not os.path.isfile(time_path):
        return None, None
    timing = read_json(time_path)
    return timing["seconds"], timing["images"]


def check_reuse(output_dir, config, seed, opts):
    """Refuse to reuse ``output_dir`` if it holds a run (checkpoints or a record) of another
    config, seed or options (its ``run.json``, written when the run started).

    Raises:
        StaleRunError: naming the folder, what differs and what to do.
    """
    if not any(os.path.exists(os.path.join(output_dir, f)) for f in _RUN_FILES):
        return  # nothing to reuse (e.g. a run that failed before its first checkpoint)
    stamp = os.path.join(output_dir, "run.json")
    if not os.path.isfile(stamp):
        raise StaleRunError(
            f"'{output_dir}' holds a run that these scripts did not start (it has no run.json): "
            "delete that folder to train again, or choose another output folder."
        )
    before = read_json(stamp)
    differences = [
        f"{key} {before.get(key)!r} (now {value!r})"
        for key, value in _settings(config, seed, opts).items()
        if before.get(key) != value
    ]
    if differences:
        raise StaleRunError(
            f"'{output_dir}' holds a run made with other settings: {'; '.join(differences)}. "
            "Delete that folder to train again, or choose another output folder."
        )


_RUN_FILES = ("last_checkpoint", "model_final.pth", os.path.join("eval", "speed_accuracy.json"))
"""What a run leaves that a later one would reuse: its checkpoints, its record."""


def _settings(config, seed, opts):
    """What ``run.json`` holds; the config relative to the repository root however it was named."""
    config = os.path.relpath(os.path.join(REPO, config), REPO)
    return {"config": config, "seed": seed, "opts": [str(o) for o in opts]}


def _stamp(output_dir, config, seed, opts):
    prepare_output_dir(output_dir)  # a file, a read-only place: OutputDirError, no traceback
    write_json(os.path.join(output_dir, "run.json"), _settings(config, seed, opts))


def train_and_record(
    name, config, output_dir, seed, opts=(), echo=None, weights=None, *, train_net
):
    """Train ``config`` into ``output_dir`` unless done, then write and return its record.

    Args:
        name (str): the record's name (``KDREID.NAME``).
        config (str): a config file, relative to the repository root or absolute.
        output_dir (str): the run's folder; the record goes to ``<output_dir>/eval``.
        seed (int): ``KDREID.SEED``.
        opts (Sequence[str]): more ``KEY VALUE`` options, for training and evaluation alike (a
            model option such as ``MODEL.MDPR.FUSION False`` must reach both).
        echo (callable | None): see :func:`run_logged`; also told when the evaluation starts.
        weights (str | None): a checkpoint trained elsewhere: evaluate it, do not train.
        train_net (str): the ``train_net.py`` that trains and evaluates (a project's, whose
            package registers the models the config names).

    Returns:
        Run
    """
    record_path = os.path.join(output_dir, "eval", "speed_accuracy.json")
    trained_elsewhere = weights is not None
    weights = os.path.abspath(weights) if weights else os.path.join(output_dir, "model_final.pth")
    common = ["KDREID.PROGRESS", "False", "KDREID.SEED", str(seed)]
    time_path = os.path.join(output_dir, "train_seconds.json")
    if not trained_elsewhere:
        check_reuse(output_dir, config, seed, list(opts))
    if not os.path.isfile(record_path):
        if not trained_elsewhere and not os.path.isfile(weights):
            if not os.path.isfile(os.path.join(output_dir, "last_checkpoint")):  # a new run
                _stamp(output_dir, config, seed, list(opts))
            log_path = os.path.join(output_dir, "train.out")
            seconds = run_logged(
                [sys.executable, train_net, "--config-file", config, "--resume",
                 "OUTPUT_DIR", output_dir, *common, *opts],
                log_path,
                echo,
            )  # fmt: skip
            images = training_images(log_path, os.path.join(output_dir, "config.yaml"))
            write_json(time_path, {"seconds": seconds, "images": images})
        if echo is not None:
            echo("evaluating: accuracy, then speed (--eval-only)")
        run_logged(
            [sys.executable, train_net, "--config-file", config, "--eval-only", *opts,
             "MODEL.WEIGHTS", weights, "OUTPUT_DIR", os.path.join(output_dir, "eval"),
             "KDREID.NAME", name, *common],
            os.path.join(output_dir, "eval.out"),
        )  # fmt: skip
    seconds, images = _read_training(time_path)
    record = read_json(record_path)
    return Run(weights=weights, record=record, train_seconds=seconds, train_images=images)
