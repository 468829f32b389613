"""The trade-off report: aggregation over seeds, the table, the plot, the command line."""

import os
import subprocess
import sys

import pytest

from kdreid.benchmark import write_record
from speed_kd.tradeoff import find_records, markdown_table, summarise, write_tradeoff

from ...conftest import REPO


def _record(name, mAP, r1, latency, kind="deep", macs=1e9):
    return {
        "name": name, "kind": kind, "config": None, "weights": None, "dataset": "SynthReIDSmall",
        "device": "cpu", "device_name": "test CPU", "input_size": [128, 64], "params": 2_000_000,
        "macs": macs, "latency_ms": latency, "throughput": 1000 / latency,
        "throughput_batch": 128, "metrics": {"mAP": mAP, "Rank-1": r1},
    }  # fmt: skip


RECORDS = [
    _record("teacher", 50.0, 45.0, 20.0),
    _record("student", 30.0, 25.0, 4.0),
    _record("student", 34.0, 27.0, 6.0),
    _record("student +KD", 40.0, 35.0, 5.0),
    _record("LOMO+XQDA", 10.0, 12.0, 40.0, kind="classical", macs=None),
]


def test_runs_of_one_model_are_aggregated():
    """student: mAP mean (30 + 34) / 2 = 32, sample std |34 - 30| / sqrt(2) = 2.83; latency the
    median of 4 and 6 = 5."""
    rows = {r["name"]: r for r in summarise(RECORDS)}
    assert rows["student"]["runs"] == 2
    assert rows["student"]["mAP"] == pytest.approx(32.0)
    assert rows["student"]["mAP_std"] == pytest.approx(2.8284, abs=1e-4)
    assert rows["student"]["latency_ms"] == pytest.approx(5.0)
    assert rows["teacher"]["mAP_std"] == 0.0


def test_table_rows_slowest_first_with_speedups():
    table = markdown_table(summarise(RECORDS), reference="teacher")
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    names = [line.split("|")[1].strip() for line in lines[1:]]
    assert names == ["LOMO+XQDA", "teacher", "student", "student +KD"]
    student = next(line for line in lines if line.startswith("| student |"))
    assert "32.0 ± 2.8" in student and "| 4.0× |" in student  # 20 ms / 5 ms
    lomo = next(line for line in lines if line.startswith("| LOMO+XQDA"))
    assert "n/a" in lomo  # no multiply-adds for the classical pipeline
    assert "test CPU" in table


def _write_records(runs):
    for i, record in enumerate(RECORDS):
        write_record(runs / f"run{i}" / "speed_accuracy.json", record)


