"""How strong should the FactorizedKD terms be? FD students at several (FEAT_WEIGHT, MAP_WEIGHT)
on a tuning seed that the evidence does not use, against the plain student on that seed.

    python benchmarks/fkd_weights.py [--seed 100] [--weights F,M ...]
        [--evidence-dir logs/fkd_evidence] [--output-dir logs/fkd_weights]
        [--teacher-opts "KEY VALUE ..."] [KEY VALUE ...]

The paper gives no weights (``/work/shared/methods/FactorizedKD.md``), so ``MODEL.FKD.FEAT_WEIGHT``
and ``MAP_WEIGHT`` are chosen here, on SynthReID-small with the configs and the six teachers of
``benchmarks/fkd_evidence.py`` (taken from ``EVIDENCE-DIR/teachers``, trained there first if
missing), and on a seed of their own, so that the choice is not fitted to the seeds the evidence
reports. Every pair trains ``student_small.yml`` with ``MODEL.FKD.FEAT_WEIGHT F MODEL.FKD.MAP_WEIGHT
M`` (``OUTPUT-DIR/f<F>_m<M>``), evaluated with the plain student's config; the plain student is
trained on the same seed (``OUTPUT-DIR/plain``). It writes ``OUTPUT-DIR/weights.md``: mAP and
Rank-1 of each pair and their differences from the plain student. One seed cannot tell apart
pairs closer than the seed-to-seed spread of the evidence; the table says which pair was best on
this seed, not that it is best. Finished runs are not repeated.
"""

import argparse
import os

from fkd_evidence import (
    VARIANTS,
    Variant,
    add_teacher_opts,
    evaluate_ensemble,
    teacher_options,
    train_student,
    train_teachers,
)

from harness.evidence import fmt
from harness.runs import REPO, main_of_runs
from kdreid.checkpoint import write_text
from kdreid.cli import parse_with_opts

# The map term falls from ~5 to ~0.1 in the first epochs at weight 1 while the feature term stays
# near 5 (the first FD run's log), so the pairs move the feature weight both ways and the map
# weight up.
DEFAULT_WEIGHTS = ("1,1", "3,1", "0.3,1", "1,10")


def _pair(text):
    try:
        feat, map_ = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEAT,MAP (two numbers), got {text!r}") from None
    if feat < 0 or map_ < 0:
        raise argparse.ArgumentTypeError(f"weights must be >= 0, got {text!r}")
    return feat, map_


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seed", type=int, default=100, help="the tuning seed (default 100)")
    parser.add_argument(
        "--weights", type=_pair, nargs="+", default=[_pair(w) for w in DEFAULT_WEIGHTS],
        metavar="F,M", help=f"FEAT_WEIGHT,MAP_WEIGHT pairs (default: {' '.join(DEFAULT_WEIGHTS)})",
    )  # fmt: skip
    parser.add_argument("--evidence-dir", default="logs/fkd_evidence")
    parser.add_argument("--output-dir", default="logs/fkd_weights")
    add_teacher_opts(parser)
    args = parse_with_opts(parser, argv)
    args.evidence_dir = os.path.abspath(args.evidence_dir)
    return args


def _name(feat, map_):
    return f"f{feat:g}_m{map_:g}"


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))
    teachers = train_teachers(args.evidence_dir, args.opts, args.teacher_opts)
    teacher_opts = teacher_options(teachers)
    ensemble_dir = os.path.join(args.evidence_dir, "ensemble")
    ensemble = evaluate_ensemble(ensemble_dir, teacher_opts, args.opts)

    out = args.output_dir
    print(f"Plain student, seed {args.seed}", flush=True)
    plain = train_student(VARIANTS["plain"], os.path.join(out, "plain"), args.seed, [], args.opts)
    base = plain.record["metrics"]
    rows = []
    for feat, map_ in args.weights:
        name = _name(feat, map_)
        variant = Variant(
            f"FD student, FEAT_WEIGHT {feat:g}, MAP_WEIGHT {map_:g}", VARIANTS["fd"].config,
            ("MODEL.FKD.FEAT_WEIGHT", str(feat), "MODEL.FKD.MAP_WEIGHT", str(map_)),
        )  # fmt: skip
        print(f"{variant.label}, seed {args.seed}", flush=True)
        run = train_student(variant, os.path.join(out, name), args.seed, teacher_opts, args.opts)
        m = run.record["metrics"]
        print(f"  mAP {m['mAP']:.1f}, Rank-1 {m['Rank-1']:.1f}", flush=True)
        rows.append((feat, map_, m, run))

    best = max(rows, key=lambda r: r[2]["mAP"])
    lines = [
        f"FactorizedKD weights on {plain.record['dataset']}, tuning seed {args.seed} "
        "(not one of the evidence's seeds); the students, teachers and schedule of "
        "benchmarks/fkd_evidence.py"
        + (f"; options for every run: `{' '.join(args.opts)}`." if args.opts else "."),
        "",
        f"Teacher ensemble: mAP {ensemble['metrics']['mAP']:.1f}, Rank-1 "
        f"{ensemble['metrics']['Rank-1']:.1f}.",
        "",
        "| FEAT_WEIGHT | MAP_WEIGHT | mAP | Rank-1 | mAP − plain | Rank-1 − plain | train (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| plain | | {base['mAP']:.1f} | {base['Rank-1']:.1f} | | "
        f"| {fmt(plain.train_seconds, '.0f')} |",
    ]
    for feat, map_, m, run in rows:
        lines.append(
            f"| {feat:g} | {map_:g} | {m['mAP']:.1f} | {m['Rank-1']:.1f} "
            f"| {m['mAP'] - base['mAP']:+.1f} | {m['Rank-1'] - base['Rank-1']:+.1f} "
            f"| {fmt(run.train_seconds, '.0f')} |"
        )
    lines += [
        "",
        f"Highest mAP on this seed: FEAT_WEIGHT {best[0]:g}, MAP_WEIGHT {best[1]:g}. One seed: "
        "differences smaller than the evidence's seed-to-seed spread do not rank the pairs.",
    ]
    text = "\n".join(lines)
    os.makedirs(out, exist_ok=True)
    write_text(os.path.join(out, "weights.md"), text + "\n")
    print("\n" + text + f"\n\nWrote {out}/weights.md")


if __name__ == "__main__":
    main_of_runs(main)  # bad options, a folder of other settings, a failed run: one line
