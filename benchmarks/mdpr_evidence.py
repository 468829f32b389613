"""Does MDPR work? MDPR, two ablations and the plain baseline: same data and schedule, 3 seeds.

    python benchmarks/mdpr_evidence.py [--seeds 0 1 2] [--variants baseline mdpr ...]
        [--output-dir logs/mdpr_evidence] [KEY VALUE ...]

On SynthReID-small, on this machine's device, for every seed: trains each variant with
``projects/MDPR/train_net.py`` (it trains any FastReID config) and evaluates it with
``--eval-only`` (accuracy and speed records):

- ``baseline``: FastReID's Baseline (``configs/MDPR/Synthetic/baseline_R18.yml``), MDPR's trunk,
  inputs, head, losses and schedule with one branch and one head;
- ``mdpr``: MDPR (``configs/MDPR/Synthetic/mdpr_R18.yml``);
- ``mdpr_no_distillation``: MDPR without mutual distillation (``MODEL.MDPR.DISTILLATION False``);
- ``mdpr_no_fusion``: MDPR without the fusion branch (``MODEL.MDPR.FUSION False``).

Each run lives in ``OUTPUT-DIR/<variant>/seed<k>``. It writes ``OUTPUT-DIR/evidence.md``: per-seed
mAP / Rank-1, mean ± sample standard deviation per variant, the paired differences of every
variant against the baseline and of full MDPR against each ablation, with a verdict each, and
the speed figures (training and evaluation throughput, latency, parameters, multiply-adds,
descriptor length). Runs that already finished are not repeated, so an interrupted benchmark
continues where it stopped. ``KEY VALUE`` options apply to every run, training and evaluation
(e.g. ``SOLVER.MAX_EPOCH 1`` for a smoke test); they come last, after ``--`` where they follow
``--seeds`` or ``--variants``::

    python benchmarks/mdpr_evidence.py --seeds 0 --output-dir /tmp/mdpr_smoke -- \
        DATASETS.NAMES '("SynthReIDTiny",)' DATASETS.TESTS '("SynthReIDTiny",)' \
        SOLVER.MAX_EPOCH 1 SOLVER.STEPS '[1]' SOLVER.IMS_PER_BATCH 16
"""

import os
from typing import NamedTuple

from harness.evidence import comparison_tables, fmt, parse_args
from harness.runs import REPO, main_of_runs, train_and_record
from kdreid.checkpoint import write_text
from kdreid.cli import check_output_dir

TRAIN_NET = os.path.join(REPO, "projects", "MDPR", "train_net.py")
CONFIGS = "configs/MDPR/Synthetic"


class Variant(NamedTuple):
    """One model of the comparison: its label, config and extra options."""

    label: str
    config: str
    opts: tuple = ()


VARIANTS = {
    "baseline": Variant("Baseline", f"{CONFIGS}/baseline_R18.yml"),
    "mdpr": Variant("MDPR", f"{CONFIGS}/mdpr_R18.yml"),
    "mdpr_no_distillation": Variant(
        "MDPR w/o distillation", f"{CONFIGS}/mdpr_R18.yml", ("MODEL.MDPR.DISTILLATION", "False")
    ),
    "mdpr_no_fusion": Variant(
        "MDPR w/o fusion", f"{CONFIGS}/mdpr_R18.yml", ("MODEL.MDPR.FUSION", "False")
    ),
}
ABLATIONS = ("mdpr_no_distillation", "mdpr_no_fusion")


def comparisons(variants):
    """(better, reference) pairs: every variant against the baseline, MDPR against each ablation."""
    pairs = [(v, "baseline") for v in variants if v != "baseline" and "baseline" in variants]
    if "mdpr" in variants:
        pairs += [("mdpr", a) for a in ABLATIONS if a in variants]
    return pairs


def evidence_table(seeds, runs, opts):
    """Markdown: per-seed metrics, mean ± std, paired differences with verdicts, speed.

    Args:
        seeds (list[int]): the seeds, in the order of each variant's runs.
        runs (dict[str, list[Run]]): each variant's runs, one per seed.
        opts (list[str]): the ``KEY VALUE`` options every run had.
    """
    first = next(iter(runs.values()))[0].record
    lines = [
        f"MDPR against its baseline on {first['dataset']} ({first['device_name']}): ResNet-18 "
        f"trunk from scratch, {first['input_size'][0]}x{first['input_size'][1]} inputs, same "
        "schedule and seeds for every variant"
        + (f"; options for every run: `{' '.join(opts)}`." if opts else "."),
        "",
    ]
    labels = {name: v.label for name, v in VARIANTS.items()}
    tables, verdicts = comparison_tables(runs, seeds, labels, comparisons(list(runs)))
    lines += tables
    footer = [
        "",
        f"mean ± sample standard deviation over {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}). Training images/s: images trained on over the "
        "wall-clock seconds of the training process (start-up and evaluation included), mean "
        "over seeds. Evaluation figures are "
        f"--eval-only's: throughput at batch {first.get('throughput_batch', '?')}, latency at "
        "batch 1, parameters of the deployed model (for MDPR without its training-only "
        "attention, BAP and predictor modules), multiply-adds per image, descriptor length.",
        "",
        *verdicts,
    ]
    return "\n".join(lines + footer)


def main(argv=None):
    args = parse_args(
        " ".join(__doc__.split("\n\n")[0].split()), VARIANTS, "logs/mdpr_evidence", argv
    )
    out = args.output_dir
    check_output_dir(out)  # before the first run trains, not when the first file is written
    os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))

    variants = [v for v in VARIANTS if v in args.variants]  # in the table's order
    runs = {v: [] for v in variants}
    for seed in args.seeds:
        for name in variants:
            variant = VARIANTS[name]
            run_dir = os.path.join(out, name, f"seed{seed}")
            print(f"{variant.label}, seed {seed}: {run_dir}", flush=True)
            run = train_and_record(
                variant.label, variant.config, run_dir, seed, [*variant.opts, *args.opts],
                train_net=TRAIN_NET,
            )  # fmt: skip
            m = run.record["metrics"]
            print(
                f"  mAP {m['mAP']:.1f}, Rank-1 {m['Rank-1']:.1f}, trained in "
                f"{fmt(run.train_seconds, '.0f')} s",
                flush=True,
            )
            runs[name].append(run)

    text = evidence_table(args.seeds, runs, args.opts)
    write_text(os.path.join(out, "evidence.md"), text + "\n")
    print("\n" + text + f"\n\nWrote {out}/evidence.md")


if __name__ == "__main__":
    main_of_runs(main)  # bad options, a folder of other settings, a failed run: one line
