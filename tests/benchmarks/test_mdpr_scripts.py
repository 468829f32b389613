"""The command lines of MDPR's benchmarks (benchmarks/mdpr_evidence.py, benchmarks/mdpr_speed.py):
bad input is one ``error:`` line with status 2, found before anything runs or is created."""

import os

import pytest

from ..conftest import REPO, assert_output_dir_refused


@pytest.fixture(scope="module")
def evidence(load_script):
    return load_script("benchmarks/mdpr_evidence.py")


@pytest.fixture(scope="module")
def speed(load_script):
    return load_script("benchmarks/mdpr_speed.py")


@pytest.mark.parametrize("sub", ["", "sub"])
def test_evidence_output_dir_that_cannot_be_written(evidence, tmp_path, capsys, sub):
    assert_output_dir_refused(evidence.main, tmp_path, capsys, sub)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "argument --batch: must be 1 or more, got 0"),  # was an IndexError
        # was a ZeroDivisionError
        (["--num-classes", "0"], "argument --num-classes: must be 1 or more, got 0"),
        (["--steps", "0"], "argument --steps: must be 1 or more, got 0"),  # was accepted
        (["--eval-batch", "-2"], "argument --eval-batch: must be 1 or more, got -2"),
    ],
)
def test_speed_numbers_below_one_are_refused(speed, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        speed.parse_args([*argv, "--output-dir", str(out)])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_speed_output_dir_is_checked_before_timing(speed, tmp_path, monkeypatch):
    """An output folder that cannot be written is bad input, found before anything is timed."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    config = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
    args = speed.parse_args(["--config-file", config, "--device", "cpu", "--output-dir",
                             str(a_file / "sub"), "--num-classes", "4"])  # fmt: skip
    monkeypatch.setattr(speed, "time_training", lambda *a: pytest.fail("timed"))
    with pytest.raises(speed.UserInputError, match="--output-dir: .*a_file/sub"):
        speed.run(args)


@pytest.mark.slow
def test_speed_times_both_steps_with_the_same_losses(speed, tmp_path):
    """The engine's step (channels-last, foreach Adam) and the official-style one (NCHW, FastReID's
    flat-buffer Adam) on the tiny config: the same float32 losses, weights restored after each."""
    config = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
    args = speed.parse_args(["--config-file", config, "--device", "cpu", "--batch", "4",
                             "--steps", "1", "--eval-batch", "2", "--num-classes", "4",
                             "--no-profile", "--output-dir", str(tmp_path / "out")])  # fmt: skip
    result = speed.run(args)
    ours, official = result["training"]["ours"], result["training"]["official-style"]
    assert ours["channels_last"] and not official["channels_last"]
    assert not official["mixed_precision"]  # FastReID's AMP is CUDA-only
    assert result["max_loss_difference"] < 1e-5
    assert result["training"]["speedup"] == pytest.approx(
        ours["images_per_s"] / official["images_per_s"]
    )
    assert (tmp_path / "out" / "mdpr_speed.md").read_text().count("| ours: ") == 1
