"""How fast does MDPR train and evaluate, and what do its sync-free losses and eval shortcut save?

    python benchmarks/mdpr_speed.py [--config-file configs/MDPR/DukeMTMC.yml] [--batch 64]
        [--steps 3] [--device auto|cpu|cuda] [--no-profile] [--output-dir logs/mdpr_speed]
        [KEY VALUE ...]

With the official configuration by default (IBN-ResNet-101, last stride 1, 384×192, 702
identities, AMP on a GPU, float32 on the CPU), in one run on one device:

1. **Training step** (forward, every loss term, backward, Adam step), images/s, for
   - ``ours``: kdreid's MDPR as it trains;
   - ``official-style``: the same network with the loss path of the official code: FastReID's
     ``CircleSoftmax`` and cross-entropy (each waits for the device through ``nonzero``) and the
     diversity loss assembled element by element in a CPU tensor, then moved to the device
     (one wait per matrix element).
   Both compute the same loss values (checked); the device waits of one step are counted by
   recording the aten operations that need the host (``.item()``, ``nonzero``, ...).
2. **Evaluation**: multiply-adds, batch-1 latency and throughput of the descriptor with the
   attention and BAP skipped (as deployed) and computed (as the official forward does).
3. **Profile** of one step of ours (``torch.profiler``): the operators that take the time.

Writes ``<output-dir>/mdpr_speed.json`` and ``mdpr_speed.md`` and prints the table. The training
batch of 64 images at 384×192 needs about 40 GB of activations in float32, more than a 24 GB
CPU machine has: pass ``--batch 8`` there (the figure is per image either way).
"""

import argparse
import contextlib
import os
import resource
import statistics
import warnings

import torch
import torch.nn.functional as F

import kdreid  # noqa: F401  (repairs fastreid before it is imported)

# isort: split
from fastreid.engine import DefaultTrainer
from fastreid.layers import any_softmax
from fastreid.modeling import build_model
from fastreid.modeling.losses import cross_entropy_loss as fastreid_cross_entropy
from fastreid.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode

import mdpr
import mdpr.modeling
from kdreid.benchmark import device_name, profile_model, time_calls
from kdreid.checkpoint import write_json, write_text
from kdreid.cli import at_least, check_output_dir, report_user_errors
from kdreid.config import (
    autocast_dtype,
    get_cfg,
    merge_from_file,
    merge_from_list,
    mixed_precision_runs,
)
from kdreid.engine import Trainer
from kdreid.engine.trainer import autocast
from kdreid.engine.validation import check_config, check_opts
from kdreid.errors import UserInputError
from mdpr.layers import SyncFreeCircleSoftmax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNCING_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique", "unique_")


class SyncCounter(TorchDispatchMode):
    """Counts the aten operations after which the host must wait for the device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(op in func.__name__ for op in SYNCING_OPS):
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_device_waits(model, batch, device):
    """Device waits of one forward + losses + backward (the optimizer is not included).

    On CUDA: every synchronising call, as reported by ``torch.cuda.set_sync_debug_mode``
    (device-to-host copies included). On the CPU: the operations that would wait on a device
    (:class:`SyncCounter`); the official diversity loss's element copies to a CPU tensor are
    not visible there (they are plain CPU copies), so its count is a lower bound.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                sum(model(batch).values()).backward()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return sum("synchronizing" in str(w.message) for w in caught)
    with SyncCounter() as counter:
        sum(model(batch).values()).backward()
    return counter.count


def official_style_diversity(parts: torch.Tensor) -> torch.Tensor:
    """The diversity term computed as the official code does: element by element on the CPU.

    Args:
        parts: (B, M, D) pooled part vectors.

    Returns:
        The same value as :func:`mdpr.losses.attention_diversity_loss`, on ``parts``'s device.
    """
    b, m, _ = parts.shape
    cosines = torch.zeros(b, m, m, dtype=parts.dtype)  # on the CPU
    for n in range(b):
        for i in range(m):
            for j in range(m):
                cosines[n, i, j] = F.cosine_similarity(parts[n, i], parts[n, j], dim=0)
    return torch.triu(cosines.to(parts.device), diagonal=1).sum(dim=(1, 2)).mean()


