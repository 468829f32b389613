"""Does distillation work? SpeedKD students trained alone and with KD, same schedule, several seeds.

    python benchmarks/speedkd_evidence.py [--seeds 0 1 2] [--students S ...]
        [--teacher-weights PATH] [--output-dir DIR] [KEY VALUE ...]

The paper's comparison on SynthReID-small, on this machine's device: trains the ResNet-18 teacher
(configs/Synthetic/bagtricks_R18.yml, seed 0) unless its weights are given, then for every student
of ``--students`` (default: :data:`STUDENTS_COMPARED`, the MobileNets) and every seed the student
alone (configs/SpeedKD/Synthetic/<student>.yml) and the student distilled from the teacher
(kd_<student>.yml) with the same schedule and seed; evaluates each with ``--eval-only`` (accuracy
and speed records), runs LOMO+XQDA, and writes

- ``evidence.md``: for each student, per-seed mAP / Rank-1 alone and distilled, mean ± standard
  deviation, the paired KD − plain differences and whether they clear the spread;
- ``tradeoff.md`` / ``tradeoff.png``: every model's accuracy against its latency and multiply-adds,
  the distilled students marked.

Runs that already finished are not repeated, so an interrupted benchmark continues where it
stopped. ``KEY VALUE`` options apply to every
student run, except the distillation keys (``MODEL.SPEEDKD.*``, ``KD.*``, e.g.
``MODEL.SPEEDKD.LAMBDA 0.9``), which only the distilled students get: the students trained alone
do not depend on them, so runs that differ only there can share them (copy the ``*_plain``
folders over).
"""

import argparse
import os
import statistics
import sys

from harness.runs import REPO, main_of_runs, run_logged
from harness.speedkd import STUDENTS, missing_student, train_and_record
from kdreid.checkpoint import write_text
from kdreid.cli import check_output_dir, parse_with_opts
from speed_kd.tradeoff import find_records, write_tradeoff

TEACHER_CONFIG = "configs/Synthetic/bagtricks_R18.yml"
TEACHER_NAME = "ResNet-18 (teacher)"
STUDENTS_COMPARED = ("mobilenetv1_1.0x", "mobilenetv1_0.5x", "mobilenetv2_1.0x")
"""The students of the paper's comparison (each alone and distilled, every seed)."""
DISTILLATION_KEYS = ("MODEL.SPEEDKD.", "KD.")


def lomo_xqda(output_dir):
    if not os.path.isfile(os.path.join(output_dir, "speed_accuracy.json")):
        script = os.path.join(REPO, "projects", "SpeedKD", "lomo_xqda.py")
        seconds = run_logged(
            [sys.executable, script, "--dataset", "SynthReIDSmall", "--output-dir", output_dir],
            os.path.join(output_dir, "run.out"),
        )
        print(f"  LOMO+XQDA: {seconds:.0f} s", flush=True)


