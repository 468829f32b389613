"""Export a trained ReID model to ONNX, and check the export against PyTorch with onnxruntime.

    python tools/export_onnx.py --config-file CFG --output model.onnx [--batch-size N] \
        [--opset K] [--tolerance T] MODEL.WEIGHTS path/to/model_final.pth [KEY VALUE ...]

The graph takes raw RGB images as FastReID's loader gives them (float32, 0-255, N×3×H×W with
H×W = ``INPUT.SIZE_TEST``; the model's pixel normalisation is inside the graph) and returns the
model's evaluation output, the retrieval feature (N×D). The batch axis is dynamic. A distiller
is exported as its deployed student; teachers are training-only and are not built.

The exported file is kept only if onnxruntime (CPU) reproduces PyTorch's features on a random
batch: largest absolute difference at most ``tolerance`` times the largest feature magnitude.
The figures and the batch-1 CPU latency of both runtimes are printed.

Exporter: torch's ``torch.export``-based exporter (``dynamo=True``, torch's default since 2.9;
the TorchScript one is deprecated), which needs ``onnxscript``. It implements opset 18 and later
only: asked for an earlier one it writes opset 18 anyway (onnx's down-conversion fails on these
graphs), so ``--opset`` is limited to 18 up to the newest opset the installed onnxruntime loads.
The opset printed is the one read back from the written file.
"""

import argparse
import functools
import logging
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from kdreid.benchmark import OTHER_LOAD_WARNING, OtherCpuLoad, median_seconds
from kdreid.checkpoint import prepare_output_dir
from kdreid.cli import at_least, build_inference_model, finite_at_least, report_user_errors
from kdreid.config import get_cfg
from kdreid.errors import ConfigError, WeightsError
from kdreid.meta_arch import deployed_model

# Imported for registration of the projects' models (each installed project's entry point).
get_cfg()

__all__ = [
    "ExportMismatchError",
    "ImagesToFeatures",
    "build_deployable",
    "export",
    "max_opset",
    "written_opset",
]

DEFAULT_OPSET = 18
# The torch.export-based exporter's operators are written for opset 18 (torch's TORCHLIB_OPSET);
# an earlier opset would need onnx's version converter, which fails on these graphs.
MIN_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "features"


class ExportMismatchError(RuntimeError):
    """onnxruntime's output differs from PyTorch's beyond the tolerance, or the written file is
    not of the opset asked for."""


