"""Does FactorizedKD work? The FD-style student against the plain one, each of its two terms alone,
each partial teacher alone and their ensemble: SynthReID-small, same schedule, 3 seeds.

    python benchmarks/fkd_evidence.py [--seeds 0 1 2] [--variants plain fd ...]
        [--output-dir logs/fkd_evidence] [--teacher-opts "KEY VALUE ..."] [KEY VALUE ...]

On SynthReID-small, on this machine's device, with ``projects/FactorizedKD/train_net.py``:

1. the six partial teachers (``configs/FactorizedKD/Synthetic/teacher_small.yml``, views Up1 Mid1
   Dn1 Up2 Mid2 Dn2, seed 0), each trained and evaluated on its view
   (``OUTPUT-DIR/teachers/<view>``);
2. their ensemble evaluated as one model (``ensemble_small.yml`` through
   ``projects/FactorizedKD/evaluate_ensemble.py``, ``OUTPUT-DIR/ensemble``);
3. for every seed, every variant (``OUTPUT-DIR/<variant>/seed<k>``):

   - ``plain``: the student alone (``plain_student_small.yml``, FastReID's Baseline);
   - ``fd``: the FD-style student, both terms (``student_small.yml``);
   - ``fd_feature``: the retrieval-feature term only (``MODEL.FKD.MAP_WEIGHT 0``);
   - ``fd_map``: the feature-map term only (``MODEL.FKD.FEAT_WEIGHT 0``).

   An FD student is trained with the teachers of step 1 (``KD.MODEL_CONFIG``: each teacher
   run's ``config.yaml``, which records its view; ``KD.MODEL_WEIGHTS``: its ``model_final.pth``)
   and its checkpoint is evaluated with the plain student's config, so its record (accuracy,
   parameters, multiply-adds, latency, throughput) is that of the network it deploys as.

It writes ``OUTPUT-DIR/evidence.md``: the teachers and the ensemble (mAP / Rank-1, cost), per-seed
mAP / Rank-1 of the students, mean ± sample standard deviation per variant, the paired differences
of every FD variant against the plain student and of the full FD student against each single term,
with a verdict each, the speed figures, and whether each FD student's deployed network costs
exactly what the plain student's does. Runs that already finished are not repeated, so an
interrupted benchmark continues where it stopped. ``KEY VALUE`` options apply to every run
(teachers, ensemble, students; training and evaluation); they come last, after ``--`` where they
follow ``--seeds`` or ``--variants``::

    python benchmarks/fkd_evidence.py --seeds 0 --output-dir /tmp/fkd_smoke -- \
        DATASETS.NAMES '("SynthReIDTiny",)' DATASETS.TESTS '("SynthReIDTiny",)' \
        SOLVER.MAX_EPOCH 1 SOLVER.STEPS '[1]' SOLVER.IMS_PER_BATCH 16

``--teacher-opts`` changes the teachers alone (applied after the common options), e.g. teachers
on larger views; the options are recorded in ``OUTPUT-DIR/teachers/options.json`` and a later
run with other teacher options in the same folder is refused rather than reusing those teachers::

    python benchmarks/fkd_evidence.py --output-dir logs/fkd_evidence_t64 --teacher-opts \
        "MODEL.FKD.VIEW_SIZE [64,64] INPUT.SIZE_TRAIN [64,64] INPUT.SIZE_TEST [64,64]"
"""

import argparse
import os
import shlex
import sys
from typing import NamedTuple

import fkd_teachers

from factorized_kd.views import PARTIAL_VIEWS, view_fractions
from harness.evidence import comparison_tables, fmt, parse_args
from harness.runs import (
    REPO,
    StaleRunError,
    main_of_runs,
    run_logged,
    train_and_record,
    training_images,
)
from kdreid.checkpoint import read_json, write_json, write_text
from kdreid.cli import check_output_dir

PROJECT = os.path.join(REPO, "projects", "FactorizedKD")
TRAIN_NET = os.path.join(PROJECT, "train_net.py")
EVALUATE_ENSEMBLE = os.path.join(PROJECT, "evaluate_ensemble.py")
CONFIGS = "configs/FactorizedKD/Synthetic"
TEACHER = f"{CONFIGS}/teacher_small.yml"
ENSEMBLE = f"{CONFIGS}/ensemble_small.yml"
PLAIN = f"{CONFIGS}/plain_student_small.yml"
STUDENT = f"{CONFIGS}/student_small.yml"
TEACHER_SEED = 0
ENSEMBLE_NAME = "Ensemble of the six teachers"


