"""Mixed precision against float32: training and extraction speed, and what it does to descriptors.

    python benchmarks/mixed_precision.py [--device cpu|cuda] [--models R18 R50] [--size 256x128]
        [--batch N] [--steps 5] [--time-budget 2] [--gemm-sizes N ...]
        [--config F --weights W | --train-config F --train-epochs 6]
        [--output-dir logs/mixed_precision]

Mixed precision is what ``SOLVER.AMP.ENABLED`` trains in and ``KDREID.EVAL_AUTOCAST`` extracts
in: float16 with gradient scaling on CUDA, bfloat16 autocast on the CPU
(:func:`kdreid.config.autocast_dtype`). One run, on ``--device``, reports:

1. **Training images/s** of each model of ``--models`` (``R18``: FastReID's bag-of-tricks
   Baseline of ``configs/Synthetic/bagtricks_R18.yml``; ``R50``: the ResNet-50 one of
   ``configs/Market1501/bagtricks_R50.yml``), random weights (no ImageNet start), at ``--size``,
   ``--num-classes`` identities: the engine's own step, kdreid's ``TrainLoop.run_step``
   in float32 and ``MixedPrecisionLoop.run_step`` mixed (forward and losses under
   autocast, backward, the config's optimizer as ``Trainer.build_optimizer`` builds it), on one
   synthetic in-memory batch of ``--batch`` images (``DATALOADER.NUM_INSTANCE`` per identity),
   refreshed before every step, untimed (FastReID normalises its input in place). Median of
   ``--steps`` steps after one warm-up step (:func:`kdreid.benchmark.time_calls`).
2. **Extraction images/s** of the same networks in eval mode with channels-last weights, as
   ``--eval-only`` runs them (``KDREID.CHANNELS_LAST``): float32, and mixed through
   ``AutocastForward`` (:func:`kdreid.benchmark.measure_throughput`, batch ``--batch``).
3. **The descriptor's effect** on a trained model: its test set (SynthReID) extracted by
   kdreid's ``Trainer.test`` with ``KDREID.EVAL_AUTOCAST`` False, then True (``KDREID.CPU_AMP
   always``, so that the CPU computes bfloat16 even where it only emulates it), channels-last: the
   relative difference ``||f_mixed - f_fp32|| / ||f_fp32||`` of every descriptor (max, median),
   and mAP / Rank-1 / mINP of both. The model is ``--config`` with ``--weights``, or else one
   this script trains into ``<output-dir>/trained`` (``--train-config``, by default
   ``configs/Synthetic/bagtricks_R18.yml`` on SynthReID-small, ``--train-epochs`` epochs, seed 0,
   through :mod:`harness.speedkd`; a finished run is reused, one of other settings refused).
4. The machine: the CPU's name, ``torch.backends.cpu.get_cpu_capability()``,
   :func:`kdreid.config.native_bfloat16`, torch's version and threads; the GEMM peak
   (the best of ``torch.mm`` of two square matrices of each of ``--gemm-sizes``: the peak this
   machine's GEMM reaches) in float32 and in the mixed type, and
   what fraction of it each training step and extraction reaches (multiply-adds counted by
   ``torch.utils.flop_counter``: convolutions and matrix products). Where the CPU has no native
   bfloat16 units (AVX-512 BF16, AMX) torch emulates bfloat16 (``_slow_conv2d``, a scalar GEMM),
   many times slower than float32: the output says so next to the figures, which are reported as
   measured.

Writes ``<output-dir>/mixed_precision.json`` and ``mixed_precision.md`` (atomically) and prints
the table. Datasets come from ``$FASTREID_DATASETS`` (default ``datasets/``; SynthReID is
generated there on first use).

Defaults: ``--batch`` 8 on the CPU, 32 on CUDA. On a 2-core AMD EPYC with AVX-512 BF16 the whole
run took about 3 minutes (2 of them training the descriptor's model). On a CPU that emulates
bfloat16 (AVX2 only) each bfloat16 step is several times slower than float32 (ResNet-50: 5.5 s
against 0.64 s per image, measured on such a CPU), and the run takes several times longer; per-
image figures on a CPU change little with the batch beyond a few images. On CUDA, 32 is a batch
at which a GPU is busy.
"""

import argparse
import contextlib
import itertools
import os
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))  # read at import

import kdreid  # noqa: E402, F401  (repairs fastreid before it is imported)

