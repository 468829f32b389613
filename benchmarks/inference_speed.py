"""``--eval-only`` extraction: BatchNorm folded, channels-last and autocast, against the paths
before them, on the models users deploy.

    python benchmarks/inference_speed.py [--device cpu|cuda] [--models R50 MDPR] [--batch N]
        [--rounds 3] [--passes N | --time-budget 2] [--gemm-sizes N ...]
        [--config F --weights W | --train-config F --train-epochs 6]
        [--output-dir logs/inference_speed]

One run, on ``--device``, reports:

1. **Extraction images/s** of each model of ``--models`` (``R50``: FastReID's bag-of-tricks
   ResNet-50, ``configs/Market1501/bagtricks_R50.yml``, 256x128; ``MDPR``: the official MDPR
   configuration, ``configs/MDPR/DukeMTMC.yml``: ResNet-101-IBN, two branches, 384x192), random
   weights with BatchNorm statistics and affine weights drawn far from the identity (as a trained
   model's are), eval mode, on one batch of ``--batch`` random 0-255 images (default 32 on the
   CPU, 128 on CUDA: ``--eval-only`` extracts at ``TEST.IMS_PER_BATCH``, 128 in these configs;
   bfloat16 gains less on small batches), four ways:

   - FastReID's: the model as FastReID builds it (NCHW), float32;
   - kdreid's before this release, the reference: channels-last, float32;
   - folded: BatchNorm folded into the convolutions (``KDREID.FOLD_BN``), channels-last, float32:
     what ``--eval-only`` extracts with now;
   - folded + autocast: the same under ``KDREID.EVAL_AUTOCAST`` (bfloat16 on the CPU, float16 on
     CUDA), the weights of its convolutions and linear layers cast to that type once
     (:func:`kdreid.deploy.cast_weights_for_autocast`), as ``--eval-only`` does.

   Each is timed by :func:`kdreid.benchmark.measure_throughput` (one warm-up pass, then
   ``--passes`` passes, or passes for ``--time-budget`` seconds, at least 3), in ``--rounds``
   rounds that take the four in turn (the median of the rounds is reported: a drift of the
   machine's speed during the run reaches all four alike). With each: the fraction of the GEMM
   peak measured in the same run (multiply-adds counted by torch's FLOP counter on the folded
   model, x2, x images/s, over the best ``torch.mm`` rate of the same type), and the largest
   relative change of a descriptor against the reference's.
2. **Accuracy** on SynthReID: a trained model's test set extracted by kdreid's ``Trainer.test``
   unfolded in float32 (the reference), folded in float32, and folded under autocast: mAP, Rank-1,
   mINP and the descriptors' relative change. The model is ``--config`` with ``--weights``, or
   else the one :mod:`mixed_precision` trains (``--train-config``, default
   ``configs/Synthetic/bagtricks_R18.yml`` on SynthReID-small, ``--train-epochs`` epochs, seed 0)
   into ``<output-dir>/trained`` (reused when there).

Writes ``<output-dir>/inference_speed.json`` and ``inference_speed.md`` (atomically) and prints
the table. On the 2-core development CPU, ``--rounds 3 --passes 2`` takes about 12 minutes, most
of it the MDPR model (93 GFLOP per 384x192 image: half a second in float32 there).
"""

import copy
import os
import statistics

import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(REPO, "datasets"))  # read at import

import kdreid  # noqa: E402, F401  (repairs fastreid before it is imported)

# isort: split
from mixed_precision import (  # noqa: E402
    _Parser,
    add_model_arguments,
    check_model_arguments,
    conv_dtypes,
    extract_and_evaluate,
    finish_run,
    gemm_rates,
    load_note,
    start_run,
    trained_model,
)

import mdpr  # noqa: E402, F401  (registers MDPR)
from harness.runs import main_of_runs  # noqa: E402
from kdreid.benchmark import (  # noqa: E402
    OtherCpuLoad,
    count_macs,
    measure_throughput,
)
from kdreid.cli import at_least, build_inference_model, finite_above  # noqa: E402
from kdreid.config import autocast_dtype, get_cfg, merge_from_file  # noqa: E402
from kdreid.deploy import cast_weights_for_autocast, fold_batchnorm  # noqa: E402
from kdreid.engine import Trainer  # noqa: E402
from kdreid.engine.evaluate import deploy_model  # noqa: E402
from kdreid.engine.trainer import AutocastForward  # noqa: E402
from kdreid.engine.validation import check_config  # noqa: E402