class Variant(NamedTuple):
    """One student of the comparison: its label, training config and extra training options."""

    label: str
    config: str
    opts: tuple = ()

    @property
    def distilled(self) -> bool:
        return self.config != PLAIN


VARIANTS = {
    "plain": Variant("Plain student", PLAIN),
    "fd": Variant("FD student", STUDENT),
    "fd_feature": Variant("FD, feature term only", STUDENT, ("MODEL.FKD.MAP_WEIGHT", "0.0")),
    "fd_map": Variant("FD, map term only", STUDENT, ("MODEL.FKD.FEAT_WEIGHT", "0.0")),
}
ABLATIONS = ("fd_feature", "fd_map")


def key_value_list(text):
    """``--teacher-opts`` as a list: ``"K1 V1 K2 V2"`` (shell quoting) -> ``[K1, V1, K2, V2]``."""
    opts = shlex.split(text)
    if len(opts) % 2:
        raise argparse.ArgumentTypeError(f"options come in KEY VALUE pairs, got {opts}")
    return opts


def add_teacher_opts(parser):
    """The ``--teacher-opts`` argument: options for the teachers only (after the common ones)."""
    parser.add_argument(
        "--teacher-opts", type=key_value_list, default=[], metavar='"KEY VALUE ..."',
        help="config options for the six teachers only, e.g. stronger teachers: "
        "\"MODEL.BACKBONE.DEPTH 50x MODEL.BACKBONE.FEAT_DIM 2048\"; use a new --output-dir",
    )  # fmt: skip


def train_teachers(out, opts, teacher_only=()):
    """Train and evaluate one teacher per view (seed 0), skipping what is done: each view is
    :func:`fkd_teachers.train_teachers`'s, under this benchmark's name for its record.

    Args:
        out (str): the output folder; teachers go to ``out/teachers/<view>``.
        opts (list[str]): ``KEY VALUE`` options of every run.
        teacher_only (Sequence[str]): ``KEY VALUE`` options of the teachers only, after ``opts``.

    Returns:
        dict[str, harness.runs.Run]: each view's run.

    Raises:
        harness.runs.StaleRunError: ``out/teachers`` holds teachers trained with other options
            (its ``options.json``), which would otherwise be reused silently.
    """
    opts = [*opts, *teacher_only]
    record = os.path.join(out, "teachers", "options.json")
    if os.path.isfile(record):
        before = read_json(record)
        if before != opts:
            raise StaleRunError(
                f"the teachers in {os.path.dirname(record)} were trained with options "
                f"{before}, not {opts}: give another --output-dir (or --evidence-dir)."
            )
    else:
        os.makedirs(os.path.dirname(record), exist_ok=True)
        write_json(record, opts)
    folder, runs = os.path.dirname(record), {}
    for view in PARTIAL_VIEWS:
        print(f"Teacher {view}: {os.path.join(folder, view)}", flush=True)
        runs |= fkd_teachers.train_teachers(
            TEACHER, folder, (view,), TEACHER_SEED, opts, echo=None, train_net=TRAIN_NET,
            name="Teacher {view}",
        )  # fmt: skip
    return runs


def teacher_options(teachers):
    """``KD.MODEL_CONFIG`` / ``KD.MODEL_WEIGHTS`` options naming the trained teachers.

    Args:
        teachers (dict[str, Run]): :func:`train_teachers`.

    Returns:
        list[str]: ``KEY VALUE`` options; each teacher's config is the ``config.yaml`` its
        training saved (it records the view given on its command line).

    Raises:
        FileNotFoundError: a teacher's ``config.yaml`` or checkpoint is missing.
    """
    weights = [teachers[v].weights for v in PARTIAL_VIEWS]
    configs = [os.path.join(os.path.dirname(w), "config.yaml") for w in weights]
    missing = [p for p in configs + weights if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"teacher files missing: {', '.join(missing)}")
    return ["KD.MODEL_CONFIG", repr(configs), "KD.MODEL_WEIGHTS", repr(weights)]


