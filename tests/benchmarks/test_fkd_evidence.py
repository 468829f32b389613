"""The FactorizedKD evidence scripts' command lines, and the guard that keeps teachers trained with
other options from being reused (no training here: both stop before it)."""

import json

import pytest

from harness.runs import StaleRunError, main_of_runs

from ..conftest import assert_output_dir_refused


@pytest.fixture(scope="module")
def evidence(load_script):
    return load_script("benchmarks/fkd_evidence.py")


@pytest.fixture(scope="module")
def weights(load_script):
    """benchmarks/fkd_weights.py (it imports fkd_evidence as its sibling module)."""
    return load_script("benchmarks/fkd_weights.py")


def test_teacher_options_are_parsed_apart(evidence, tmp_path):
    argv = ["--output-dir", str(tmp_path), "--teacher-opts", "MODEL.FKD.VIEW_SIZE '[64, 64]'",
            "SOLVER.MAX_EPOCH", "1"]  # fmt: skip
    args = evidence.parse_args(
        "d", evidence.VARIANTS, "x", argv, add_arguments=evidence.add_teacher_opts
    )
    assert args.teacher_opts == ["MODEL.FKD.VIEW_SIZE", "[64, 64]"]
    assert args.opts == ["SOLVER.MAX_EPOCH", "1"]
    with pytest.raises(SystemExit):  # one key without its value
        evidence.parse_args("d", evidence.VARIANTS, "x", ["--teacher-opts", "MODEL.FKD.VIEW_SIZE"],
                            add_arguments=evidence.add_teacher_opts)  # fmt: skip


def test_teachers_trained_with_other_options_are_not_reused(evidence, tmp_path, capsys):
    (tmp_path / "teachers").mkdir()
    (tmp_path / "teachers" / "options.json").write_text(json.dumps(["SOLVER.MAX_EPOCH", "1"]))
    with pytest.raises(StaleRunError) as exc:
        evidence.train_teachers(
            str(tmp_path), ["SOLVER.MAX_EPOCH", "1"], ["INPUT.SIZE_TRAIN", "[8,8]"]
        )
    message = str(exc.value)
    assert str(tmp_path / "teachers") in message and "INPUT.SIZE_TRAIN" in message
    with pytest.raises(SystemExit) as exc:  # bad input: status 2, one line
        main_of_runs(evidence.main, ["--output-dir", str(tmp_path)])  # options [], not those
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: the teachers in")


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_output_dir_that_cannot_be_written_is_one_line(evidence, tmp_path, capsys, sub):
    assert_output_dir_refused(evidence.main, tmp_path, capsys, sub)


@pytest.mark.parametrize("text", ["1", "1,2,3", "a,b", "-1,1"])
def test_weight_pairs_refused(weights, text, capsys):
    with pytest.raises(SystemExit):
        weights.parse_args([f"--weights={text}"])
    assert text in capsys.readouterr().err


def test_weight_pairs(weights):
    args = weights.parse_args(["--weights", "1,1", "0.3,10", "--", "SOLVER.MAX_EPOCH", "1"])
    assert args.weights == [(1.0, 1.0), (0.3, 10.0)] and args.opts == ["SOLVER.MAX_EPOCH", "1"]
    assert weights.parse_args([]).weights == [(1.0, 1.0), (3.0, 1.0), (0.3, 1.0), (1.0, 10.0)]
