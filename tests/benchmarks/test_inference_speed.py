"""benchmarks/inference_speed.py: the four extraction paths timed in one run, the descriptors'
change, accuracy folded and under autocast; bad input is one ``error:`` line with status 2."""

import json

import pytest

from harness.runs import main_of_runs

from ..conftest import assert_output_dir_refused, run_script

SCRIPT = "benchmarks/inference_speed.py"
TINY = ["--models", "R50", "--batch", "2", "--rounds", "2", "--passes", "1",
        "--time-budget", "0.01", "--gemm-sizes", "32"]  # fmt: skip


@pytest.fixture(scope="module")
def inference_speed(load_script):
    return load_script(SCRIPT)


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_output_dir_that_cannot_be_written_is_one_line(inference_speed, tmp_path, capsys, sub):
    assert_output_dir_refused(inference_speed.main, tmp_path, capsys, sub)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "argument --batch: must be 1 or more, got 0"),
        (["--rounds", "0"], "argument --rounds: must be 1 or more, got 0"),
        (["--passes", "0"], "argument --passes: must be 1 or more, got 0"),
        (["--models", "R34"], "argument --models: invalid choice: 'R34'"),
        (["--config", "configs/Synthetic/tiny.yml"], "--config and --weights go together"),
        (["--config", "configs/Synthetic/tiny.yml", "--weights", "missing.pth"],
         "--weights: no file 'missing.pth'"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_before_anything_runs(
    inference_speed, tmp_path, capsys, monkeypatch, argv, message
):
    monkeypatch.setattr(inference_speed, "gemm_rates", lambda *a: pytest.fail("timed"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main_of_runs(inference_speed.main, [*argv, "--output-dir", str(out)])
    stdout, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and stdout == ""
    assert not out.exists()


def test_trained_like_moves_every_batchnorm_off_the_identity(inference_speed):
    import torch
    from torch import nn

    model = inference_speed.trained_like(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    bn = model[1]
    assert not torch.equal(bn.running_mean, torch.zeros(4))
    assert not torch.equal(bn.running_var, torch.ones(4))
    assert not torch.equal(bn.weight, torch.ones(4)) and not torch.equal(bn.bias, torch.zeros(4))


@pytest.mark.slow
def test_one_run_times_the_four_paths(tiny_teacher, datasets_root, fastreid_root, tmp_path):
    config, weights = tiny_teacher
    out = tmp_path / "out"
    done = run_script(SCRIPT, *TINY, "--config", config, "--weights", weights,
                      "--output-dir", str(out), datasets_root=datasets_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "inference_speed.json").read_text())
    r50 = result["models"]["R50"]
    assert r50["input_size"] == [256, 128]
    assert r50["batchnorm_folded"] == 53 and r50["remaining_batchnorm"] == 1  # the BN neck
    assert r50["weights_cast"] == 53  # its convolutions (FastReID's classifier is no nn.Linear)
    paths = r50["paths"]
    assert list(paths) == ["fastreid", "reference", "folded", "mixed"]
    for path in paths.values():
        assert len(path["rounds"]) == 2 and path["images_per_s"] > 0
        assert path["images_per_s"] == pytest.approx(sum(path["rounds"]) / 2)  # their median
        assert path["conv_dtypes"] == [path["dtype"]]  # what really ran
        assert path["over_reference"] == pytest.approx(
            path["images_per_s"] / paths["reference"]["images_per_s"]
        )
    assert paths["mixed"]["dtype"] == "bfloat16"
    assert paths["reference"]["relative_change"] == 0
    assert 0 < paths["folded"]["relative_change"] < 1e-5  # float32: rounding only
    assert 1e-4 < paths["mixed"]["relative_change"] < 0.1

    a = result["accuracy"]
    assert a["dataset"] == "SynthReIDTiny" and a["batchnorm_folded"] == 20
    assert a["reference"]["conv_dtypes"] == a["folded"]["conv_dtypes"] == ["float32"]
    assert a["mixed"]["conv_dtypes"] == ["bfloat16"]
    assert a["folded"]["relative_change"] < 1e-5 and a["weights_cast"] == 20
    assert a["folded"]["mAP"] == pytest.approx(a["reference"]["mAP"], abs=1e-3)
    text = (out / "inference_speed.md").read_text()
    assert (
        "| ResNet-50 bag of tricks (256x128) | BatchNorm folded, channels-last, float32 |" in text
    )
