"""Training speed through the engine: FastReID's step against kdreid's, on a user's kind of data.

    python benchmarks/training_speed.py [--config configs/Market1501/bagtricks_R50.yml]
        [--dataset SynthReIDSmall] [--size 256x128] [--batch 32] [--iters 4] [--workers N]
        [--device cpu|cuda] [--gemm-sizes N ...] [--output-dir logs/training_speed]

One run, on ``--device``, builds the engine's ``Trainer`` from ``--config`` (random weights, no
ImageNet start; ``--dataset`` in place of the config's, read from JPEG files by FastReID's loader
with its augmentations and ``--workers`` worker processes, as ``train_net.py`` trains), and times
``--iters`` training iterations after one warm-up iteration, each a ``run_step`` of the engine's
loop: the batch from the loader (its wait is ``data_time``), forward, losses, backward, optimizer
step. Four variants, built from the same seed so that they see the same images in the same
order and start from the same weights, each in a fresh process:

- **FastReID's step** (the reference): FastReID's optimizer over its flat ``ContiguousParams``
  buffers, weights in the default (NCHW) layout, float32; how kdreid trained before.
- **kdreid float32, NCHW**: ``Trainer.build_optimizer`` (torch's multi-tensor updates, same
  rule) alone: its losses must equal the reference's to float rounding.
- **kdreid float32**: with channels-last weights too (``KDREID.CHANNELS_LAST``, the default).
- **kdreid mixed**: the same under ``SOLVER.AMP.ENABLED`` (bfloat16 autocast on the CPU, float16
  with gradient scaling on CUDA).

For each: images/s, the median ``data_time``, the fraction of the GEMM peak of the variant's type
measured in the same run (the best ``torch.mm`` rate over ``--gemm-sizes``; a training step's
FLOPs counted by ``torch.utils.flop_counter``), and the total loss of every iteration next to the
reference's (the largest relative difference). Also the data pipeline alone: images/s of the
training loader with ``--workers`` workers and with none (decode and augmentation in one process,
the figure per core), with no training beside it.

Writes ``<output-dir>/training_speed.json`` and ``training_speed.md`` (atomically).
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))  # read at import

import kdreid  # noqa: E402, F401  (repairs fastreid before it is imported)

# isort: split
from fastreid.engine import DefaultTrainer  # noqa: E402
from fastreid.utils.env import seed_all_rng  # noqa: E402
from fastreid.utils.events import EventStorage  # noqa: E402
from mixed_precision import gemm_rates, image_size, machine, training_flops  # noqa: E402

from harness.runs import main_of_runs  # noqa: E402
from kdreid.benchmark import OtherCpuLoad, busy_warning, write_record  # noqa: E402
from kdreid.checkpoint import atomic_write  # noqa: E402
from kdreid.cli import at_least, check_output_dir  # noqa: E402
from kdreid.config import get_cfg, merge_from_file  # noqa: E402
from kdreid.engine import Trainer  # noqa: E402
from kdreid.engine.trainer import stop_prefetching  # noqa: E402
from kdreid.engine.validation import check_config  # noqa: E402
from kdreid.errors import UserInputError  # noqa: E402

JSON_NAME, MD_NAME = "training_speed.json", "training_speed.md"
DEFAULT_GEMM = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
SEED = 0


class FastReIDStepTrainer(Trainer):
    """kdreid's ``Trainer`` with FastReID's own optimizer (flat ``ContiguousParams`` buffers),
    for weights in the default layout: the training step as FastReID runs it."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        return DefaultTrainer.build_optimizer(cfg, model)


