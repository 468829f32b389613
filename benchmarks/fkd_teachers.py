"""Train FactorizedKD's partial teachers one after another, then set up their ensemble.

    python benchmarks/fkd_teachers.py \
        --config-file configs/FactorizedKD/<dataset>/teacher.yml --output-dir logs/fkd/<dataset> \
        [--views Up1 Mid1 Dn1 Up2 Mid2 Dn2] [--seed 0] [KEY VALUE ...]

Each view is one run of ``projects/FactorizedKD/train_net.py`` in its own process, with
``MODEL.FKD.VIEW <view> OUTPUT_DIR <output-dir>/<view>`` and the ``KEY VALUE`` options (e.g.
``MODEL.BACKBONE.PRETRAIN_PATH /path/to/resnet50.pth``), then evaluated alone on its view
(``<view>/eval/speed_accuracy.json``): :func:`harness.runs.train_and_record`. Run it again after
an interruption: a view whose ``model_final.pth`` exists is not trained again, an interrupted one
resumes from its last checkpoint, an evaluated one is skipped.

Finally it writes ``<output-dir>/ensemble.yml`` (the ensemble config it inherits, with
``KD.MODEL_CONFIG``: each view's saved ``config.yaml``, which holds its view, and
``KD.MODEL_WEIGHTS``) and prints the command that evaluates the ensemble. The inherited
config is ``--ensemble-config``, by default the one next to the teacher config whose name is the
teacher's with ``teacher`` changed to ``ensemble`` (``teacher.yml``: ``ensemble.yml``,
``teacher_small.yml``: ``ensemble_small.yml``, ``tiny_teacher.yml``: ``tiny_ensemble.yml``).
"""

import argparse
import os
import shlex
import sys

from factorized_kd.views import PARTIAL_VIEWS
from harness.runs import REPO, main_of_runs, train_and_record
from kdreid.cli import check_output_dir, parse_with_opts

PROJECT = os.path.join(REPO, "projects", "FactorizedKD")
TRAIN_NET = os.path.join(PROJECT, "train_net.py")
EVALUATE_ENSEMBLE = os.path.join(PROJECT, "evaluate_ensemble.py")


def train_teachers(config, output_dir, views=PARTIAL_VIEWS, seed=0, opts=(), echo=print,
                   train_net=TRAIN_NET, name="fkd_teacher_{view}"):  # fmt: skip
    """Train and evaluate one teacher per view, skipping what is done.

    Args:
        config (str): the teacher config (its ``MODEL.FKD.VIEW`` is overridden per view).
        output_dir (str): the runs go to ``<output_dir>/<view>``.
        views (Sequence[str]): the views, in training order.
        seed (int): ``KDREID.SEED`` of every run.
        opts (Sequence[str]): more ``KEY VALUE`` options for every run.
        echo (callable | None): called with progress lines.
        train_net (str): the ``train_net.py`` that trains and evaluates.
        name (str): each record's name (``KDREID.NAME``), ``{view}`` replaced by the view.

    Returns:
        dict[str, harness.runs.Run]: the finished run of each view.

    Raises:
        ValueError: an unknown or repeated view.
        harness.runs.RunFailedError: a run failed (the message names its log).
    """
    unknown = [v for v in views if v not in PARTIAL_VIEWS]
    if unknown or len(set(views)) != len(views):
        raise ValueError(
            f"views must be distinct partial views ({', '.join(PARTIAL_VIEWS)}); got {list(views)}"
        )
    runs = {}
    for view in views:
        run_dir = os.path.join(output_dir, view)
        if echo is not None:
            echo(f"[{view}] {run_dir}")
        runs[view] = train_and_record(
            name.format(view=view), config, run_dir, seed, opts=["MODEL.FKD.VIEW", view, *opts],
            echo=echo, train_net=train_net,
        )  # fmt: skip
    return runs


def ensemble_options(output_dir, views):
    """``KD.MODEL_CONFIG`` and ``KD.MODEL_WEIGHTS`` of the teachers trained into ``output_dir``.

    Returns:
        list[str]: ``KEY VALUE`` options; the teachers' configs are the ``config.yaml`` each
        training saved (it holds the view).

    Raises:
        FileNotFoundError: a view's ``config.yaml`` or ``model_final.pth`` is missing.
    """
    configs = [os.path.join(output_dir, v, "config.yaml") for v in views]
    weights = [os.path.join(output_dir, v, "model_final.pth") for v in views]
    missing = [p for p in configs + weights if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"teacher files missing: {', '.join(missing)}")
    return ["KD.MODEL_CONFIG", repr(configs), "KD.MODEL_WEIGHTS", repr(weights)]