# isort: split
from fastreid.utils.events import EventStorage  # noqa: E402

from harness.runs import check_reuse, main_of_runs  # noqa: E402
from harness.speedkd import train_and_record  # noqa: E402
from kdreid.benchmark import (  # noqa: E402
    OTHER_LOAD_WARNING,
    OtherCpuLoad,
    busy_warning,
    count_macs,
    count_parameters,
    device_name,
    measure_throughput,
    median_seconds,
    time_calls,
    write_record,
)
from kdreid.checkpoint import atomic_write  # noqa: E402
from kdreid.cli import at_least, build_inference_model, check_output_dir, finite_above  # noqa: E402
from kdreid.config import autocast_dtype, get_cfg, merge_from_file, native_bfloat16  # noqa: E402
from kdreid.engine import Trainer  # noqa: E402
from kdreid.engine.trainer import AutocastForward, MixedPrecisionLoop, TrainLoop  # noqa: E402
from kdreid.engine.validation import check_config  # noqa: E402
from kdreid.errors import UserInputError  # noqa: E402

MODELS = {
    "R18": ("ResNet-18", "configs/Synthetic/bagtricks_R18.yml"),
    "R50": ("ResNet-50", "configs/Market1501/bagtricks_R50.yml"),
}
"""``--models`` name -> (label, config): FastReID's bag-of-tricks Baseline."""

TRAIN_CONFIG = "configs/Synthetic/bagtricks_R18.yml"
"""What the descriptor section trains when no ``--weights`` are given."""

TRAIN_SEED = 0
JSON_NAME, MD_NAME = "mixed_precision.json", "mixed_precision.md"
DEFAULT_BATCH = {"cpu": 8, "cuda": 32}
DEFAULT_GEMM = {"cpu": (1024, 2048), "cuda": (4096, 8192)}
METRICS = ("mAP", "Rank-1", "mINP")


# --- the command line --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Bad flags are bad input: one ``error:`` line and status 2 (:func:`main_of_runs`), not
    argparse's usage lines."""

    def error(self, message):
        raise UserInputError(f"{message} (see --help)")