VARIANTS = {
    # key: (name, trainer, channels-last, mixed precision)
    "fastreid": (
        "FastReID's step (flat buffers, NCHW), float32",
        FastReIDStepTrainer,
        False,
        False,
    ),
    "foreach": ("kdreid float32 (foreach, NCHW)", Trainer, False, False),
    "channels_last": ("kdreid float32 (foreach, channels-last)", Trainer, True, False),
    "mixed": ("kdreid mixed (foreach, channels-last, autocast)", Trainer, True, True),
}
"""``--variants`` keys; ``fastreid`` is the reference."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserInputError(f"{message} (see --help)")


def parse_args(argv=None):
    parser = _Parser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", default="configs/Market1501/bagtricks_R50.yml")
    parser.add_argument("--dataset", default="SynthReIDSmall", help="DATASETS.NAMES of the run")
    parser.add_argument("--size", type=image_size, default=(256, 128), help="HxW")
    parser.add_argument("--batch", type=at_least(2), default=32, help="SOLVER.IMS_PER_BATCH")
    parser.add_argument("--iters", type=at_least(1), default=4, help="timed iterations")
    parser.add_argument(
        "--workers", type=at_least(0), default=None, help="DATALOADER.NUM_WORKERS (the config's)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        help="variants to time, in this order (the reference, fastreid, is always timed)",
    )
    parser.add_argument("--gemm-sizes", type=at_least(64), nargs="+", default=None)
    parser.add_argument("--output-dir", default="logs/training_speed")
    parser.add_argument("--one-variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if not os.path.isfile(os.path.join(REPO, args.config)):
        parser.error(f"--config {args.config}: no such file")
    args.gemm_sizes = args.gemm_sizes or DEFAULT_GEMM[args.device]
    if "fastreid" not in args.variants:
        args.variants.append("fastreid")
    return args


def build_cfg(args, channels_last=True, mixed=False):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, args.config))
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.BACKBONE.PRETRAIN = False  # random weights time the same
    cfg.INPUT.SIZE_TRAIN = cfg.INPUT.SIZE_TEST = list(args.size)
    cfg.DATASETS.NAMES = cfg.DATASETS.TESTS = (args.dataset,)
    cfg.SOLVER.IMS_PER_BATCH = args.batch
    if args.workers is not None:
        cfg.DATALOADER.NUM_WORKERS = args.workers
    cfg.KDREID.CHANNELS_LAST = channels_last
    cfg.SOLVER.AMP.ENABLED = mixed
    cfg.OUTPUT_DIR = os.path.join(args.output_dir, "trainer")  # its writers' files
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    check_config(cfg)
    return cfg


def loader_speed(cfg, batches):
    """Images/s of the training loader alone (after its first batch), and the number of
    identities of its training set."""
    seed_all_rng(SEED)
    loader = Trainer.build_train_loader(cfg)
    try:
        batches_iter = iter(loader)
        next(batches_iter)
        start = time.perf_counter()
        for _ in range(batches):
            next(batches_iter)
        seconds = time.perf_counter() - start
    finally:
        stop_prefetching(loader)
    return cfg.SOLVER.IMS_PER_BATCH * batches / seconds, loader.dataset.num_classes


def train_variant(cfg, trainer_cls, iters, device):
    """Times ``iters`` iterations of the engine's loop after one warm-up iteration."""
    seed_all_rng(SEED)
    torch.manual_seed(SEED)
    trainer = trainer_cls(cfg)
    loop = trainer._trainer
    steps = []
    try:
        with EventStorage(0) as storage:
            for i in range(iters + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                loop.run_step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                if i > 0:
                    steps.append(seconds)
                storage.step()
            flush = getattr(loop, "flush_metrics", None)  # kdreid's loop stores in batches
            if flush is not None:
                flush()
            losses = [float(v) for v, _ in storage.history("total_loss").values()]
            data_times = [float(v) for v, _ in storage.history("data_time").values()][1:]
    finally:
        trainer.close()
    weight = next(p for p in loop.model.parameters() if p.dim() == 4)
    return {
        "step_s": statistics.median(steps),
        "steps_s": steps,
        "images_per_s": cfg.SOLVER.IMS_PER_BATCH / statistics.median(steps),
        "data_time_s": statistics.median(data_times),
        "losses": losses,
        "weights_channels_last": weight.is_contiguous(memory_format=torch.channels_last)
        and not weight.is_contiguous(),
    }


def markdown(result):
    gemm = result["gemm"]
    lines = [
        f"Training speed on {result['device_name']} (torch {result['torch']}, "
        f"{result['threads']} threads): {result['config']} at {result['size'][0]}x"
        f"{result['size'][1]}, batch {result['batch']}, {result['workers']} loader workers, "
        f"{result['dataset']} (JPEG files); median of {result['iters']} iterations after one "
        "warm-up. GEMM peak (torch.mm) "
        + ", ".join(f"{k} {gemm[k]:.0f} GFLOP/s" for k in gemm if k not in ("sizes", "by_size"))
        + f"; {result['train_gflops_per_image']:.1f} GFLOP per image per training step.",
        "",
        "| variant | images/s | vs FastReID's step | fraction of GEMM peak | data_time (s) | "
        "loss vs reference: first iteration, largest (relative) |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in result["variants"].items():
        diffs = figures["loss_differences"]
        lines.append(
            f"| {name} | {figures['images_per_s']:.2f} | {figures['speedup']:.2f}x | "
            f"{figures['fraction_of_gemm']:.0%} of {figures['dtype']} | "
            f"{figures['data_time_s']:.3f} | {diffs[0]:.1e}, {max(diffs):.1e} |"
        )
    loader = result["loader"]
    lines += [
        "",
        f"Data pipeline alone: {loader['workers_images_per_s']:.0f} images/s with "
        f"{result['workers']} workers, {loader['main_images_per_s']:.0f} images/s decoding and "
        "augmenting in one process.",
    ]
    if result.get("other_cpu_load") and result["other_cpu_load"] >= 0.25:
        lines.append(
            f"\nOther processes kept {result['other_cpu_load']} CPUs busy: figures unreliable."
        )
    return "\n".join(lines)


def quiet_engine_logs():
    """The engine's INFO lines (the model, the dataset tables) go nowhere: the script prints
    its own."""
    for name in ("fastreid", "kdreid"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)  # so that the Trainer sets up no console logger
        logger.propagate = False
        logger.handlers = [logging.NullHandler()]


def loss_differences(losses, reference):
    """Relative difference of each iteration's total loss from the reference's."""
    return [abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True)]


def isolated_variant(argv, key, output_dir):
    """One variant timed in a fresh process (:func:`one_variant`): in one process the variant
    timed first ran 5-20% slower than the same variant timed later (the allocator's and the
    loaders' state), whatever it was."""
    path = os.path.join(output_dir, f"variant_{key}.json")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = [sys.executable, os.path.abspath(__file__), *argv, "--one-variant", key]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"variant {key} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    with open(path) as f:
        return json.load(f)


def one_variant(args):
    """The ``--one-variant`` process: time it, write ``variant_<key>.json``."""
    _, trainer_cls, channels_last, mixed = VARIANTS[args.one_variant]
    cfg = build_cfg(args, channels_last, mixed)
    figures = train_variant(cfg, trainer_cls, args.iters, torch.device(args.device))
    write_record(os.path.join(args.output_dir, f"variant_{args.one_variant}.json"), figures)


def main(argv=None):
    args = parse_args(argv)
    quiet_engine_logs()
    if args.one_variant:
        return one_variant(args)
    device = torch.device(args.device)
    check_output_dir(args.output_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    result = machine(device)
    result.update(
        config=args.config, dataset=args.dataset, size=list(args.size), batch=args.batch,
        iters=args.iters, order=args.variants, busy_warning=busy_warning(),
    )  # fmt: skip
    print(f"Training speed on {result['device_name']}, torch {result['torch']}", flush=True)
    if result["busy_warning"]:
        print(result["busy_warning"], flush=True)
    base = build_cfg(args)
    result["workers"] = base.DATALOADER.NUM_WORKERS
    with OtherCpuLoad() as others:
        result["gemm"] = gemm_rates(device, args.gemm_sizes, time_budget=2.0)
        print("  data pipeline alone", flush=True)
        batches = max(4, args.iters)
        main_cfg = base.clone()
        main_cfg.DATALOADER.NUM_WORKERS = 0
        with_workers, num_classes = loader_speed(base, batches)
        result["loader"] = {
            "workers_images_per_s": with_workers,
            "main_images_per_s": loader_speed(main_cfg, batches)[0],
        }
        flops_cfg = base.clone()
        flops_cfg.MODEL.HEADS.NUM_CLASSES = num_classes
        flops = training_flops(flops_cfg, device)
        result["train_gflops_per_image"] = flops / 1e9
        result["variants"] = {}
        for key in args.variants:
            name = VARIANTS[key][0]
            print(f"  {name}", flush=True)
            figures = isolated_variant(argv, key, args.output_dir)
            figures["dtype"] = result["mixed_dtype"] if VARIANTS[key][3] else "float32"
            achieved = flops * figures["images_per_s"] / 1e9
            figures["gflops"] = achieved
            figures["fraction_of_gemm"] = achieved / result["gemm"][figures["dtype"]]
            result["variants"][name] = figures
            print(
                f"    {figures['images_per_s']:.2f} images/s, data_time "
                f"{figures['data_time_s']:.3f} s, losses "
                + " ".join(f"{v:.4f}" for v in figures["losses"]),
                flush=True,
            )
    result["other_cpu_load"] = None if others.cpus is None else round(others.cpus, 2)
    reference = result["variants"][VARIANTS["fastreid"][0]]
    for figures in result["variants"].values():
        figures["speedup"] = figures["images_per_s"] / reference["images_per_s"]
        figures["loss_differences"] = loss_differences(figures["losses"], reference["losses"])
    write_record(os.path.join(args.output_dir, JSON_NAME), result)
    text = markdown(result)
    atomic_write(os.path.join(args.output_dir, MD_NAME), lambda f: f.write(text + "\n"), mode="w")
    print("\n" + text)
    return result


if __name__ == "__main__":
    main_of_runs(main)
