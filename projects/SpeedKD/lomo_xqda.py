"""LOMO + XQDA, the classical baseline of the speed/accuracy trade-off, on a FastReID dataset.

    python projects/SpeedKD/lomo_xqda.py --dataset SynthReIDSmall [--root DIR] [--output-dir DIR]
        [--device auto|cpu|cuda] [--batch-size N] [--rerank K1 K2 LAMBDA]

Extracts LOMO from every image, fits XQDA on the training split, ranks the gallery for every query
with the deep models' protocol and metrics (kdreid's ``evaluate_rank``), times the extraction and
projection per image (batch 1 latency, large-batch throughput), and writes
``OUTPUT_DIR/speed_accuracy.json``.
"""

import argparse
import math
import os

import cv2
import numpy as np
import torch

import kdreid  # noqa: F401  (repairs fastreid and registers SynthReID before the registry is used)

# isort: split
from fastreid.data.datasets import DATASET_REGISTRY

from kdreid.benchmark import device_name, time_calls, write_record
from kdreid.cli import at_least, check_output_dir, report_user_errors
from kdreid.engine.validation import registered_names
from kdreid.errors import ConfigError, UnreadableImageError
from kdreid.evaluation import evaluate_rank, re_ranking
from kdreid.progress import progress, show_progress_lines
from speed_kd.lomo import LOMO
from speed_kd.xqda import XQDA

LATENCY_IMAGES = 20  # images timed one by one for the batch-1 latency
REPEATS = 3  # timed runs of the throughput batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--dataset",
        default="SynthReIDSmall",
        help="a FastReID dataset name (default SynthReIDSmall)",
    )
    parser.add_argument(
        "--root",
        default=os.getenv("FASTREID_DATASETS", "datasets"),
        help="datasets folder (default: $FASTREID_DATASETS or datasets/)",
    )
    parser.add_argument(
        "--output-dir", default="logs/SpeedKD/lomo_xqda", help="default logs/SpeedKD/lomo_xqda"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--batch-size", type=at_least(1), default=64, help="extraction and throughput (default 64)"
    )
    parser.add_argument(
        "--rerank",
        nargs=3,
        type=float,
        action=RerankValues,
        metavar=("K1", "K2", "LAMBDA"),
        help="also k-reciprocal re-ranking of the XQDA distances (FastReID's defaults: 20 6 0.3)",
    )
    return parser.parse_args(argv)


class RerankValues(argparse.Action):
    """``--rerank K1 K2 LAMBDA``: K1 and K2 whole numbers of at least 1, LAMBDA in [0, 1],
    refused with the command line, not by ``re_ranking`` after the whole extraction and fit."""

    def __call__(self, parser, namespace, values, option_string=None):
        k1, k2, lam = values
        for name, k in (("K1", k1), ("K2", k2)):
            if not (math.isfinite(k) and k >= 1 and k == int(k)):
                raise argparse.ArgumentError(
                    self, f"{name} must be a whole number of at least 1, got {k:g}"
                )
        if not 0 <= lam <= 1:
            raise argparse.ArgumentError(self, f"LAMBDA must be between 0 and 1, got {lam:g}")
        setattr(namespace, self.dest, values)