def image_size(text):
    """An argparse ``type``: ``HxW``, both integers of at least 16 pixels."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 256x128), got {text!r}") from None
    if min(height, width) < 16:
        raise argparse.ArgumentTypeError(f"height and width must be 16 or more, got {text!r}")
    return height, width


def add_model_arguments(parser, purpose):
    """The flags this script shares with ``inference_speed.py``: ``--gemm-sizes``, and the trained
    model (``--config`` and ``--weights``, or ``--train-config`` and ``--train-epochs``) that the
    ``purpose`` section extracts."""
    positive = at_least(1)
    parser.add_argument(
        "--gemm-sizes", type=positive, nargs="+", default=None, metavar="N",
        help="square matrices of the GEMM peak, the best rate of them (default "
        f"{' '.join(map(str, DEFAULT_GEMM['cpu']))} on the CPU, "
        f"{' '.join(map(str, DEFAULT_GEMM['cuda']))} on CUDA)",
    )  # fmt: skip
    parser.add_argument("--config", default=None, help=f"the trained model's config ({purpose})")
    parser.add_argument("--weights", default=None, help="its checkpoint (with --config)")
    parser.add_argument(
        "--train-config", default=TRAIN_CONFIG,
        help=f"without --weights: the config trained for the {purpose} (default {TRAIN_CONFIG})",
    )  # fmt: skip
    parser.add_argument(
        "--train-epochs", type=positive, default=6, help="without --weights (default 6)"
    )


def check_model_arguments(args):
    """The checks of :func:`add_model_arguments`' flags and ``--device`` (in place: paths made
    absolute, the GEMM sizes' default for the device).

    Raises:
        UserInputError: naming the flag.
    """
    args.output_dir = os.path.abspath(args.output_dir)
    if (args.config is None) != (args.weights is None):
        raise UserInputError("--config and --weights go together: give both, or neither")
    for flag, path in (("--config", args.config), ("--weights", args.weights)):
        if path is not None and not os.path.isfile(path):
            raise UserInputError(f"{flag}: no file '{path}'")
    # The training runs from the repository root: a path from here, else from there.
    train_config = args.train_config
    if not os.path.isfile(train_config):
        train_config = os.path.join(REPO, train_config)
    if not os.path.isfile(train_config):
        raise UserInputError(f"--train-config: no file '{args.train_config}'")
    args.train_config = os.path.abspath(train_config)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda, but torch sees no CUDA device")
    args.gemm_sizes = args.gemm_sizes or list(DEFAULT_GEMM[args.device])


def parse_args(argv=None):
    parser = _Parser(description=" ".join(__doc__.split("\n\n")[0].split()))
    positive = at_least(1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS),
        help="the networks timed (default: all; R18 and R50 bag-of-tricks Baselines)",
    )  # fmt: skip
    parser.add_argument(
        "--size", type=image_size, default=(256, 128), metavar="HxW", help="default 256x128"
    )
    parser.add_argument(
        "--batch", type=positive, default=None,
        help=f"training and extraction batch (default: {DEFAULT_BATCH['cpu']} on the CPU, "
        f"{DEFAULT_BATCH['cuda']} on CUDA)",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=positive, default=751, help="identities (Market-1501: 751)"
    )
    parser.add_argument("--steps", type=positive, default=5, help="timed training steps")
    parser.add_argument(
        "--time-budget", type=finite_above(0), default=2.0,
        help="seconds of timed calls per extraction and GEMM measurement (at least 3 calls)",
    )  # fmt: skip
    add_model_arguments(parser, "descriptor")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "logs", "mixed_precision"))
    args = parser.parse_args(argv)
    check_model_arguments(args)
    args.batch = args.batch or DEFAULT_BATCH[args.device]
    return args


# --- measurements ------------------------------------------------------------------------------


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def conv_dtypes(model):
    """The set of dtypes the model's convolutions return while the block runs (what autocast
    really computed in)."""
    seen = set()

    def hook(_module, _inputs, output):
        seen.add(dtype_name(output.dtype))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def machine(device):
    """The device, the CPU's capabilities and torch's settings, as JSON-ready values."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_name": device_name("cpu"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bfloat16": native_bfloat16(),
        "mixed_dtype": dtype_name(autocast_dtype(device.type)),
        "emulated": device.type == "cpu" and not native_bfloat16(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda_matmul_tf32": (
            torch.backends.cuda.matmul.allow_tf32 if device.type == "cuda" else None
        ),
    }


def gemm_rates(device, sizes, time_budget):
    """The GEMM peak: the best GFLOP/s of ``torch.mm`` of two n x n matrices over ``sizes``, in
    float32 and the mixed type (and each size's rate, under ``by_size``)."""
    rates = {"sizes": list(sizes), "by_size": {}}
    generator = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.float32, autocast_dtype(device.type)):
        name = dtype_name(dtype)
        for n in sizes:
            a, b = (torch.rand(n, n, generator=generator, device=device).to(dtype) for _ in "ab")
            seconds = median_seconds(
                lambda a=a, b=b: torch.mm(a, b), warmup=1, time_budget_s=time_budget, device=device
            )
            rates["by_size"].setdefault(str(n), {})[name] = 2 * n**3 / seconds / 1e9
        rates[name] = max(r[name] for r in rates["by_size"].values())
    return rates


def model_config(config, size, num_classes, device):
    """The config of a timed network: no ImageNet weights, ``size`` inputs, ``num_classes``."""
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, config))
    check_config(cfg)
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.BACKBONE.PRETRAIN = False  # random weights time the same
    cfg.MODEL.HEADS.NUM_CLASSES = num_classes
    cfg.INPUT.SIZE_TRAIN = cfg.INPUT.SIZE_TEST = list(size)
    return cfg