def write_ensemble_config(path, base, options):
    """Write an ensemble config: ``base`` (an ``ensemble.yml``) with the teachers of ``options``.

    Args:
        path (str): the file to write.
        base (str): the ensemble config it inherits.
        options (list[str]): :func:`ensemble_options`.
    """
    teachers, weights = options[1], options[3]
    with open(path, "w") as f:
        f.write(
            "# Written by benchmarks/fkd_teachers.py: the teachers it trained.\n"
            f"_BASE_: {os.path.abspath(base)}\n\nKD:\n"
            f"  MODEL_CONFIG: {teachers}\n  MODEL_WEIGHTS: {weights}\n"
        )


def default_ensemble_config(config):
    """The ensemble config of the teacher config ``config``: the file next to it named as it is
    with ``teacher`` changed to ``ensemble``, else ``ensemble.yml`` there.

    Returns:
        str: the first of those that exists, else the first (which does not).
    """
    folder, name = os.path.split(config)
    candidates = [os.path.join(folder, "ensemble.yml")]
    if "teacher" in name:
        candidates.insert(0, os.path.join(folder, name.replace("teacher", "ensemble")))
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


def _no_ensemble_config(base):
    """What to say when the default ensemble config ``base`` does not exist: the ensemble configs
    that are in its folder (names with ``ensemble``), and what to do."""
    folder = os.path.dirname(base)
    found = sorted(f for f in os.listdir(folder) if "ensemble" in f and f.endswith(".yml"))
    there = f" (ensemble configs in {folder}: {', '.join(found)})" if found else ""
    return f"No ensemble config at {base}{there}: give one with --ensemble-config"


def _summary(runs):
    lines = []
    for view, run in runs.items():
        m = run.record.get("metrics", {})
        lines.append(f"  {view:<5} mAP {m.get('mAP', float('nan')):6.2f}  "
                     f"Rank-1 {m.get('Rank-1', float('nan')):6.2f}  {run.weights}")  # fmt: skip
    return "\n".join(lines)


def existing_file(text):
    """An argparse ``type``: the name of a file that exists (a usage error otherwise)."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"'{text}' does not exist; expected a file")
    return text


class DistinctViews(argparse.Action):
    """``--views``: partial views (argparse's ``choices``), each named once."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise argparse.ArgumentError(self, f"{', '.join(repeated)} named more than once")
        setattr(namespace, self.dest, list(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train FactorizedKD's partial teachers.")
    parser.add_argument(
        "--config-file", required=True, type=existing_file, metavar="FILE",
        help="a teacher config",
    )  # fmt: skip
    parser.add_argument("--output-dir", required=True, help="one folder per view goes here")
    parser.add_argument(
        "--views", nargs="+", default=list(PARTIAL_VIEWS), choices=PARTIAL_VIEWS, metavar="VIEW",
        action=DistinctViews,
        help=f"the partial views to train, each once (default: all six, {' '.join(PARTIAL_VIEWS)})",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="KDREID.SEED of every run (default 0)")
    parser.add_argument(
        "--ensemble-config", default=None, type=existing_file, metavar="FILE",
        help="the ensemble config to inherit (default: the one next to --config-file named "
        "as it is with 'teacher' changed to 'ensemble', else ensemble.yml there)",
    )  # fmt: skip
    args = parse_with_opts(parser, argv)  # KEY VALUE options for every run
    output_dir = args.output_dir
    config = os.path.abspath(args.config_file)
    base = args.ensemble_config or default_ensemble_config(config)
    check_output_dir(output_dir)  # before the first teacher trains
    if not os.path.isfile(base):  # said now, when it can still be given, and again at the end
        print(f"{_no_ensemble_config(base)}, or the ensemble's options are printed at the end.")
    runs = train_teachers(config, output_dir, args.views, args.seed, args.opts, train_net=TRAIN_NET)
    print(f"Teachers, each on its view:\n{_summary(runs)}")
    options = ensemble_options(output_dir, args.views)
    evaluate = [sys.executable, os.path.relpath(EVALUATE_ENSEMBLE)]
    if os.path.isfile(base):
        path = os.path.join(output_dir, "ensemble.yml")
        write_ensemble_config(path, base, options)
        command = [*evaluate, "--config-file", path]
    else:  # only a default can be missing
        print(f"{_no_ensemble_config(base)}, or use these options.")
        command = [*evaluate, "--config-file", "<ensemble config>", *options]
    command += ["OUTPUT_DIR", os.path.join(output_dir, "ensemble")]
    print("Evaluate the ensemble with:\n  " + " ".join(map(shlex.quote, command)))
    return 0


if __name__ == "__main__":
    sys.exit(main_of_runs(main))  # bad options, a folder of other settings, a failed run: one line