def read_images(paths: list[str]) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB batch; images of another size than the first are resized to it."""
    images = []
    for path in paths:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise UnreadableImageError(f"Cannot read image '{path}'; expected a JPEG/PNG file.")
        if images and image.shape != images[0].shape:
            image = cv2.resize(image, images[0].shape[1::-1], interpolation=cv2.INTER_AREA)
        images.append(image[:, :, ::-1])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def extract(extractor, paths, device, batch_size, desc) -> torch.Tensor:
    """(len(paths), dim) float32 LOMO descriptors on the CPU, in batches with a progress bar."""
    features = []
    with torch.inference_mode():
        for start in progress(range(0, len(paths), batch_size), desc=desc, unit="batch"):
            batch = read_images(paths[start : start + batch_size]).to(device)
            features.append(extractor(batch).cpu())
    return torch.cat(features)


def time_per_image(extractor, projection, images, device, batch_size) -> tuple[float, float]:
    """Median batch-1 latency (ms) and throughput (images/s) of extraction + projection.

    Args:
        extractor: a :class:`LOMO`.
        projection: (dim, r) float32 XQDA ``W`` on ``device``.
        images: (N, 3, H, W) uint8 images on ``device``; repeated to fill ``batch_size``.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: the throughput batch.
    """

    def embed(x):
        return extractor(x) @ projection

    embed(images[:1])  # warm-up
    latencies = [  # each image timed once
        time_calls(lambda x=images[i : i + 1]: embed(x), iters=1, device=device)[0][0]
        for i in range(len(images))
    ]
    batch = images.repeat((batch_size + len(images) - 1) // len(images), 1, 1, 1)[:batch_size]
    batch_times, _ = time_calls(lambda: embed(batch), warmup=1, iters=REPEATS, device=device)
    return float(np.median(latencies) * 1000), float(batch_size / np.median(batch_times))


def _metrics(distmat, q_pids, g_pids, q_cams, g_cams):
    cmc, all_ap, all_inp = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams)
    return {
        "mAP": float(np.mean(all_ap) * 100),
        **{f"Rank-{k}": float(cmc[min(k, len(cmc)) - 1] * 100) for k in (1, 5, 10)},
        "mINP": float(np.mean(all_inp) * 100),
    }


def run(
    dataset: str,
    root: str = "datasets",
    output_dir: str = "logs/SpeedKD/lomo_xqda",
    device: str = "auto",
    batch_size: int = 64,
    rerank=None,
) -> dict:
    """Fit and evaluate LOMO + XQDA on ``dataset``, time it, write and return the JSON record.

    With ``rerank = (k1, k2, lambda)`` the XQDA distances are also re-ranked (k-reciprocal, as the
    deep models' ``TEST.RERANK``); the record's ``metrics`` are then the re-ranked ones, and
    ``metrics_without_rerank`` keeps the others.

    Raises:
        ConfigError: unknown dataset or device, or a batch size below 1.
        kdreid.errors.DatasetNotFoundError: the dataset's folder is not under ``root``.
        kdreid.errors.OutputDirError: ``output_dir`` cannot be created or written (checked first).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but torch sees no GPU; use --device cpu or auto")
    try:
        dataset_cls = DATASET_REGISTRY.get(dataset)
    except KeyError:
        names = ", ".join(registered_names(DATASET_REGISTRY))
        raise ConfigError(f"Unknown dataset {dataset!r}; registered datasets: {names}") from None
    check_output_dir(output_dir)  # not after the whole run, when the record is written
    data = dataset_cls(root=root)
    extractor = LOMO()

    train_paths, train_pids, _ = zip(*data.train)
    train = extract(extractor, list(train_paths), device, batch_size, "LOMO train")
    xqda = XQDA().fit(train, np.asarray(train_pids))
    del train
    projection = torch.from_numpy(xqda.W).float().to(device)
    splits = {}
    for name, items in (("query", data.query), ("gallery", data.gallery)):
        paths, pids, camids = zip(*items)
        features = extract(extractor, list(paths), device, batch_size, f"LOMO {name}")
        splits[name] = (xqda.transform(features), np.asarray(pids), np.asarray(camids))
    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = splits["query"], splits["gallery"]
    q_g = xqda.distance(qf, gf, projected=True)
    metrics = _metrics(q_g, q_pids, g_pids, q_cams, g_cams)
    plain_metrics = None
    if rerank is not None:
        k1, k2, lam = rerank
        q_q = xqda.distance(qf, qf, projected=True)
        g_g = xqda.distance(gf, gf, projected=True)
        reranked = re_ranking(q_g, q_q, g_g, k1=int(k1), k2=int(k2), lambda_value=lam)
        plain_metrics, metrics = metrics, _metrics(reranked, q_pids, g_pids, q_cams, g_cams)

    sample = read_images([p for p, _, _ in data.query[:LATENCY_IMAGES]]).to(device)
    with torch.inference_mode():
        latency_ms, throughput = time_per_image(extractor, projection, sample, device, batch_size)
    record = {
        "name": "LOMO+XQDA",
        "kind": "classical",
        "distilled": False,
        "config": None,
        "weights": None,
        "dataset": dataset,
        "device": device,
        "device_name": device_name(device),
        "input_size": [extractor.height, extractor.width],
        "params": xqda.num_parameters,
        "macs": None,
        "latency_ms": latency_ms,
        "throughput": throughput,
        "throughput_batch": batch_size,
        "metrics": metrics,
    }
    if plain_metrics is not None:
        record["name"] = "LOMO+XQDA +re-ranking"
        record["metrics_without_rerank"] = plain_metrics
    write_record(os.path.join(output_dir, "speed_accuracy.json"), record)
    return record


def main(argv=None):
    args = parse_args(argv)
    show_progress_lines()
    record = report_user_errors(
        run, args.dataset, args.root, args.output_dir, args.device, args.batch_size, args.rerank
    )
    m = record["metrics"]
    print(
        f"LOMO+XQDA on {record['dataset']} ({record['device_name']}): "
        + ", ".join(f"{k} {v:.1f}%" for k, v in m.items())
        + f"; {record['params']:,} learned numbers; "
        f"latency {record['latency_ms']:.2f} ms/image (batch 1), "
        f"throughput {record['throughput']:.0f} images/s (batch {record['throughput_batch']})"
    )


if __name__ == "__main__":
    main()