def evaluate_ensemble(out_dir, teacher_opts, opts):
    """The ensemble's speed/accuracy record, evaluated unless it exists.

    The ensemble has no ``MODEL.WEIGHTS`` (its weights are its members'), so it is evaluated by
    ``evaluate_ensemble.py``, not by :func:`harness.runs.train_and_record` (which names one).
    """
    record_path = os.path.join(out_dir, "speed_accuracy.json")
    if not os.path.isfile(record_path):
        run_logged(
            [sys.executable, EVALUATE_ENSEMBLE, "--config-file", ENSEMBLE, *teacher_opts,
             "OUTPUT_DIR", out_dir, "KDREID.NAME", ENSEMBLE_NAME, "KDREID.PROGRESS", "False",
             *opts],
            os.path.join(out_dir, "run.out"),
        )  # fmt: skip
    return read_json(record_path)


def train_student(variant, run_dir, seed, teacher_opts, opts):
    """Train one student unless done and return its run, evaluated with the plain config.

    A plain student is one :func:`harness.runs.train_and_record`. An FD student is trained here
    with its own config and the teachers (in ``run_dir``, as ``train_and_record`` would: resumed
    if interrupted, its seconds and images in ``train_seconds.json``); its checkpoint is then
    evaluated by ``train_and_record`` with the plain student's config, as a checkpoint "trained
    elsewhere", so the record is the deployed network's (``train_and_record`` evaluates with the
    config it trains with; it has no separate evaluation config).

    Returns:
        harness.runs.Run
    """
    if not variant.distilled:
        return train_and_record(
            variant.label, PLAIN, run_dir, seed, [*variant.opts, *opts], train_net=TRAIN_NET
        )
    weights = os.path.join(run_dir, "model_final.pth")
    record = os.path.join(run_dir, "eval", "speed_accuracy.json")
    if not os.path.isfile(weights) and not os.path.isfile(record):
        log_path = os.path.join(run_dir, "train.out")
        seconds = run_logged(
            [sys.executable, TRAIN_NET, "--config-file", variant.config, "--resume",
             "OUTPUT_DIR", run_dir, "KDREID.PROGRESS", "False", "KDREID.SEED", str(seed),
             *teacher_opts, *variant.opts, *opts],
            log_path,
        )  # fmt: skip
        images = training_images(log_path, os.path.join(run_dir, "config.yaml"))
        write_json(
            os.path.join(run_dir, "train_seconds.json"), {"seconds": seconds, "images": images}
        )
    return train_and_record(
        variant.label, PLAIN, run_dir, seed, opts, weights=weights, train_net=TRAIN_NET
    )


def comparisons(variants):
    """(A, B) pairs: every FD variant against the plain student, full FD against each term."""
    pairs = [(v, "plain") for v in variants if v != "plain" and "plain" in variants]
    if "fd" in variants:
        pairs += [("fd", a) for a in ABLATIONS if a in variants]
    return pairs


def _cost(record):
    return (
        f"{record['params'] / 1e6:.2f} | {record['macs'] / 1e9:.3f} "
        f"| {fmt(record.get('latency_ms'), '.2f')} | {fmt(record.get('throughput'), '.0f')}"
    )


