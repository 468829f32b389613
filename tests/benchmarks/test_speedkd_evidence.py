"""benchmarks/speedkd_evidence.py's command line: options after ``--students`` stay options,
unknown students are refused before anything trains, and the distillation keys reach the
distilled students only."""

import pytest

from harness.runs import main_of_runs


@pytest.fixture(scope="module")
def evidence(load_script):
    return load_script("benchmarks/speedkd_evidence.py")


def test_the_default_students_are_the_papers_mobilenets(evidence):
    args = evidence.parse_args([])
    assert args.students == ["mobilenetv1_1.0x", "mobilenetv1_0.5x", "mobilenetv2_1.0x"]
    assert args.seeds == [0, 1, 2]


def test_options_after_students_are_options(evidence):
    args = evidence.parse_args(
        ["--students", "resnet18_64x32", "mobilenetv1_0.5x",
         "MODEL.SPEEDKD.LAMBDA", "0.5", "SOLVER.MAX_EPOCH", "3"]
    )  # fmt: skip
    assert args.students == ["resnet18_64x32", "mobilenetv1_0.5x"]
    assert args.opts == ["MODEL.SPEEDKD.LAMBDA", "0.5", "SOLVER.MAX_EPOCH", "3"]
    assert args.plain_opts == ["SOLVER.MAX_EPOCH", "3"]  # λ means nothing to a plain student


def test_distillation_keys_reach_the_distilled_students_only(evidence):
    args = evidence.parse_args(
        ["KD.MODEL_WEIGHTS", "('t.pth',)", "MODEL.SPEEDKD.TEMPERATURE", "8",
         "INPUT.SIZE_TEST", "[64, 32]"]
    )  # fmt: skip
    assert args.plain_opts == ["INPUT.SIZE_TEST", "[64, 32]"] and len(args.opts) == 6


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--students", "resnet19"], ["resnet19", "resnet18_64x32", "mobilenetv1_0.5x"]),
        (["--students", "mobilenetv1_0.5x", "mobilenet"], ["mobilenet.yml", "mobilenetv1_0.25x"]),
        (["SOLVER.MAX_EPOCH"], ["KEY VALUE", "SOLVER.MAX_EPOCH"]),
    ],
)
def test_bad_command_lines_are_refused_by_name(evidence, capsys, argv, words):
    with pytest.raises(SystemExit) as exc:
        evidence.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_an_output_dir_that_cannot_be_written_is_refused_before_training(
    evidence, tmp_path, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exc:
        main_of_runs(evidence.main, ["--output-dir", str(a_file / "sub")])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: --output-dir: Cannot write")
    assert "Traceback" not in err and out == ""  # not even the teacher started