MODELS = {
    "R50": ("ResNet-50 bag of tricks", "configs/Market1501/bagtricks_R50.yml"),
    "MDPR": ("MDPR, official configuration", "configs/MDPR/DukeMTMC.yml"),
}
"""``--models`` name -> (label, config); each at its config's ``INPUT.SIZE_TEST``."""

VARIANTS = (
    ("fastreid", "FastReID's (NCHW), float32"),
    ("reference", "kdreid before (channels-last), float32"),
    ("folded", "BatchNorm folded, channels-last, float32"),
    ("mixed", "BatchNorm folded, channels-last, autocast"),
)
"""The extraction paths timed, in the order each round takes them."""

JSON_NAME, MD_NAME = "inference_speed.json", "inference_speed.md"
DEFAULT_BATCH = {"cpu": 32, "cuda": 128}


def parse_args(argv=None):
    parser = _Parser(description=" ".join(__doc__.split("\n\n")[0].split()))
    positive = at_least(1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), default=list(MODELS),
        help="the models timed (default: all)",
    )  # fmt: skip
    parser.add_argument(
        "--batch", type=positive, default=None,
        help=f"extraction batch (default: {DEFAULT_BATCH['cpu']} on the CPU, "
        f"{DEFAULT_BATCH['cuda']} on CUDA)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=positive, default=3, help="rounds over the four paths")
    parser.add_argument(
        "--passes", type=positive, default=None,
        help="timed passes per path and round (default: as many as --time-budget allows, at "
        "least 3)",
    )  # fmt: skip
    parser.add_argument(
        "--time-budget", type=finite_above(0), default=2.0,
        help="seconds of timed passes per path and round, and per GEMM size (at least 3 passes)",
    )  # fmt: skip
    add_model_arguments(parser, "accuracy")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "logs", "inference_speed"))
    args = parser.parse_args(argv)
    check_model_arguments(args)
    args.batch = args.batch or DEFAULT_BATCH[args.device]
    return args


# --- speed -------------------------------------------------------------------------------------


def trained_like(model, seed=0):
    """``model`` with BatchNorm statistics and affine weights drawn as a trained model's are
    spread (random weights leave them at the identity, which folding would not change)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                device = m.running_mean.device
                m.running_mean.copy_(0.5 * torch.randn(n, generator=generator).to(device))
                m.running_var.copy_((0.5 + torch.rand(n, generator=generator)).to(device))
                if m.weight is not None:
                    m.weight.copy_((0.5 + torch.rand(n, generator=generator)).to(device))
                    m.bias.copy_(0.2 * torch.randn(n, generator=generator).to(device))
    return model


def build_paths(config, device):
    """The four extraction paths of :data:`VARIANTS` over one model's weights, and its config."""
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, config))
    check_config(cfg)
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = 751
    torch.manual_seed(0)
    fastreid = trained_like(Trainer.build_model(cfg)).eval()
    fastreid.to(memory_format=torch.contiguous_format)  # FastReID builds NCHW
    reference = copy.deepcopy(fastreid).to(memory_format=torch.channels_last)
    folded = copy.deepcopy(fastreid)
    height, width = cfg.INPUT.SIZE_TEST
    example = 255 * torch.rand(1, 3, height, width, device=device)
    pairs = fold_batchnorm(folded, example)
    folded.to(memory_format=torch.channels_last)
    mixed = copy.deepcopy(folded)
    cast = cast_weights_for_autocast(mixed, example, autocast_dtype(device.type))
    paths = {
        "fastreid": fastreid,
        "reference": reference,
        "folded": folded,
        "mixed": AutocastForward(mixed, device.type),
    }
    return cfg, paths, len(pairs), cast