def teachers_table(teachers, ensemble):
    """Markdown: each teacher on its view, and the ensemble on whole images."""
    lines = [
        "| model | rows of the image | input | mAP | Rank-1 | train (s) | params (M) "
        "| mult-adds (G) | latency (ms) | eval images/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for view, run in teachers.items():
        rec, (top, bottom) = run.record, view_fractions(view)
        size = "x".join(map(str, rec["input_size"]))
        lines.append(
            f"| Teacher {view} | [{top}, {bottom}) | {size} | {rec['metrics']['mAP']:.1f} "
            f"| {rec['metrics']['Rank-1']:.1f} | {fmt(run.train_seconds, '.0f')} "
            f"| {_cost(rec)} |"
        )
    size = "x".join(map(str, ensemble["input_size"]))
    lines.append(
        f"| {ENSEMBLE_NAME} ({ensemble['feature_dim']}-d) | whole image | {size} "
        f"| {ensemble['metrics']['mAP']:.1f} | {ensemble['metrics']['Rank-1']:.1f} | – "
        f"| {_cost(ensemble)} |"
    )
    return lines


def deployed_cost_lines(runs):
    """Whether each FD variant's evaluated network has the plain student's params and mult-adds."""
    if "plain" not in runs:
        return []
    plain = runs["plain"][0].record
    lines = []
    for name, variant_runs in runs.items():
        if not VARIANTS[name].distilled:
            continue
        same = all(
            r.record["params"] == plain["params"] and r.record["macs"] == plain["macs"]
            for r in variant_runs
        )
        lines.append(
            f"- {VARIANTS[name].label}: deployed {plain['params'] / 1e6:.2f} M parameters and "
            f"{plain['macs'] / 1e9:.3f} G multiply-adds, "
            + ("exactly the plain student's." if same else "NOT the plain student's: see records.")
        )
    return lines


def evidence_table(seeds, runs, teachers, ensemble, opts, teacher_only=()):
    """Markdown: teachers and ensemble, per-seed students, mean ± std, paired differences with
    verdicts, speed.

    Args:
        seeds (list[int]): the seeds, in the order of each variant's runs.
        runs (dict[str, list[Run]]): each variant's runs, one per seed.
        teachers (dict[str, Run]): each view's teacher.
        ensemble (dict): the ensemble's record.
        opts (list[str]): the ``KEY VALUE`` options every run had.
        teacher_only (Sequence[str]): the teachers' own options.
    """
    first = next(iter(runs.values()))[0].record
    lines = [
        f"FactorizedKD (FD-style) on {first['dataset']} ({first['device_name']}): ResNet-18 from "
        f"scratch everywhere; students at {first['input_size'][0]}x{first['input_size'][1]} "
        "with last stride 1, teachers on "
        f"{'x'.join(map(str, next(iter(teachers.values())).record['input_size']))} views (seed "
        f"{TEACHER_SEED}); the schedule of configs/Synthetic/bagtricks_R18.yml for every model, "
        "the same seeds for every student"
        + (f"; options for every run: `{' '.join(opts)}`" if opts else "")
        + (f"; teachers' own options: `{' '.join(teacher_only)}`" if teacher_only else "")
        + ".",
        "",
        "Teachers, each evaluated on its view of every query and gallery image; the ensemble "
        "concatenates their L2-normalised features:",
        "",
        *teachers_table(teachers, ensemble),
        "",
        "Students (every FD checkpoint evaluated with the plain student's config):",
        "",
    ]
    labels = {name: v.label for name, v in VARIANTS.items()}
    tables, verdicts = comparison_tables(runs, seeds, labels, comparisons(list(runs)))
    lines += tables
    footer = [
        "",
        f"mean ± sample standard deviation over {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}); a verdict compares the paired mean difference with the "
        "larger of the two variants' standard deviations. Training images/s: images trained on "
        "over the wall-clock seconds of the training process (start-up, the FD students' six "
        "teacher forwards per batch and the final evaluation included), mean over seeds. "
        "Evaluation figures are --eval-only's: throughput at batch "
        f"{first.get('throughput_batch', '?')}, latency at batch 1 (median), parameters and "
        "multiply-adds per image of the evaluated network (for an FD student: the plain "
        "student's config with the FD checkpoint; adapters, factor heads and teachers are "
        "training-only).",
        "",
        *deployed_cost_lines(runs),
        "",
        *verdicts,
    ]
    return "\n".join(lines + footer)


def main(argv=None):
    args = parse_args(
        " ".join(__doc__.split("\n\n")[0].split()),
        VARIANTS,
        "logs/fkd_evidence",
        argv,
        add_arguments=add_teacher_opts,
    )
    out = args.output_dir
    check_output_dir(out)  # before the first teacher trains, not when the first file is written
    os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))

    teachers = train_teachers(out, args.opts, args.teacher_opts)
    teacher_opts = teacher_options(teachers)
    print("Ensemble", flush=True)
    ensemble = evaluate_ensemble(os.path.join(out, "ensemble"), teacher_opts, args.opts)

    variants = [v for v in VARIANTS if v in args.variants]  # in the table's order
    runs = {v: [] for v in variants}
    for seed in args.seeds:
        for name in variants:
            variant = VARIANTS[name]
            run_dir = os.path.join(out, name, f"seed{seed}")
            print(f"{variant.label}, seed {seed}: {run_dir}", flush=True)
            run = train_student(variant, run_dir, seed, teacher_opts, args.opts)
            m = run.record["metrics"]
            print(
                f"  mAP {m['mAP']:.1f}, Rank-1 {m['Rank-1']:.1f}, trained in "
                f"{fmt(run.train_seconds, '.0f')} s",
                flush=True,
            )
            runs[name].append(run)

    text = evidence_table(args.seeds, runs, teachers, ensemble, args.opts, args.teacher_opts)
    write_text(os.path.join(out, "evidence.md"), text + "\n")
    print("\n" + text + f"\n\nWrote {out}/evidence.md")


if __name__ == "__main__":
    main_of_runs(main)  # bad options, a folder of other settings, a failed run: one line