@functools.cache
def max_opset() -> int:
    """The newest default-domain opset both onnx knows and onnxruntime (CPU) loads.

    Probed with a one-node model per opset, from ``onnx.defs.onnx_opset_version()`` down: a new
    onnx may define opsets the installed onnxruntime refuses as "under development".
    """
    for version in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        opsets = [onnx.helper.make_opsetid("", version)]
        try:
            graph = onnx.helper.make_graph(
                [onnx.helper.make_node("Identity", ["x"], ["y"])],
                "probe",
                [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
            )
            model = onnx.helper.make_model(
                graph,
                opset_imports=opsets,
                ir_version=onnx.helper.find_min_ir_version_for(opsets),
            )
            options = ort.SessionOptions()
            options.log_severity_level = 4
            ort.InferenceSession(
                model.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
        except Exception:  # unknown to onnx's IR table, or refused by onnxruntime
            continue
        return version
    return MIN_OPSET


def opset_range_error(opset: int) -> str | None:
    """Why ``opset`` cannot be exported, or None when it can."""
    if MIN_OPSET <= opset <= max_opset():
        return None
    return (
        f"--opset must be between {MIN_OPSET} and {max_opset()}, got {opset}: torch's ONNX "
        f"exporter (torch.export-based) writes opset {MIN_OPSET} and later, and onnxruntime "
        f"{ort.__version__} runs up to opset {max_opset()}."
    )


def written_opset(path: str) -> int:
    """The default-domain (``ai.onnx``) opset recorded in the ONNX file at ``path``."""
    model = onnx.load(path, load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportMismatchError(f"'{path}' imports no ai.onnx opset")
    return versions[0]


class ImagesToFeatures(nn.Module):
    """An evaluation-mode model seen as a function from raw images to retrieval features.

    FastReID's ``Baseline`` normalises its input in place; the wrapper hands it a copy so that the
    caller's tensor is left as it was.

    Args:
        model: a FastReID meta-architecture whose eval-mode forward returns the features.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()

    def train(self, mode: bool = True) -> "ImagesToFeatures":
        return super().train(False)  # always an inference graph

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map raw images to retrieval features.

        Args:
            images: N×3×H×W float RGB in [0, 255], H×W as ``INPUT.SIZE_TEST``.

        Returns:
            N×D features, the model's evaluation output.
        """
        return self.model(images.clone())


def _weights_named(cfg):
    if not cfg.MODEL.WEIGHTS:
        raise WeightsError(
            "No weights to export: pass the checkpoint as MODEL.WEIGHTS path/to/model_final.pth."
        )


def build_deployable(config_file: str, opts: list[str]):
    """The config and the deployed model of ``config_file`` plus ``KEY VALUE`` options, on the CPU,
    with ``MODEL.WEIGHTS`` loaded strictly, wrapped for export (a distiller deploys its student;
    teachers are training-only and are not built).

    Returns:
        (CfgNode, ImagesToFeatures)

    Raises:
        WeightsError: no weights given, or weights that do not fit the model.
    """
    cfg, model = build_inference_model(config_file, opts, device="cpu", check=_weights_named)
    return cfg, ImagesToFeatures(deployed_model(model))


def random_images(batch_size: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A reproducible batch of uniform random images, batch_size×3×H×W in [0, 255]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, *size, generator=generator) * 255


def write_onnx(model: ImagesToFeatures, path: str, size: tuple[int, int], opset: int) -> None:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis."""
    # An example batch of 2: torch.export specialises a dimension of size 1 to a constant.
    example = random_images(2, size)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes={"images": {0: batch}},
        external_data=False,
        verbose=False,
    )


def ort_session(path: str):
    """An onnxruntime CPU session with as many threads as torch uses (a like-for-like timing)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    # Idle threads would otherwise spin after each run, stealing cores from PyTorch's timing.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare(session, model: ImagesToFeatures, images: torch.Tensor, tolerance: float) -> dict:
    """Run both runtimes on ``images`` (N×3×H×W) and compare their N×D outputs.

    Returns:
        ``max_abs_diff``, ``relative_diff`` (max abs diff / max |PyTorch feature|) and
        ``min_cosine`` (the lowest per-image cosine similarity).

    Raises:
        ExportMismatchError: ``relative_diff`` exceeds ``tolerance`` or the shapes differ.
    """
    with torch.inference_mode():
        expected = model(images).numpy()
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    if actual.shape != expected.shape:
        raise ExportMismatchError(
            f"onnxruntime returned shape {actual.shape}, PyTorch {expected.shape}, "
            f"for input {tuple(images.shape)}"
        )
    max_abs_diff = float(np.abs(actual - expected).max())
    relative_diff = max_abs_diff / max(float(np.abs(expected).max()), 1e-12)
    norms = np.linalg.norm(actual, axis=1) * np.linalg.norm(expected, axis=1)
    min_cosine = float(((actual * expected).sum(axis=1) / np.maximum(norms, 1e-12)).min())
    figures = {
        "max_abs_diff": max_abs_diff,
        "relative_diff": relative_diff,
        "min_cosine": min_cosine,
    }
    if not relative_diff <= tolerance:
        raise ExportMismatchError(
            f"onnxruntime's features differ from PyTorch's at batch {images.shape[0]}: max abs "
            f"diff {max_abs_diff:.3g} = {relative_diff:.3g} relative (tolerance {tolerance:g}), "
            f"min cosine {min_cosine:.6f}"
        )
    return figures


def export(
    config_file: str,
    opts: list[str],
    output: str,
    *,
    batch_size: int = 4,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    latency_runs: int = 20,
) -> dict:
    """Export the model of ``config_file`` and ``opts`` (weights from ``MODEL.WEIGHTS``) to
    ``output`` and check it.

    The file is written next to ``output`` and moved there only once the check has passed.

    Args:
        config_file: the model's config file.
        opts: ``KEY VALUE`` options, ``MODEL.WEIGHTS`` among them.
        output: the ONNX file to write.
        batch_size: images in the random batch the runtimes are compared on.
        opset: the ONNX opset.
        tolerance: the largest accepted max abs difference relative to the largest feature.
        latency_runs: timed batch-1 runs per runtime (0: no timing).

    Returns:
        The check's figures (see :func:`compare`) with ``output``, ``input_shape`` (with
        ``batch_size``), ``feature_dim``, ``opset`` and ``torch_ms`` / ``onnxruntime_ms``
        (median batch-1 latency on the CPU, absent when ``latency_runs`` is 0), and the
        ``cfg`` it was built from.

    Raises:
        WeightsError: missing or unfitting weights.
        ConfigError: a batch size below 1, an opset outside ``MIN_OPSET``–:func:`max_opset`,
            a negative tolerance or number of latency runs, or ``output`` is a folder.
        OutputDirError: the folder of ``output`` cannot be created or written.
        ExportMismatchError: onnxruntime does not reproduce PyTorch's output, or the file
            written is not of opset ``opset``.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
    if opset_range_error(opset):
        raise ConfigError(opset_range_error(opset))
    if not tolerance >= 0:
        raise ConfigError(f"--tolerance must be 0 or more, got {tolerance}.")
    if latency_runs < 0:
        raise ConfigError(f"--latency-runs must be 0 or more, got {latency_runs}.")
    if os.path.isdir(output):
        raise ConfigError(f"--output '{output}' is a folder; name the ONNX file to write.")
    folder = os.path.dirname(os.path.abspath(output))
    prepare_output_dir(folder)  # before the slow part
    cfg, model = build_deployable(config_file, opts)
    size = tuple(cfg.INPUT.SIZE_TEST)
    tmp = os.path.join(folder, f".{os.path.basename(output)}.{os.getpid()}.tmp")
    try:
        write_onnx(model, tmp, size, opset)
        opset_written = written_opset(tmp)
        if opset_written != opset:
            raise ExportMismatchError(
                f"torch.onnx.export wrote opset {opset_written}, not the opset {opset} asked for"
            )
        session = ort_session(tmp)
        images = random_images(batch_size, size, seed=1)
        result = compare(session, model, images, tolerance)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result.update(
        output=output,
        input_shape=list(images.shape),
        feature_dim=int(session.get_outputs()[0].shape[-1]),
        opset=opset_written,  # as read from the file
        cfg=cfg,
    )
    if latency_runs > 0:
        single = random_images(1, size, seed=2)
        timing = {"warmup": 3, "iters": latency_runs}
        with OtherCpuLoad() as others:
            with torch.inference_mode():
                result["torch_ms"] = 1000 * median_seconds(lambda: model(single), **timing)
            feed = {INPUT_NAME: single.numpy()}
            result["onnxruntime_ms"] = 1000 * median_seconds(
                lambda: session.run(None, feed), **timing
            )
        result["other_cpu_load"] = None if others.cpus is None else round(others.cpus, 2)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument(
        "--output", required=True, default=argparse.SUPPRESS, help="the ONNX file to write"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=4, help="images in the check batch"
    )
    parser.add_argument(
        "--opset", type=opset, default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} up to the newest the installed onnxruntime runs",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance", type=finite_at_least(0), default=DEFAULT_TOLERANCE,
        help="largest difference from PyTorch's features, relative to their largest magnitude "
        "(0 or more)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-runs", type=at_least(0), default=20, help="timed batch-1 runs (0: no timing)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def opset(text):
    """An argparse ``type``: an opset :func:`opset_range_error` accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if opset_range_error(value):
        raise argparse.ArgumentTypeError(opset_range_error(value).removeprefix("--opset "))
    return value


def run(args) -> dict:
    result = export(
        args.config_file,
        args.opts,
        args.output,
        batch_size=args.batch_size,
        opset=args.opset,
        tolerance=args.tolerance,
        latency_runs=args.latency_runs,
    )
    size = result["cfg"].INPUT.SIZE_TEST
    print(
        f"wrote {result['output']}: {INPUT_NAME} [N, 3, {', '.join(map(str, size))}]"
        f" float 0-255 -> {OUTPUT_NAME} [N, {result['feature_dim']}], opset {result['opset']}\n"
        f"check at batch {result['input_shape'][0]} (onnxruntime CPU vs PyTorch): max abs diff "
        f"{result['max_abs_diff']:.3g}, relative {result['relative_diff']:.3g}, "
        f"min cosine {result['min_cosine']:.8f}"
    )
    if "torch_ms" in result:
        print(
            f"CPU latency at batch 1 (median, {torch.get_num_threads()} threads): PyTorch "
            f"{result['torch_ms']:.2f} ms, onnxruntime {result['onnxruntime_ms']:.2f} ms "
            f"({result['torch_ms'] / result['onnxruntime_ms']:.2f}x)"
        )
        load = result.get("other_cpu_load")
        if load is not None and load >= OTHER_LOAD_WARNING:
            print(
                f"WARNING: other processes kept {load:.1f} CPUs busy while the latencies were "
                "measured: they (and their ratio) are unreliable; measure again on an idle machine"
            )
    return result


def main(argv=None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        report_user_errors(run, args)
    except ExportMismatchError as exc:
        print(f"error: the ONNX export failed its check, not written: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