def relative_change(features, reference):
    """The largest ``||f - f_ref|| / ||f_ref||`` over the descriptors of a batch."""
    features, reference = features.float(), reference.float()
    return float(((features - reference).norm(dim=1) / reference.norm(dim=1)).max())


def model_speed(name, args, device, gemm, mixed_dtype):
    """The four paths of one model: images/s (median of the rounds), % of the GEMM peak, ratios
    and the descriptors' change."""
    label, config = MODELS[name]
    cfg, paths, folded, cast = build_paths(config, device)
    height, width = cfg.INPUT.SIZE_TEST
    generator = torch.Generator(device=device).manual_seed(1)
    images = 255 * torch.rand(args.batch, 3, height, width, generator=generator, device=device)
    out = {"label": label, "config": config, "input_size": [height, width]}
    out["batchnorm_folded"] = folded
    out["weights_cast"] = cast
    out["remaining_batchnorm"] = sum(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in paths["folded"].modules()
    )
    out["macs_per_image"] = count_macs(paths["folded"], images[:1].clone())
    features, seen = {}, {}
    with torch.inference_mode():
        for key, model in paths.items():
            with conv_dtypes(model) as dtypes:
                features[key] = model(images.clone())
            seen[key] = sorted(dtypes)
    rates = {key: [] for key in paths}
    for round_index in range(args.rounds):
        for key, text in VARIANTS:
            print(f"  {name} round {round_index + 1}/{args.rounds}: {text}", flush=True)
            rates[key].append(
                measure_throughput(
                    paths[key], images, warmup=1, iters=args.passes, time_budget_s=args.time_budget
                )
            )
    reference = statistics.median(rates["reference"])
    out["paths"] = {}
    for key, text in VARIANTS:
        ips = statistics.median(rates[key])
        dtype = mixed_dtype if key == "mixed" else "float32"
        achieved = 2 * out["macs_per_image"] * ips / 1e9
        out["paths"][key] = {
            "label": text,
            "images_per_s": ips,
            "rounds": rates[key],
            "over_reference": ips / reference,
            "dtype": dtype,
            "conv_dtypes": seen[key],
            "fraction_of_gemm": achieved / gemm[dtype],
            "relative_change": relative_change(features[key], features["reference"]),
        }
    return out


# --- accuracy ----------------------------------------------------------------------------------


def accuracy(config, weights, device, how):
    """The trained model's SynthReID metrics and descriptors: unfolded float32 (the reference),
    folded float32, folded under autocast."""
    opts = ["MODEL.WEIGHTS", weights, "KDREID.CPU_AMP", "always", "KDREID.PROGRESS", "False"]
    cfg, model = build_inference_model(config, opts, device=device.type)
    cfg.defrost()
    cfg.DATASETS.TESTS = tuple(cfg.DATASETS.TESTS)[:1]
    cfg.freeze()
    model.eval().to(memory_format=torch.channels_last)
    out = {"config": config, "weights": weights, "how": how, "dataset": cfg.DATASETS.TESTS[0]}
    feats = {}
    for key, text, autocast in (
        ("reference", "unfolded, float32", False),
        ("folded", "BatchNorm folded, float32", False),
        ("mixed", "BatchNorm folded, autocast", True),
    ):
        if key == "folded":
            out["batchnorm_folded"] = deploy_model(cfg, model)
        if key == "mixed":  # the weights cast once, as --eval-only does under autocast
            example = 255 * torch.rand(1, 3, *cfg.INPUT.SIZE_TEST, device=device)
            out["weights_cast"] = cast_weights_for_autocast(
                model, example, autocast_dtype(device.type)
            )
        print(f"  extracting {out['dataset']}: {text}", flush=True)
        metrics, feats[key], _, dtypes, seconds = extract_and_evaluate(cfg, model, autocast)
        out[key] = {"label": text, **metrics, "conv_dtypes": dtypes, "seconds": seconds}
        out[key]["relative_change"] = relative_change(feats[key], feats["reference"])
    out["num_images"], out["feature_dim"] = feats["reference"].shape
    return out


# --- the report --------------------------------------------------------------------------------