def test_files(tmp_path):
    _write_records(tmp_path / "runs")
    assert len(find_records([tmp_path / "runs"])) == len(RECORDS)
    table = write_tradeoff(find_records([tmp_path / "runs"]), tmp_path / "out")
    assert (tmp_path / "out" / "tradeoff.md").read_text().strip() == table
    png = (tmp_path / "out" / "tradeoff.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


@pytest.mark.slow
def test_command_line(tmp_path):
    _write_records(tmp_path / "runs")
    script = os.path.join(REPO, "projects", "SpeedKD", "tradeoff.py")
    proc = subprocess.run(
        [sys.executable, script, str(tmp_path / "runs"), "--output-dir", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "student +KD" in proc.stdout and (tmp_path / "cli" / "tradeoff.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, script, str(empty)], capture_output=True, text=True)
    assert proc.returncode == 2 and "No speed_accuracy.json under" in proc.stderr


def test_records_of_different_models_under_one_name_are_refused():
    """Two configs both called tiny.yml (a ResNet-18 and an MDPR) would be averaged in one row."""
    other = {**_record("student", 20.0, 15.0, 9.0), "params": 17_000_000}
    with pytest.raises(ValueError, match=r"'student' differ in params \(2000000 and 17000000\)"):
        summarise([*RECORDS, other])
    market = {**_record("teacher", 20.0, 15.0, 9.0), "dataset": "Market1501"}
    with pytest.raises(ValueError, match="differ in dataset"):
        summarise([*RECORDS, market])


def test_unknown_reference_is_refused():
    with pytest.raises(ValueError, match=r"No model named 'teachr'.*'teacher'"):
        markdown_table(summarise(RECORDS), reference="teachr")


@pytest.fixture(scope="module")
def cli(load_script):
    """projects/SpeedKD/tradeoff.py as a module (its main in-process: no interpreter start-up)."""
    return load_script("projects/SpeedKD/tradeoff.py")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b'{"name": "x", ', "is not valid JSON"),
        (b"[1, 2]", "holds a JSON list, not a record object"),
        (b'{"metrics": {"mAP": 1.0}}', "has no 'name'"),
        (b'{"name": "x"}', "has no 'metrics' object"),
        (b'{"name": "x", "metrics": [1]}', "has no 'metrics' object"),
    ],
)
def test_a_bad_record_is_one_line_naming_the_file(cli, tmp_path, capsys, content, message):
    """Unreadable or incomplete records: status 2, one ``error:`` line naming the file, no
    traceback (missing keys were a KeyError, bad JSON an error without the file's name)."""
    for i, record in enumerate(RECORDS[:2]):
        write_record(tmp_path / "runs" / f"run{i}" / "speed_accuracy.json", record)
    bad = tmp_path / "runs" / "bad" / "speed_accuracy.json"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        find_records([tmp_path / "runs"])
    for arg in (tmp_path / "runs", bad):
        with pytest.raises(SystemExit) as info:
            cli.main([str(arg), "--output-dir", str(tmp_path / "out")])
        assert info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert f"'{bad}'" in lines[0] and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_output_dir_has_help_with_its_default(cli, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--output-dir OUTPUT_DIR folder to write tradeoff.md and tradeoff.png" in help_text
    assert "(default: the current folder)" in help_text


def _trained(record, config, distilled, sha):
    return {
        **record,
        "weights": f"logs/{sha}/model_final.pth",
        "weights_sha256": sha * 16,
        "trained": {"name": record["name"], "config": config, "distilled": distilled},
        "distilled": distilled,
    }


def test_same_name_trained_differently_is_refused():
    # the plain and the distilled student evaluated under one KDREID.NAME: one row "2 runs" before
    plain = _trained(_record("mbv1", 30.0, 25.0, 4.0), "mobilenetv1.yml", False, "a")
    distilled = _trained(_record("mbv1", 40.0, 35.0, 4.0), "kd_mobilenetv1.yml", True, "b")
    with pytest.raises(ValueError, match=r"'mbv1' differ in training config \(mobilenetv1.yml"):
        summarise([plain, distilled])
    distilled["trained"]["config"] = "mobilenetv1.yml"
    with pytest.raises(ValueError, match=r"'mbv1' differ in distillation \(False and True\)"):
        summarise([plain, distilled])
    # seeds of one model: same training config, other weights
    seed2 = _trained(_record("mbv1", 32.0, 27.0, 4.0), "mobilenetv1.yml", False, "c")
    assert summarise([plain, seed2])[0]["runs"] == 2
    # one weights file evaluated twice is not two runs
    again = _trained(_record("mbv1", 30.0, 25.0, 4.0), "mobilenetv1.yml", False, "a")
    with pytest.raises(ValueError, match="evaluated the same weights"):
        summarise([plain, again])


def test_kind_comes_from_the_record_not_the_name(monkeypatch, tmp_path):
    from speed_kd import tradeoff

    records = [
        {**_record("kd-free baseline", 30.0, 25.0, 4.0), "distilled": False},
        {**_record("student B", 40.0, 35.0, 5.0), "distilled": True},
        _record("old record", 35.0, 30.0, 6.0),  # written before records said
        _record("LOMO+XQDA", 10.0, 12.0, 40.0, kind="classical", macs=None),
    ]
    styles = {r["name"]: tradeoff._style(r) for r in summarise(records)}
    assert styles == {
        "kd-free baseline": "alone",
        "student B": "distilled",
        "old record": "unknown",
        "LOMO+XQDA": "classical",
    }
    drawn = []
    real = tradeoff.plt.Axes.errorbar

    def spy(self, x, y, **kwargs):
        drawn.append((kwargs["color"], kwargs.get("markerfacecolor")))
        return real(self, x, y, **kwargs)

    monkeypatch.setattr(tradeoff.plt.Axes, "errorbar", spy)
    records[1]["other_cpu_load"] = 1.5
    tradeoff.plot_tradeoff(summarise(records), str(tmp_path / "plot.png"))
    assert drawn[0] == ("tab:blue", "tab:blue") and drawn[1] == ("tab:red", "none")


def test_busy_cpu_is_flagged_in_the_table():
    records = [dict(r) for r in RECORDS]
    records[3]["other_cpu_load"] = 1.5  # student +KD
    table = markdown_table(summarise(records), reference="teacher")
    row = next(line for line in table.splitlines() if line.startswith("| student +KD"))
    assert row.count("⚠") == 3  # latency, speed-up, throughput
    assert "⚠ unreliable speed: other processes kept up to 1.5 CPUs busy while student +KD" in table
    assert "⚠" not in next(line for line in table.splitlines() if line.startswith("| teacher"))
    assert "⚠" not in markdown_table(summarise(RECORDS))


@pytest.mark.parametrize("latencies", [(3.0, 8.0), (0.9, 40.0), (0.4, 400.0)])
def test_latency_axis_labels_do_not_overlap(latencies):
    from speed_kd.tradeoff import plt, tradeoff_figure

    low, high = latencies
    records = [_record("slow", 50.0, 45.0, high), _record("fast", 30.0, 25.0, low)]
    fig = tradeoff_figure(summarise(records))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axis = fig.axes[0].xaxis
    lo, hi = fig.axes[0].get_xlim()
    labels = [
        t.label1
        for t in axis.get_major_ticks() + axis.get_minor_ticks()
        if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi
    ]
    boxes = sorted((label.get_window_extent(renderer) for label in labels), key=lambda b: b.x0)
    plt.close(fig)
    assert len(boxes) >= 2  # a scale to read, even within one decade
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, (left, right)


def test_accuracy_is_drawn_against_latency_and_against_multiply_adds():
    from speed_kd.tradeoff import plt, tradeoff_figure

    records = [
        {**_record("teacher", 50.0, 45.0, 20.0, macs=3e8), "distilled": False},
        {**_record("student +KD", 40.0, 35.0, 5.0, macs=2.5e7), "distilled": True},
        _record("LOMO+XQDA", 10.0, 12.0, 40.0, kind="classical", macs=None),
    ]
    fig = tradeoff_figure(summarise(records))
    by_latency, by_macs = fig.axes
    points = {
        ax: sorted(
            (round(float(x), 3), float(y)) for line in ax.lines for x, y in line.get_xydata()
        )
        for ax in (by_latency, by_macs)
    }
    plt.close(fig)
    assert points[by_latency] == [(5.0, 40.0), (20.0, 50.0), (40.0, 10.0)]
    assert points[by_macs] == [(0.025, 40.0), (0.3, 50.0)]  # G multiply-adds; LOMO has none
    assert "multiply-adds" in by_macs.get_xlabel() and "latency" in by_latency.get_xlabel()