@contextlib.contextmanager
def official_style_losses(model):
    """Swap the model's loss path for the official one (same values, device waits included)."""
    swapped = []
    for module in model.modules():
        layer = getattr(module, "cls_layer", None)
        if isinstance(layer, SyncFreeCircleSoftmax):
            module.cls_layer = any_softmax.CircleSoftmax(layer.num_classes, layer.s, layer.m)
            swapped.append((module, layer))
    saved = mdpr.modeling.cross_entropy_loss, mdpr.modeling.attention_diversity_loss
    mdpr.modeling.cross_entropy_loss = fastreid_cross_entropy
    mdpr.modeling.attention_diversity_loss = official_style_diversity
    try:
        yield model
    finally:
        mdpr.modeling.cross_entropy_loss, mdpr.modeling.attention_diversity_loss = saved
        for module, layer in swapped:
            module.cls_layer = layer


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(cfg, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    height, width = cfg.INPUT.SIZE_TRAIN
    images = (torch.rand(batch, 3, height, width, generator=g) * 255).to(device)
    per_id = max(1, min(cfg.DATALOADER.NUM_INSTANCE, batch // 2))
    ids = torch.arange(batch) // per_id % cfg.MODEL.HEADS.NUM_CLASSES
    return {"images": images, "targets": ids.to(device)}


def train_step(model, optimizer, scaler, batch, amp):
    """One step: forward, losses, backward, Adam; returns the loss dict (not synchronised)."""
    with autocast(batch["images"].device, enabled=amp):
        losses = model(batch)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return losses


def first_losses(model, batch):
    """The loss values of ``batch`` in float32 (no gradient): the two loss paths must agree."""
    with EventStorage(0), torch.no_grad():
        return {k: float(v) for k, v in model(batch).items()}


def time_training(model, cfg, batch, steps, amp, device, engine):
    """Images/s over ``steps`` timed steps after one warm-up step, and the device waits of one
    step. ``engine``: the step as kdreid's engine runs it (channels-last weights, torch's
    multi-tensor Adam, :func:`Trainer.build_optimizer`); else as FastReID runs it (NCHW weights,
    Adam over FastReID's flat ``ContiguousParams`` buffers). The weights are restored after."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layout = torch.channels_last if engine else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer, _ = (Trainer if engine else DefaultTrainer).build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    with EventStorage(0):
        with autocast(device, enabled=amp):
            waits = count_device_waits(model, batch, device)
        times, _ = time_calls(
            lambda: train_step(model, optimizer, scaler, batch, amp),
            warmup=1,
            iters=steps,
            device=device,
        )
    model.to(memory_format=torch.contiguous_format)  # parameters of their own again
    model.load_state_dict(state)
    n = batch["images"].shape[0]
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # the process's peak resident memory so far (Linux reports KiB)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "images_per_s": n / statistics.median(times),
        "step_s": statistics.median(times),
        "steps": len(times),
        "device_waits_per_step": waits,
        "peak_memory_gb": peak_gb,
        "mixed_precision": amp,
        "channels_last": engine,
    }


def profile_step(model, batch, amp, device, path, rows=15):
    """Profile one training step; write the operator table to ``path``, return its top rows."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-9)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with EventStorage(0), torch.profiler.profile(activities=activities) as prof:
        train_step(model, optimizer, None, batch, amp)
        _sync(device)
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    with open(path, "w") as f:
        f.write(table)
    return table


def evaluation(model, cfg, device, batch):
    """Profile records of the deployed descriptor (attention and BAP skipped, training-only
    modules left out: ``MDPR.deployed_model``) and of the full model computing them."""
    size = tuple(cfg.INPUT.SIZE_TEST)
    out = {"skipped": profile_model(model.deployed_model(), size, device=device, batch_size=batch)}
    model.skip_unused_in_eval = False
    out["computed"] = profile_model(model, size, device=device, batch_size=batch)
    model.skip_unused_in_eval = True
    return out


def markdown(result):
    t, e = result["training"], result["evaluation"]
    ours, official = t["ours"], t["official-style"]
    lines = [
        f"{result['config']} on {result['device_name']} ({result['device']}), "
        f"input {result['input_size'][0]}×{result['input_size'][1]}, "
        f"torch {result['torch']}.",
        "",
        f"Training step (forward, {len(ours['losses'])} loss terms, backward, Adam), "
        f"batch {result['batch']}, median of {ours['steps']} steps:",
        "",
        "| step | precision | weights | images/s | s per step | device waits (forward + losses "
        "+ backward) | peak memory |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in (
        ("ours: sync-free losses, engine's loop (foreach Adam)", ours),
        ("official-style: official losses, FastReID's loop (flat-buffer Adam)", official),
    ):
        precision = result["mixed_dtype"] + " autocast" if r["mixed_precision"] else "float32"
        lines.append(
            f"| {name} | {precision} | {'channels-last' if r['channels_last'] else 'NCHW'} "
            f"| {r['images_per_s']:.2f} | {r['step_s']:.3f} "
            f"| {r['device_waits_per_step']} | {r['peak_memory_gb']:.1f} GB |"
        )
    lines += [
        "",
        f"Ours: {t['speedup']:.2f}x the official-style step's images/s. Same loss values on the "
        f"first batch in float32: largest difference {result['max_loss_difference']:.2e}.",
        "",
        f"Evaluation (descriptor {e['skipped']['feature_dim']}-d):",
        "",
        "| attention and BAP | parameters | multiply-adds per image | latency at batch 1 | "
        f"throughput at batch {e['skipped']['throughput_batch']} |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("skipped", "skipped (deployed model)"),
        ("computed", "computed (as the official forward)"),
    ):
        r = e[name]
        lines.append(
            f"| {label} | {r['params'] / 1e6:.1f} M | {r['macs'] / 1e9:.2f} G "
            f"| {r['latency_ms']:.1f} ms | {r['throughput']:.1f} images/s |"
        )
    saved = 1 - e["skipped"]["macs"] / e["computed"]["macs"]
    cpu = result["device"] == "cpu"
    lines += [
        "",
        f"Skipping saves {100 * saved:.1f}% of the multiply-adds.",
        "",
        "Peak memory: "
        + (
            "the process's peak resident memory (model, Adam state, activations). On a GPU the "
            "official-style diversity loss also waits once per matrix element (B·M² per level), "
            "which a count on the CPU cannot see."
            if cpu
            else "the largest CUDA allocation."
        ),
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--config-file", default=os.path.join(REPO, "configs", "MDPR", "DukeMTMC.yml")
    )
    positive = at_least(1)
    parser.add_argument("--num-classes", type=positive, default=702, help="identities (Duke: 702)")
    parser.add_argument("--batch", type=positive, default=64, help="training batch")
    parser.add_argument("--eval-batch", type=positive, default=None, help="default: TEST batch")
    parser.add_argument("--steps", type=positive, default=3, help="timed training steps")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "logs", "mdpr_speed"))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config options")
    return parser.parse_args(argv)


def run(args):
    """Measure, write ``mdpr_speed.json`` / ``.md`` to ``args.output_dir``, return the result.

    Raises:
        UserInputError: a bad config or option, a config that builds no MDPR model, an output
            folder that cannot be written; all found before anything is timed or created.
    """
    cfg = get_cfg()
    merge_from_file(cfg, args.config_file)
    check_opts(args.opts)
    merge_from_list(cfg, args.opts)
    check_config(cfg)  # it trains: the checks of a training run (MDPR's among them)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.BACKBONE.PRETRAIN = False  # random weights time the same
    cfg.MODEL.HEADS.NUM_CLASSES = args.num_classes
    # the official code trains with FastReID's AMPTrainer: mixed precision on CUDA only; the
    # engine's loop also on a CPU that computes bfloat16 natively (KDREID.CPU_AMP)
    official_amp = bool(cfg.SOLVER.AMP.ENABLED) and device.type == "cuda"
    amp = bool(cfg.SOLVER.AMP.ENABLED) and mixed_precision_runs(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if not isinstance(model, mdpr.MDPR):
        raise UserInputError(f"{args.config_file} does not build an MDPR model")
    check_output_dir(args.output_dir)
    batch = _batch(cfg, args.batch, device)
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"MDPR speed on {device_name(device)}: training batch {args.batch}", flush=True)
    losses = {"ours": first_losses(model, batch)}
    with official_style_losses(model):
        losses["official-style"] = first_losses(model, batch)
    diff = max(abs(losses["ours"][k] - losses["official-style"][k]) for k in losses["ours"])
    training = {"ours": time_training(model, cfg, batch, args.steps, amp, device, engine=True)}
    print(f"  ours: {training['ours']['images_per_s']:.2f} images/s", flush=True)
    with official_style_losses(model):
        training["official-style"] = time_training(
            model, cfg, batch, args.steps, official_amp, device, engine=False
        )
    print(f"  official-style: {training['official-style']['images_per_s']:.2f} images/s")
    training["ours"]["losses"] = losses["ours"]
    training["speedup"] = (
        training["ours"]["images_per_s"] / training["official-style"]["images_per_s"]
    )
    profile = None
    if not args.no_profile:
        path = os.path.join(args.output_dir, "profile.txt")
        model.to(memory_format=torch.channels_last)
        profile = profile_step(model, batch, amp, device, path)
        model.to(memory_format=torch.contiguous_format)
        print(f"  profile: {path}", flush=True)
    eval_batch = args.eval_batch or cfg.TEST.IMS_PER_BATCH
    model.eval()
    result = {
        "config": os.path.relpath(args.config_file, REPO),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "input_size": list(cfg.INPUT.SIZE_TRAIN),
        "amp": amp,
        "official_amp": official_amp,
        "mixed_dtype": str(autocast_dtype(device.type)).removeprefix("torch."),
        "batch": args.batch,
        "training": training,
        "max_loss_difference": diff,
        "evaluation": evaluation(model, cfg, device, eval_batch),
    }
    write_json(os.path.join(args.output_dir, "mdpr_speed.json"), result)
    text = markdown(result)
    write_text(os.path.join(args.output_dir, "mdpr_speed.md"), text + "\n")
    print(text)
    if profile:
        print("\nTop operators of one step:\n" + profile)
    return result


if __name__ == "__main__":
    report_user_errors(run, parse_args())  # bad input: one line, status 2