def markdown(result):
    mixed = result["mixed_dtype"]
    gemm = result["gemm"]
    lines = [
        f"`--eval-only` extraction on {result['device']} ({result['device_name']}); CPU "
        f"{result['cpu_name']}, capability {result['cpu_capability']}, native bfloat16: "
        f"{'yes' if result['native_bfloat16'] else 'no'}; torch {result['torch']}, "
        f"{result['threads']} threads. GEMM peak (the best `torch.mm` of square matrices of "
        f"{', '.join(map(str, gemm['sizes']))}): float32 {gemm['float32']:.1f} GFLOP/s, "
        f"{mixed} {gemm[mixed]:.1f} GFLOP/s.",
        "",
        f"Batch {result['batch']}, random weights with BatchNorm statistics spread as trained; "
        f"images/s the median of {result['rounds']} rounds over the four paths; % of GEMM peak: "
        "2 x multiply-adds per image x images/s over the peak of the type computed in; change: "
        "the largest ||f - f_ref|| / ||f_ref|| of a descriptor of the batch.",
        "",
        "| model | path | images/s | vs kdreid before | % of GEMM peak | descriptor change |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["models"].values():
        h, w = r["input_size"]
        for p in r["paths"].values():
            path = p["label"].replace("autocast", f"{p['dtype']} autocast")
            lines.append(
                f"| {r['label']} ({h}x{w}) | {path} | {p['images_per_s']:.2f} "
                f"| {p['over_reference']:.2f}x | {100 * p['fraction_of_gemm']:.0f}% "
                f"| {p['relative_change']:.1e} |"
            )
    lines.append("")
    for r in result["models"].values():
        lines.append(
            f"- {r['label']}: {r['batchnorm_folded']} BatchNorm layers folded, "
            f"{r['remaining_batchnorm']} left (each reads something other than a convolution's "
            f"sole output); {r['weights_cast']} convolutions and linear layers cast to "
            f"{mixed} once for the autocast path; {2 * r['macs_per_image'] / 1e9:.1f} GFLOP per "
            "image."
        )
    a = result["accuracy"]
    lines += [
        "",
        f"Accuracy: {a['config']} with {a['weights']} ({a['how']}); {a['dataset']} test set, "
        f"{a['num_images']} images, {a['feature_dim']}-d descriptors, extracted by kdreid's "
        f"`Trainer.test`; {a['batchnorm_folded']} BatchNorm layers folded.",
        "",
        "| descriptors | mAP | Rank-1 | mINP | mAP change | largest descriptor change | "
        "extraction + ranking (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("reference", "folded", "mixed"):
        m = a[key]
        label = m["label"].replace("autocast", f"{mixed} autocast")
        lines.append(
            f"| {label} | {m['mAP']:.2f} | {m['Rank-1']:.2f} | {m['mINP']:.2f} "
            f"| {m['mAP'] - a['reference']['mAP']:+.2f} | {m['relative_change']:.1e} "
            f"| {m['seconds']:.1f} |"
        )
    lines += ["", load_note(result)]
    return "\n".join(lines)


def main(argv=None):
    """Measure, write ``inference_speed.json`` / ``.md`` to ``--output-dir``, return the result.

    Raises:
        UserInputError: bad flags, a missing file, an output folder that cannot be written or
            holds a trained model of other settings; all found before anything is timed.
    """
    args = parse_args(argv)
    device, result = start_run(args, "Inference benchmark")
    result.update(batch=args.batch, rounds=args.rounds)
    with OtherCpuLoad() as others:
        result["gemm"] = gemm_rates(device, args.gemm_sizes, args.time_budget)
        result["models"] = {}
        for name in args.models:
            result["models"][name] = model_speed(
                name, args, device, result["gemm"], result["mixed_dtype"]
            )
    result["other_cpu_load"] = None if others.cpus is None else round(others.cpus, 2)
    config, weights, how, _ = trained_model(args)
    print("Accuracy", flush=True)
    result["accuracy"] = accuracy(config, weights, device, how)
    finish_run(args, result, markdown(result), JSON_NAME, MD_NAME)
    return result


if __name__ == "__main__":
    main_of_runs(main)  # bad flags, a folder of other settings, a failed run: one line