def synthetic_batch(cfg, batch, device, seed=0):
    """A training batch: random 0-255 images, ``DATALOADER.NUM_INSTANCE`` images per identity."""
    generator = torch.Generator().manual_seed(seed)
    height, width = cfg.INPUT.SIZE_TRAIN
    images = (255 * torch.rand(batch, 3, height, width, generator=generator)).to(device)
    per_id = max(1, min(cfg.DATALOADER.NUM_INSTANCE, batch // 2))
    ids = torch.arange(batch) // per_id % cfg.MODEL.HEADS.NUM_CLASSES
    return {"images": images, "targets": ids.to(device)}


def training_flops(cfg, device):
    """FLOPs per image of one forward and backward pass (the optimizer is not counted)."""
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).train()
    batch = synthetic_batch(cfg, 4, device)
    with EventStorage(0), FlopCounterMode(display=False) as counter:
        sum(model(batch).values()).backward()
    return counter.get_total_flops() / 4


def training_speed(cfg, device, batch_size, steps, mixed):
    """Images/s of the engine's training step on a fresh model: ``TrainLoop`` in float32,
    ``MixedPrecisionLoop`` mixed, on one in-memory batch refreshed (untimed) before each step."""
    torch.manual_seed(0)
    model = Trainer.build_model(cfg)
    optimizer, param_wrapper = Trainer.build_optimizer(cfg, model)
    batch = synthetic_batch(cfg, batch_size, device)
    source = batch["images"].clone()
    data = itertools.repeat(batch)
    if mixed:
        loop = MixedPrecisionLoop(model, data, optimizer, param_wrapper, device.type)
    else:
        loop = TrainLoop(model, data, optimizer, param_wrapper)

    def refresh():
        batch["images"].copy_(source)

    with EventStorage(0):
        refresh()
        with conv_dtypes(model) as seen:
            loop.run_step()  # the warm-up step: allocator, cuDNN autotuning
        times, _ = time_calls(loop.run_step, iters=steps, device=device, before=refresh)
    median = statistics.median(times)
    return {
        "images_per_s": batch_size / median,
        "step_s": median,
        "steps": len(times),
        "conv_dtypes": sorted(seen),
    }


def extraction_speed(model, size, device, batch_size, time_budget, mixed):
    """Images/s of the eval-mode network (channels-last) on ``size`` images, float32 or through
    ``AutocastForward``."""
    height, width = size
    generator = torch.Generator(device=device).manual_seed(0)
    images = 255 * torch.rand(batch_size, 3, height, width, generator=generator, device=device)
    extractor = AutocastForward(model, device.type) if mixed else model
    with conv_dtypes(model) as seen, torch.inference_mode():
        extractor.eval()(images[:1].clone())
    throughput = measure_throughput(extractor, images, warmup=1, time_budget_s=time_budget)
    return {"images_per_s": throughput, "conv_dtypes": sorted(seen)}


def model_speed(name, args, device, gemm, mixed_dtype):
    """Training and extraction figures of one network, both precisions, and their ratios."""
    label, config = MODELS[name]
    cfg = model_config(config, args.size, args.num_classes, device)
    flops = training_flops(cfg, device)
    out = {"label": label, "config": config, "train_gflops_per_image": flops / 1e9}
    training = {}
    for precision, mixed in (("float32", False), ("mixed", True)):
        print(f"  {name} training, {precision}", flush=True)
        training[precision] = training_speed(cfg, device, args.batch, args.steps, mixed)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    model.to(memory_format=torch.channels_last)  # as --eval-only (KDREID.CHANNELS_LAST)
    out["params"] = count_parameters(model)
    example = torch.rand(1, 3, *cfg.INPUT.SIZE_TEST, device=device) * 255
    out["eval_macs_per_image"] = count_macs(model, example)
    extraction = {}
    for precision, mixed in (("float32", False), ("mixed", True)):
        print(f"  {name} extraction, {precision}", flush=True)
        extraction[precision] = extraction_speed(
            model, cfg.INPUT.SIZE_TEST, device, args.batch, args.time_budget, mixed
        )
    for stage, figures, flops_per_image in (
        ("training", training, flops),
        ("extraction", extraction, 2 * out["eval_macs_per_image"]),
    ):
        for precision, dtype in (("float32", "float32"), ("mixed", mixed_dtype)):
            achieved = flops_per_image * figures[precision]["images_per_s"] / 1e9
            figures[precision]["dtype"] = dtype
            figures[precision]["gflops"] = achieved
            figures[precision]["fraction_of_gemm"] = achieved / gemm[dtype]
        figures["mixed_over_float32"] = (
            figures["mixed"]["images_per_s"] / figures["float32"]["images_per_s"]
        )
        out[stage] = figures
    return out


# --- the descriptor ----------------------------------------------------------------------------


class _KeepingTrainer(Trainer):
    """kdreid's ``Trainer`` whose ``test`` keeps its evaluators, so that the descriptors it
    extracted can be read back."""

    evaluators = []

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, evaluator = super().build_evaluator(cfg, dataset_name, output_dir)
        cls.evaluators.append(evaluator)
        return data_loader, evaluator


def extract_and_evaluate(cfg, model, eval_autocast):
    """``Trainer.test`` of ``model`` with ``KDREID.EVAL_AUTOCAST`` set to ``eval_autocast``.

    Returns:
        (dict, Tensor, ndarray, list[str], float): its metrics (percent), the (N, D) float32
        descriptors of the query then the gallery, their identities, the dtypes the convolutions
        returned, and the seconds it took (extraction and ranking).
    """
    cfg = cfg.clone()
    cfg.defrost()
    cfg.KDREID.EVAL_AUTOCAST = eval_autocast
    cfg.freeze()
    _KeepingTrainer.evaluators.clear()
    start = time.perf_counter()
    with conv_dtypes(model) as seen:
        metrics = _KeepingTrainer.test(cfg, model)
    seconds = time.perf_counter() - start
    (evaluator,) = _KeepingTrainer.evaluators
    query, gallery = evaluator.split(evaluator.gather_predictions())
    _KeepingTrainer.evaluators.clear()
    feats = torch.cat([query.feats, gallery.feats]).float()
    pids = list(query.pids) + list(gallery.pids)
    return {k: float(metrics[k]) for k in METRICS}, feats, pids, sorted(seen), seconds


def train_descriptor_model(args):
    """Train ``--train-config`` into ``<output-dir>/trained`` (or reuse it).

    Returns:
        (str, str, str, dict | None): the config, the checkpoint, how it was made, and the
        ``--eval-only`` record of the run (float32 accuracy, as kdreid evaluates it).
    """
    run_dir = os.path.join(args.output_dir, "trained")
    epochs = args.train_epochs
    opts = training_opts(epochs)
    print(f"Descriptor model: {args.train_config}, {epochs} epochs, seed {TRAIN_SEED} "
          f"(reused if {run_dir} holds it)", flush=True)  # fmt: skip
    run = train_and_record(
        f"mixed precision benchmark ({os.path.basename(args.train_config)})",
        args.train_config, run_dir, TRAIN_SEED, opts,
    )  # fmt: skip
    seconds = f", {run.train_seconds:.0f} s" if run.train_seconds else ", by an earlier run"
    how = (
        f"trained by this script: {os.path.relpath(args.train_config, REPO)} from random "
        f"weights, {epochs} epoch{'s' if epochs > 1 else ''} "
        f"(SOLVER.STEPS [{opts[3][1:-1]}]), seed {TRAIN_SEED}, projects/SpeedKD/train_net.py "
        f"in {run_dir}{seconds}"
    )
    return os.path.join(run_dir, "config.yaml"), run.weights, how, run.record


def training_opts(epochs):
    """The schedule of the trained model: the learning rate drops tenfold after 3/4 of it."""
    return ["SOLVER.MAX_EPOCH", str(epochs), "SOLVER.STEPS", f"[{max(1, epochs * 3 // 4)}]"]


def descriptor_effect(config, weights, device, how, record=None):
    """Relative differences of the mixed descriptors and the metrics of both precisions."""
    opts = ["MODEL.WEIGHTS", weights, "KDREID.CPU_AMP", "always", "KDREID.PROGRESS", "False"]
    cfg, model = build_inference_model(config, opts, device=device.type)
    if cfg.KDREID.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    cfg.defrost()
    cfg.DATASETS.TESTS = tuple(cfg.DATASETS.TESTS)[:1]
    cfg.freeze()
    out = {"config": config, "weights": weights, "how": how, "dataset": cfg.DATASETS.TESTS[0]}
    feats = {}
    for precision, eval_autocast in (("float32", False), ("mixed", True)):
        print(f"  extracting {out['dataset']}, {precision}", flush=True)
        metrics, feats[precision], pids, seen, seconds = extract_and_evaluate(
            cfg, model, eval_autocast
        )
        out[precision] = {**metrics, "conv_dtypes": seen, "seconds": seconds}
        if precision == "float32":
            reference_pids = pids
        elif pids != reference_pids:
            raise RuntimeError("the two extractions returned the images in different orders")
    out["mixed"]["dtype"] = dtype_name(autocast_dtype(device.type))
    base, mixed = feats["float32"], feats["mixed"]
    relative = (mixed - base).norm(dim=1) / base.norm(dim=1).clamp_min(1e-12)
    out["num_images"], out["feature_dim"] = base.shape
    out["relative_difference"] = {
        "max": float(relative.max()),
        "median": float(relative.median()),
    }
    if record is not None:
        out["eval_only_float32_mAP"] = record["metrics"]["mAP"]
    return out


# --- the report --------------------------------------------------------------------------------


def load_note(result):
    """What other processes did during the timings (measured by :class:`OtherCpuLoad`), or, where
    that could not be measured, the load average before the run (a decaying average of what may
    have ended)."""
    load = result.get("other_cpu_load")
    if load is not None and load >= OTHER_LOAD_WARNING:
        return (
            f"WARNING: other processes kept {load} CPUs busy during the timings: they are "
            "unreliable; measure again on an idle machine."
        )
    if load is None and result.get("busy_warning"):
        return result["busy_warning"] + "."
    return f"Other processes kept {load} CPUs busy during the timings."


def emulation_note(result):
    """The plain statement of emulated bfloat16 (empty where it is native or on CUDA)."""
    if not result["emulated"]:
        return ""
    return (
        f"**bfloat16 is EMULATED on this CPU** ({result['cpu_name']}, "
        f"{result['cpu_capability']}: no AVX-512 BF16 or AMX units, `native_bfloat16()` False): "
        "torch computes its bfloat16 convolutions and matrix products with slow fallback kernels, "
        "so every bfloat16 figure below is slower than float32. They are this CPU's figures, as "
        "measured; kdreid switches mixed precision off on such a CPU unless `KDREID.CPU_AMP "
        "always`, and a CPU with native bfloat16 units (or a GPU) is what it is for."
    )


def markdown(result):
    mixed = result["mixed_dtype"]
    tag = f"{mixed} (emulated)" if result["emulated"] else mixed
    gemm = result["gemm"]
    native = "yes" if result["native_bfloat16"] else "no"
    lines = [
        f"Mixed precision ({mixed}) against float32 on {result['device']} "
        f"({result['device_name']}); CPU {result['cpu_name']}, capability "
        f"{result['cpu_capability']}, native bfloat16: {native}; torch {result['torch']}, "
        f"{result['threads']} threads.",
        "",
    ]
    note = emulation_note(result)
    if note:
        lines += [note, ""]
    lines += [
        f"GEMM peak (the best `torch.mm` of square matrices of "
        f"{', '.join(map(str, gemm['sizes']))}): float32 {gemm['float32']:.1f} GFLOP/s, "
        f"{tag} {gemm[mixed]:.1f} GFLOP/s.",
        "",
    ]
    if result["models"]:
        h, w = result["input_size"]
        lines += [
            f"Input {h}x{w}, batch {result['batch']}, {result['num_classes']} identities, random "
            f"weights. Training: the engine's step (forward and losses under autocast, backward, "
            f"the config's optimizer), median of {result['steps']} steps after one warm-up. "
            "Extraction: eval mode, channels-last weights, `AutocastForward` for the mixed case. "
            "% of GEMM: FLOPs per image (convolutions and matrix products) x images/s over the "
            "GEMM peak of the same type.",
            "",
            f"| model | stage | float32 images/s | {tag} images/s | {mixed} / float32 "
            f"| float32 % of GEMM peak | {mixed} % of GEMM peak |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in result["models"].values():
            for stage in ("training", "extraction"):
                f = r[stage]
                lines.append(
                    f"| {r['label']} | {stage} | {f['float32']['images_per_s']:.2f} "
                    f"| {f['mixed']['images_per_s']:.2f} | {f['mixed_over_float32']:.2f}x "
                    f"| {100 * f['float32']['fraction_of_gemm']:.0f}% "
                    f"| {100 * f['mixed']['fraction_of_gemm']:.0f}% |"
                )
        if note:
            lines += [
                "",
                f"({mixed} emulated, see above; its GEMM rate is that of torch's fallback "
                "`torch.mm`, not a peak, and the convolutions take other fallback paths, so a "
                f"{mixed} % of GEMM above 100% says only that they are less slow.)",
            ]
        lines.append("")
    d = result["descriptor"]
    rel = d["relative_difference"]
    lines += [
        f"Descriptor: {d['config']} with {d['weights']} ({d['how']}); {d['dataset']} test set, "
        f"{d['num_images']} images, {d['feature_dim']}-d descriptors, extracted by kdreid's "
        "`Trainer.test` with `KDREID.EVAL_AUTOCAST` False, then True (channels-last).",
        "",
        "| descriptors | mAP | Rank-1 | mINP | extraction + ranking (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for precision, label in (("float32", "float32"), ("mixed", tag)):
        m = d[precision]
        lines.append(
            f"| {label} | {m['mAP']:.2f} | {m['Rank-1']:.2f} | {m['mINP']:.2f} "
            f"| {m['seconds']:.1f} |"
        )
    lines += [
        "",
        f"||f_{mixed} - f_float32|| / ||f_float32|| per descriptor: max {rel['max']:.2e}, "
        f"median {rel['median']:.2e}; mAP {d['mixed']['mAP'] - d['float32']['mAP']:+.2f}, "
        f"Rank-1 {d['mixed']['Rank-1'] - d['float32']['Rank-1']:+.2f} (points).",
    ]
    if "eval_only_float32_mAP" in d:
        lines.append(
            f"The training run's `--eval-only` record gives float32 mAP "
            f"{d['eval_only_float32_mAP']:.2f}."
        )
    lines += ["", load_note(result)]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------


def start_run(args, title):
    """What this script and ``inference_speed.py`` do before anything is timed: check the output
    folder and the trained model it would reuse (one of other settings is refused now, not in
    minutes), turn on cuDNN's autotuning on CUDA, and print the machine under ``title``.

    Returns:
        (torch.device, dict): ``--device``, and the result so far (:func:`machine`).
    """
    device = torch.device(args.device)
    check_output_dir(args.output_dir)
    if args.weights is None:
        check_reuse(os.path.join(args.output_dir, "trained"), args.train_config, TRAIN_SEED,
                    training_opts(args.train_epochs))  # fmt: skip
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the configs' CUDNN_BENCHMARK
    result = machine(device)
    result["busy_warning"] = busy_warning()
    print(
        f"{title} on {result['device_name']}: capability {result['cpu_capability']}, native "
        f"bfloat16 {result['native_bfloat16']}, torch {result['torch']} with "
        f"{result['threads']} threads; mixed type {result['mixed_dtype']}"
        + (" (EMULATED on this CPU: slower than float32)" if result["emulated"] else ""),
        flush=True,
    )
    if result["busy_warning"]:
        print(result["busy_warning"], flush=True)
    return device, result


def trained_model(args):
    """The trained model of :func:`add_model_arguments`: ``(config, weights, how, record)``,
    trained by :func:`train_descriptor_model` unless ``--config`` and ``--weights`` name it."""
    if args.weights is None:
        return train_descriptor_model(args)
    return args.config, args.weights, "given with --config and --weights", None


def finish_run(args, result, text, json_name, md_name):
    """Write ``result`` (JSON) and ``text`` (markdown) to ``--output-dir``, atomically, and print
    the text."""
    write_record(os.path.join(args.output_dir, json_name), result)
    atomic_write(os.path.join(args.output_dir, md_name), lambda f: f.write(text + "\n"), mode="w")
    print("\n" + text)
    print(f"\nWrote {os.path.join(args.output_dir, json_name)} and {md_name}")


def main(argv=None):
    """Measure, write ``mixed_precision.json`` / ``.md`` to ``--output-dir``, return the result.

    Raises:
        UserInputError: bad flags, a missing file, an output folder that cannot be written or
            holds a trained model of other settings; all found before anything is timed.
    """
    args = parse_args(argv)
    device, result = start_run(args, "Mixed precision benchmark")
    mixed = result["mixed_dtype"]
    result.update(
        input_size=list(args.size), batch=args.batch, num_classes=args.num_classes,
        steps=args.steps,
    )  # fmt: skip
    with OtherCpuLoad() as others:
        result["gemm"] = gemm_rates(device, args.gemm_sizes, args.time_budget)
        result["models"] = {}
        for name in args.models:
            result["models"][name] = model_speed(name, args, device, result["gemm"], mixed)
    result["other_cpu_load"] = None if others.cpus is None else round(others.cpus, 2)
    config, weights, how, record = trained_model(args)
    print("Descriptor", flush=True)
    result["descriptor"] = descriptor_effect(config, weights, device, how, record)
    finish_run(args, result, markdown(result), JSON_NAME, MD_NAME)
    return result


if __name__ == "__main__":
    main_of_runs(main)  # bad flags, a folder of other settings, a failed run: one line