def _stats(values):
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def evidence_table(student, seeds, plain, kd, teacher):
    """Markdown: per-seed metrics, mean ± std, paired differences, and the verdict."""
    tm = teacher["metrics"]
    lines = [
        f"Student {student} on {teacher['dataset']}, teacher {teacher['name']} "
        f"(mAP {tm['mAP']:.1f}, Rank-1 {tm['Rank-1']:.1f}); same schedule and seed for both.",
        "",
        "| seed | plain mAP | KD mAP | plain Rank-1 | KD Rank-1 | plain train (s) | KD train (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, p, k in zip(seeds, plain, kd):
        pm, km = p.record["metrics"], k.record["metrics"]
        lines.append(
            f"| {s} | {pm['mAP']:.1f} | {km['mAP']:.1f} | {pm['Rank-1']:.1f} | {km['Rank-1']:.1f} "
            f"| {p.train_seconds or float('nan'):.0f} | {k.train_seconds or float('nan'):.0f} |"
        )
    summary = ["", "| metric | plain | KD | KD − plain (paired) |", "|---|---:|---:|---:|"]
    verdicts = []
    for metric in ("mAP", "Rank-1"):
        p = [r.record["metrics"][metric] for r in plain]
        k = [r.record["metrics"][metric] for r in kd]
        (pm, ps), (km, ks), (dm, ds) = _stats(p), _stats(k), _stats([b - a for a, b in zip(p, k)])
        summary.append(
            f"| {metric} | {pm:.1f} ± {ps:.1f} | {km:.1f} ± {ks:.1f} | {dm:+.1f} ± {ds:.1f} |"
        )
        spread = max(ps, ks)
        verdicts.append(
            f"- {metric}: KD {'beats' if dm > spread else 'does NOT beat'} the plain student by "
            f"more than the spread ({dm:+.1f} against a spread of {spread:.1f})."
        )
    footer = ["", f"mean ± standard deviation over {len(seeds)} seeds.", "", *verdicts]
    return "\n".join(lines + summary + footer)


def parse_args(argv=None):
    """The command line; ``plain_opts`` are the options without the distillation keys."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument(
        "--students", type=student_name, nargs="+", default=list(STUDENTS_COMPARED),
        help=f"each alone and distilled, every seed (default {' '.join(STUDENTS_COMPARED)})",
    )  # fmt: skip
    parser.add_argument("--teacher-weights", default="", help="skip training the teacher")
    parser.add_argument(
        "--output-dir", default="logs/speedkd_evidence", help="default logs/speedkd_evidence"
    )
    args = parse_with_opts(
        parser, argv, "KEY VALUE for the student runs (MODEL.SPEEDKD.*, KD.*: distilled ones only)"
    )
    for student in args.students:  # the default list too, which argparse does not check
        if (problem := missing_student(student)) is not None:
            parser.error(f"argument --students: {problem}")
    pairs = list(zip(args.opts[0::2], args.opts[1::2]))
    args.plain_opts = [w for k, v in pairs if not k.startswith(DISTILLATION_KEYS) for w in (k, v)]
    return args


def student_name(name):
    """An argparse ``type``: a student with both configs (alone and distilled)."""
    if (problem := missing_student(name)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return name


def main(argv=None):
    args = parse_args(argv)
    out = args.output_dir
    check_output_dir(out)  # before the teacher trains, not when the first file is written
    os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))

    print("Teacher", flush=True)
    teacher_dir = os.path.join(out, "teacher_R18")
    teacher = train_and_record(
        TEACHER_NAME, TEACHER_CONFIG, teacher_dir, 0, weights=args.teacher_weights or None
    )
    teacher_weights = os.path.abspath(teacher.weights)
    print("LOMO+XQDA", flush=True)
    lomo_xqda(os.path.join(out, "lomo_xqda"))

    kd_opts = ["KD.MODEL_WEIGHTS", f"('{teacher_weights}',)", *args.opts]
    tables = []
    for student in args.students:
        config = os.path.join(STUDENTS, f"{student}.yml")
        kd_config = os.path.join(STUDENTS, f"kd_{student}.yml")
        plain, kd = [], []
        for seed in args.seeds:
            print(f"Student {student}, seed {seed}: alone, then distilled", flush=True)
            base = os.path.join(out, student, f"seed{seed}")
            plain.append(train_and_record(student, config, base + "_plain", seed, args.plain_opts))
            kd.append(train_and_record(f"{student} +KD", kd_config, base + "_kd", seed, kd_opts))
        tables.append(evidence_table(student, args.seeds, plain, kd, teacher.record))

    text = "\n\n".join(tables)
    write_text(os.path.join(out, "evidence.md"), text + "\n")
    print("\n" + text)
    table = write_tradeoff(
        find_records([out]), out, reference=TEACHER_NAME, title="SpeedKD on SynthReID-small"
    )
    print("\n" + table + f"\n\nWrote {out}/evidence.md, tradeoff.md, tradeoff.png")


if __name__ == "__main__":
    main_of_runs(main)  # bad options, a folder of other settings, a failed run: one line
