"""tools/export_onnx.py: the ONNX graph reproduces PyTorch's features, at any batch size."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from fastreid.modeling import build_model

from kdreid.cli import build_inference_model
from kdreid.errors import ConfigError, OutputDirError, WeightsError
from tests.conftest import REPO, load_script_module

TOOL = os.path.join(REPO, "tools", "export_onnx.py")
TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
MOBILENET = [
    "MODEL.BACKBONE.NAME",
    "build_speedkd_mobilenetv1_backbone",
    "MODEL.BACKBONE.DEPTH",
    "0.25x",
    "MODEL.BACKBONE.FEAT_DIM",
    "256",
]


tool = load_script_module("tools/export_onnx.py")  # module level: the tests share its functions


def save_checkpoint(path, opts=(), seed=0):
    """A FastReID-style checkpoint ({"model": state dict}) of a model as trained on 10 identities
    (its classifier is not part of the exported graph)."""
    cfg, _ = build_inference_model(
        TINY, [*opts, "MODEL.HEADS.NUM_CLASSES", "10"], load_weights=False
    )
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial BN statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    """The tiny ResNet-18 config exported once: (config, path, check figures)."""
    folder = tmp_path_factory.mktemp("onnx")
    weights = save_checkpoint(folder / "model_final.pth")
    opts = ["MODEL.WEIGHTS", weights]
    output = str(folder / "model.onnx")
    result = tool.export(TINY, opts, output, batch_size=3, latency_runs=2)
    return opts, output, result


@pytest.mark.slow
def test_export_reports_a_passing_check(resnet_export):
    _, output, result = resnet_export
    cfg = result["cfg"]
    assert os.path.isfile(output)
    assert result["input_shape"] == [3, 3, 64, 32]
    assert result["feature_dim"] == cfg.MODEL.BACKBONE.FEAT_DIM == 512
    assert result["relative_diff"] <= tool.DEFAULT_TOLERANCE
    assert result["min_cosine"] > 0.9999
    assert result["torch_ms"] > 0 and result["onnxruntime_ms"] > 0
    assert not [f for f in os.listdir(os.path.dirname(output)) if f.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3])
def test_onnx_matches_pytorch_at_any_batch_size(resnet_export, batch_size):
    opts, output, _ = resnet_export
    session = tool.ort_session(output)
    images = tool.random_images(batch_size, (64, 32), seed=batch_size + 10)
    _, model = tool.build_deployable(TINY, opts)
    figures = tool.compare(session, model, images, tool.DEFAULT_TOLERANCE)
    assert figures["relative_diff"] <= tool.DEFAULT_TOLERANCE


@pytest.mark.slow
def test_another_model_does_not_match(resnet_export, tmp_path):
    """The check can fail: the same architecture with other weights is far beyond tolerance."""
    _, output, _ = resnet_export
    _, other = tool.build_deployable(
        TINY, ["MODEL.WEIGHTS", save_checkpoint(tmp_path / "other.pth", seed=1)]
    )
    images = tool.random_images(2, (64, 32))
    with pytest.raises(tool.ExportMismatchError, match="differ from PyTorch's at batch 2"):
        tool.compare(tool.ort_session(output), other, images, 1e-4)


@pytest.mark.slow
def test_mobilenet_v1_exports_through_the_command_line(tmp_path, capsys):
    weights = save_checkpoint(tmp_path / "mobilenet.pth", MOBILENET)
    output = tmp_path / "out" / "mobilenet.onnx"
    argv = ["--config-file", TINY, "--output", str(output), "--batch-size", "2"]
    result = tool.run(
        tool.parse_args([*argv, "--latency-runs", "2", *MOBILENET, "MODEL.WEIGHTS", weights])
    )
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "onnxruntime" in printed
    assert result["feature_dim"] == 256
    features = tool.ort_session(str(output)).run(
        None, {"images": tool.random_images(5, (64, 32)).numpy()}
    )
    assert features[0].shape == (5, 256)


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    weights = save_checkpoint(tmp_path / "mobilenet.pth", MOBILENET)
    with pytest.raises(WeightsError, match="do not fit"):  # a ResNet-18 config
        tool.export(TINY, ["MODEL.WEIGHTS", weights], str(tmp_path / "model.onnx"), latency_runs=0)
    assert os.listdir(tmp_path) == ["mobilenet.pth"]


@pytest.mark.slow
def test_failed_check_exits_1_and_writes_nothing(resnet_export, tmp_path, monkeypatch, capsys):
    """An ONNX file of other weights (the seed-0 export standing in for a broken exporter) fails
    the check: status 1, a message with the figures, and neither the file nor a temporary left."""
    _, exported, _ = resnet_export
    monkeypatch.setattr(tool, "write_onnx", lambda model, path, *args: shutil.copy(exported, path))
    weights = save_checkpoint(tmp_path / "other.pth", seed=1)
    output = tmp_path / "model.onnx"
    argv = ["--config-file", TINY, "--output", str(output), "MODEL.WEIGHTS", weights]
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    assert info.value.code == 1
    assert "failed its check, not written" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["other.pth"]


@pytest.mark.slow
def test_missing_weights_is_one_line_error(tmp_path):
    output = tmp_path / "model.onnx"
    proc = subprocess.run(
        [sys.executable, TOOL, "--config-file", TINY, "--output", str(output)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: No weights to export: pass the checkpoint as MODEL.WEIGHTS "
        "path/to/model_final.pth."
    ]
    assert not output.exists()


@pytest.mark.parametrize("where", ["folder", "unwritable"])
def test_output_that_cannot_be_written_is_refused_before_building(tmp_path, where, monkeypatch):
    def never(*args):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(tool, "build_deployable", never)
    if where == "folder":
        with pytest.raises(ConfigError, match=f"--output '{tmp_path}' is a folder"):
            tool.export(TINY, [], str(tmp_path), latency_runs=0)
    else:
        with pytest.raises(OutputDirError, match="Cannot write the output folder '/proc/x'"):
            tool.export(TINY, [], "/proc/x/model.onnx", latency_runs=0)


@pytest.mark.slow
def test_printed_opset_is_read_from_the_written_file(resnet_export):
    _, output, result = resnet_export
    assert result["opset"] == tool.written_opset(output) == tool.DEFAULT_OPSET


@pytest.mark.slow
def test_a_file_of_another_opset_is_refused(resnet_export, tmp_path, monkeypatch):
    """The exporter falls back to opset 18 when it cannot write the opset asked for: a file of
    another opset than requested is not kept, rather than reported as the requested one."""
    _, exported, _ = resnet_export
    monkeypatch.setattr(tool, "write_onnx", lambda model, path, *args: shutil.copy(exported, path))
    opts = ["MODEL.WEIGHTS", save_checkpoint(tmp_path / "w.pth")]
    with pytest.raises(tool.ExportMismatchError, match="wrote opset 18, not the opset 20"):
        tool.export(TINY, opts, str(tmp_path / "model.onnx"), opset=20, latency_runs=0)
    assert os.listdir(tmp_path) == ["w.pth"]


def test_opset_range():
    """torch's exporter writes opset 18 and up; onnxruntime 1.31 runs up to 26."""
    assert tool.MIN_OPSET == 18 and tool.max_opset() >= 21
    assert tool.opset_range_error(tool.DEFAULT_OPSET) is None
    assert tool.opset_range_error(tool.max_opset()) is None
    assert "between 18 and" in tool.opset_range_error(13)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--opset", "13"], "argument --opset: must be between 18 and"),
        (["--opset", "3"], "argument --opset: must be between 18 and"),
        (["--opset", "99"], "argument --opset: must be between 18 and"),
        (["--latency-runs", "-3"], "argument --latency-runs: must be 0 or more, got -3"),
        (
            ["--tolerance", "-1"],
            "argument --tolerance: must be a finite number of 0 or more, got -1",
        ),
        (
            ["--tolerance", "nan"],
            "argument --tolerance: must be a finite number of 0 or more, got nan",
        ),
    ],
)
def test_bad_flags_are_refused_at_parsing(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        tool.parse_args(["--config-file", TINY, "--output", "model.onnx", *flags])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last and message in last


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"opset": 13}, "--opset must be between 18 and"),
        ({"tolerance": -1.0}, "--tolerance must be 0 or more"),
        ({"latency_runs": -3}, "--latency-runs must be 0 or more"),
    ],
)
def test_bad_arguments_to_export_are_config_errors(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        tool.export(TINY, ["MODEL.WEIGHTS", "unused.pth"], str(tmp_path / "model.onnx"), **kwargs)
    assert os.listdir(tmp_path) == []


class _BusyCpu:
    """OtherCpuLoad as it reads while another process keeps 1.5 CPUs busy."""

    def __enter__(self):
        self.cpus = None
        return self

    def __exit__(self, *exc):
        self.cpus = 1.5
        return False


def test_latencies_measured_on_a_busy_cpu_are_flagged(tmp_path, capsys, monkeypatch):
    weights = save_checkpoint(tmp_path / "mobilenet.pth", MOBILENET)
    argv = ["--config-file", TINY, "--output", str(tmp_path / "m.onnx"), "--batch-size", "2"]
    args = tool.parse_args([*argv, "--latency-runs", "1", *MOBILENET, "MODEL.WEIGHTS", weights])
    monkeypatch.setattr(tool, "OtherCpuLoad", _BusyCpu)
    result = tool.run(args)
    printed = capsys.readouterr().out
    assert result["other_cpu_load"] == 1.5
    assert (
        "WARNING: other processes kept 1.5 CPUs busy while the latencies were measured" in printed
    )
    monkeypatch.undo()
    tool.run(args)
    assert result["other_cpu_load"] is not None  # measured for real the second time
