"""Markdown tables for side-by-side evidence runs: variants × seeds, same data and schedule.

The project benchmarks (``benchmarks/*_evidence.py``) train every variant with several seeds
(:mod:`harness.runs`) and report with these helpers: the per-seed table, mean ± sample standard
deviation per variant, and paired differences between variants with a verdict each (a difference
counts only when it is larger than the spread of either variant).
"""

import argparse
import statistics
from collections.abc import Mapping, Sequence

from harness.runs import Run
from kdreid.cli import parse_with_opts

__all__ = [
    "METRICS",
    "comparison_tables",
    "parse_args",
    "fmt",
    "mean",
    "mean_std",
    "paired_rows",
    "seed_rows",
    "speed_rows",
    "summary_rows",
]

METRICS = ("mAP", "Rank-1")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``n/a`` for ``None``."""
    return "n/a" if value is None else format(value, spec)


def mean(values) -> float | None:
    """Mean of the values that are not ``None`` (``None`` if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def seed_rows(runs: Mapping[str, Sequence[Run]], seeds, labels: Mapping[str, str]) -> list[str]:
    """One table row per variant and seed: mAP, Rank-1, training seconds and images/s."""
    lines = [
        "| variant | seed | mAP | Rank-1 | train (s) | train images/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, variant_runs in runs.items():
        for seed, run in zip(seeds, variant_runs):
            m = run.record["metrics"]
            lines.append(
                f"| {labels[name]} | {seed} | {m['mAP']:.1f} | {m['Rank-1']:.1f} "
                f"| {fmt(run.train_seconds, '.0f')} | {fmt(run.train_throughput, '.1f')} |"
            )
    return lines


def summary_rows(runs: Mapping[str, Sequence[Run]], labels: Mapping[str, str]):
    """Mean ± sample standard deviation of every metric per variant.

    Returns:
        (list[str], dict): the table rows, and ``{(variant, metric): (mean, std)}``.
    """
    stats = {
        (name, metric): mean_std([r.record["metrics"][metric] for r in variant_runs])
        for name, variant_runs in runs.items()
        for metric in METRICS
    }
    lines = ["| variant | mAP | Rank-1 |", "|---|---:|---:|"]
    for name in runs:
        cells = " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in (stats[name, k] for k in METRICS))
        lines.append(f"| {labels[name]} | {cells} |")
    return lines, stats


def paired_rows(runs, pairs, labels, stats, num_seeds: int):
    """Paired differences ``A − B`` over seeds for each ``(A, B)`` in ``pairs``, with verdicts.

    A verdict says A beats B when the mean paired difference exceeds the larger of the two
    variants' standard deviations; with one seed there is no verdict.

    Returns:
        (list[str], list[str]): the table rows (none without pairs) and the verdict lines.
    """
    lines, verdicts = [], []
    if pairs:
        lines += ["| A − B (paired over seeds) | mAP | Rank-1 |", "|---|---:|---:|"]
    for a, b in pairs:
        cells = []
        for metric in METRICS:
            diffs = [
                ra.record["metrics"][metric] - rb.record["metrics"][metric]
                for ra, rb in zip(runs[a], runs[b])
            ]
            dm, ds = mean_std(diffs)
            cells.append(f"{dm:+.1f} ± {ds:.1f}")
            spread = max(stats[a, metric][1], stats[b, metric][1])
            la, lb = labels[a], labels[b]
            if num_seeds < 2:
                verdicts.append(f"- {metric}: {la} vs {lb}: {dm:+.1f}; one seed, no verdict.")
            else:
                verdicts.append(
                    f"- {metric}: {la} {'beats' if dm > spread else 'does NOT beat'} {lb} by "
                    f"more than the spread ({dm:+.1f} against a spread of {spread:.1f})."
                )
        lines.append(f"| {labels[a]} − {labels[b]} | {' | '.join(cells)} |")
    return lines, verdicts


def speed_rows(runs: Mapping[str, Sequence[Run]], labels: Mapping[str, str]) -> list[str]:
    """Per variant: training images/s (mean over seeds), and the ``--eval-only`` record's
    evaluation throughput and batch-1 latency (means), parameters, multiply-adds and descriptor
    length (of the first seed's record: the same network for every seed)."""
    lines = [
        "| variant | train images/s | eval images/s | latency (ms) | params (M) | mult-adds (G) "
        "| descriptor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, variant_runs in runs.items():
        records = [r.record for r in variant_runs]
        rec = records[0]
        lines.append(
            f"| {labels[name]} "
            f"| {fmt(mean([r.train_throughput for r in variant_runs]), '.1f')} "
            f"| {fmt(mean([r.get('throughput') for r in records]), '.0f')} "
            f"| {fmt(mean([r.get('latency_ms') for r in records]), '.2f')} "
            f"| {rec['params'] / 1e6:.2f} | {rec['macs'] / 1e9:.3f} "
            f"| {fmt(rec.get('feature_dim'), 'd')} |"
        )
    return lines


def parse_args(
    description: str, variants, output_dir: str, argv=None, add_arguments=None
) -> argparse.Namespace:
    """The command line every evidence benchmark takes.

    ``--seeds`` (default 0 1 2), ``--variants`` (a subset of ``variants``), ``--output-dir``, the
    arguments ``add_arguments(parser)`` adds, then ``KEY VALUE`` config options for every run
    (after ``--`` when they follow a list option).

    Returns:
        argparse.Namespace: ``seeds``, ``variants``, ``output_dir`` (absolute) and ``opts``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", choices=list(variants), default=list(variants),
        metavar="VARIANT", help=f"a subset of: {', '.join(variants)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--output-dir", default=output_dir)
    if add_arguments is not None:
        add_arguments(parser)
    return parse_with_opts(parser, argv, opts_help="KEY VALUE for every run")


def comparison_tables(runs, seeds, labels, pairs) -> tuple[list[str], list[str]]:
    """Every table of an evidence report: per seed, mean ± std, paired differences, speed.

    Args:
        runs (dict[str, list[Run]]): each variant's runs, one per seed.
        seeds (list[int]): the seeds, in the order of each variant's runs.
        labels (dict[str, str]): each variant's label.
        pairs (list[tuple[str, str]]): the ``(A, B)`` variants to compare.

    Returns:
        (list[str], list[str]): the markdown lines and the verdict lines.
    """
    lines = seed_rows(runs, seeds, labels)
    summary, stats = summary_rows(runs, labels)
    lines += ["", *summary]
    paired, verdicts = paired_rows(runs, pairs, labels, stats, len(seeds))
    if paired:
        lines += ["", *paired]
    lines += ["", *speed_rows(runs, labels)]
    return lines, verdicts
