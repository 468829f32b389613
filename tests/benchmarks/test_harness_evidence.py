"""harness.evidence: per-seed table, mean ± sample std, paired differences and their verdicts."""

import argparse
import os

import pytest

from harness.evidence import (
    mean_std,
    paired_rows,
    parse_args,
    parse_with_opts,
    seed_rows,
    summary_rows,
)
from harness.runs import Run


def _run(m_ap, rank1, seconds=None, images=None):
    record = {"metrics": {"mAP": m_ap, "Rank-1": rank1}}
    return Run(weights="w", record=record, train_seconds=seconds, train_images=images)


RUNS = {
    "base": [_run(30.0, 20.0, 100.0, 5000), _run(32.0, 24.0), _run(31.0, 22.0)],
    "new": [_run(34.0, 21.0), _run(35.0, 25.0), _run(36.0, 23.0)],
}
LABELS = {"base": "Baseline", "new": "New"}


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sum of squares 2 over n - 1 = 2
    assert mean_std([5.0]) == (5.0, 0.0)


def test_tables_and_verdicts():
    """Paired mAP differences 4, 3, 5: mean 4.0, std 1.0; spreads 1.0 (both): beats (4 > 1).
    Rank-1 differences 1, 1, 1: mean 1.0 against spreads 2.0: does not beat."""
    rows = seed_rows(RUNS, [0, 1, 2], LABELS)
    assert rows[2] == "| Baseline | 0 | 30.0 | 20.0 | 100 | 50.0 |"
    assert rows[3] == "| Baseline | 1 | 32.0 | 24.0 | n/a | n/a |"
    summary, stats = summary_rows(RUNS, LABELS)
    assert summary[2] == "| Baseline | 31.0 ± 1.0 | 22.0 ± 2.0 |"
    assert stats["new", "mAP"] == (35.0, 1.0)
    paired, verdicts = paired_rows(RUNS, [("new", "base")], LABELS, stats, 3)
    assert paired[2] == "| New − Baseline | +4.0 ± 1.0 | +1.0 ± 0.0 |"
    assert verdicts[0].startswith("- mAP: New beats Baseline by more than the spread (+4.0")
    assert verdicts[1].startswith("- Rank-1: New does NOT beat Baseline")
    _, one_seed = paired_rows(RUNS, [("new", "base")], LABELS, stats, 1)
    assert "one seed, no verdict" in one_seed[0]


def test_command_line_of_the_evidence_scripts(tmp_path):
    args = parse_args("d", LABELS, str(tmp_path / "out"),
                      ["--seeds", "3", "4", "--", "SOLVER.MAX_EPOCH", "1"])  # fmt: skip
    assert args.seeds == [3, 4] and args.variants == list(LABELS)
    assert args.opts == ["SOLVER.MAX_EPOCH", "1"] and args.output_dir == str(tmp_path / "out")
    # without "--": the options start at the first config key, not in the list before it
    args = parse_args("d", LABELS, "o", ["--variants", "new", "SOLVER.MAX_EPOCH", "1", "A.B", "x"])
    assert args.variants == ["new"] and args.opts == ["SOLVER.MAX_EPOCH", "1", "A.B", "x"]
    with pytest.raises(SystemExit):  # an odd number of options is a usage error
        parse_args("d", LABELS, "out", ["--seeds", "0", "--", "SOLVER.MAX_EPOCH"])
    with pytest.raises(SystemExit):
        parse_args("d", LABELS, "out", ["--variants", "unknown"])

    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", default="rel")
    args = parse_with_opts(parser, ["MODEL.DEVICE", "cpu"])
    assert args.opts == ["MODEL.DEVICE", "cpu"] and os.path.isabs(args.output_dir)
