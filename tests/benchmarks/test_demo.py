"""benchmarks/demo.py's command line and report (its training runs are harness.runs', tested
there)."""

import pytest

from harness.runs import Run


@pytest.fixture(scope="module")
def demo(load_script):
    return load_script("benchmarks/demo.py")


def _run(m_ap, throughput, load=0.0, seconds=100.0):
    record = {
        "dataset": "SynthReIDSmall", "device": "cpu", "device_name": "test CPU",
        "throughput_batch": 128, "params": 11_180_000, "macs": 296_000_000, "latency_ms": 7.5,
        "throughput": throughput, "other_cpu_load": load,
        "metrics": {"mAP": m_ap, "Rank-1": 40.0, "Rank-5": 60.0, "mINP": 10.0},
    }  # fmt: skip
    return Run(weights="w", record=record, train_seconds=seconds, train_images=None)


def test_report_compares_the_distilled_student_with_the_plain_one(demo):
    stages = [("teacher", _run(43.6, 300.0)), ("alone", _run(29.6, 720.0, seconds=None)),
              ("distilled", _run(35.2, 690.0))]  # fmt: skip
    text = demo.report(stages, seed=0, epochs=16)
    assert "2.3x the teacher's throughput" in text  # 690 / 300
    assert "moves +5.6 mAP" in text  # 35.2 - 29.6
    assert "| alone " in text and "earlier" in text  # trained by an earlier run
    assert "WARNING" not in text
    stages[1] = ("alone", _run(29.6, 720.0, load=1.2))
    assert "while the speed of alone was measured" in demo.report(stages, seed=0, epochs=16)


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--epochs", "-3"]])
def test_epochs_below_one_are_refused(demo, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(argv)
    assert exc.value.code == 2 and "argument --epochs: must be 1 or more" in capsys.readouterr().err


def test_an_unknown_student_is_bad_input(demo, capsys):
    """Status 2, as every bad input, naming the students there are."""
    with pytest.raises(SystemExit) as exc:
        demo.parse_args(["--student", "foo"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --student: 'foo' has no config" in err
    assert "resnet18_64x32" in err and "mobilenetv1_0.5x" in err


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_output_dir_that_cannot_be_written_is_one_line(demo, tmp_path, capsys, sub):
    """A file, or a folder under one: refused before the teacher trains, with no traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--output-dir", str(a_file / sub) if sub else str(a_file)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: --output-dir: Cannot write")
    assert "a_file" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert out == ""  # nothing started
