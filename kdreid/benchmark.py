"""Speed figures of any model: parameters, multiply-adds, latency and throughput, and their records.

Conventions:

- **Multiply-adds** are counted by torch's own FLOP counter (``torch.utils.flop_counter``), which
  counts convolutions and matrix products (2 FLOPs per multiply-add); element-wise operations,
  normalisation and pooling are not counted, the convention of the papers that report MACs.
  Figures are per image.
- **Timings** are wall-clock (``time.perf_counter``) per forward pass in eval mode under
  ``torch.inference_mode``, with ``torch.cuda.synchronize`` around each pass when the input is on
  a GPU. FastReID's ``Baseline.preprocess_image`` normalises its input in place
  (``images.sub_(mean).div_(std)``), so repeated forwards on one tensor would feed it ever-changing
  values: every pass gets a fresh copy of the example, made *before* its timer starts (a copy
  costs ~8 ms for a batch of 64 images at 256x128 on a CPU, about 1% of a ResNet-18's pass there,
  but it is not part of the model's time, so it is not timed at all).
- Iteration counts adapt to the model unless given: at least ``MIN_ITERS`` timed passes, then
  more until ``time_budget_s`` is spent (at most ``MAX_ITERS``), so a small model profiles on a
  CPU in a few seconds and a fast one on a GPU still gets hundreds of samples.

A *record* is one model's figures as a JSON object, written atomically to
``<dir>/speed_accuracy.json`` by ``--eval-only`` and read back by the trade-off reports.
"""

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_parameters",
    "count_macs",
    "measure_latency",
    "measure_throughput",
    "median_seconds",
    "time_calls",
    "profile_model",
    "device_name",
    "write_record",
    "read_records",
    "format_record",
    "busy_warning",
    "OtherCpuLoad",
    "RECORD_NAME",
    "MIN_ITERS",
    "MAX_ITERS",
]

RECORD_NAME = "speed_accuracy.json"
"""File name of a record inside a directory (what ``--eval-only`` writes in ``OUTPUT_DIR``)."""

MIN_ITERS = 3
"""Fewest timed passes of a time-budgeted measurement."""

MAX_ITERS = 1000
"""Most timed passes of a time-budgeted measurement."""


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (shared ones counted once), trainable or not."""
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Put every submodule in eval mode, then restore each one's own flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds of one forward pass per image, by ``torch.utils.flop_counter``.

    Args:
        model: any module taking one (N, ...) tensor; run in eval mode under ``torch.no_grad``
            (its own training flags are restored afterwards).
        example: (N, ...) input batch on the model's device; a copy is passed, so the model may
            modify it in place.

    Returns:
        FLOPs / 2 / N.
    """
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example.clone())
    return int(counter.get_total_flops()) // (2 * example.shape[0])


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn,
    *,
    warmup: int = 0,
    iters: int | None = None,
    time_budget_s: float = 2.0,
    device: torch.device | str | None = None,
    before=None,
):
    """Wall-clock seconds of repeated calls of ``fn()``: the one timing loop of kdreid's scripts.

    Args:
        fn: what is timed, called without arguments.
        warmup: untimed calls first (allocator, cuDNN autotuning, caches).
        iters: timed calls; ``None``: time-budgeted, at least ``MIN_ITERS`` calls, then more until
            ``time_budget_s`` is spent (at most ``MAX_ITERS``).
        time_budget_s: seconds of timed calls to aim for when ``iters`` is ``None``.
        device: a CUDA device is synchronised right before and after each call, so a call owns
            the kernels it queued; ``None`` or the CPU: no synchronisation.
        before: called before each call, untimed (e.g. to refresh an input the call modifies).

    Returns:
        (list[float], Any): the seconds of each timed call, and what the last call returned
        (the previous result is released before each call, so at most one is held).

    Raises:
        ValueError: a negative ``warmup`` or ``iters`` below 1.
    """
    if warmup < 0 or (iters is not None and iters < 1):
        raise ValueError(f"need warmup >= 0 and iters >= 1, got warmup={warmup}, iters={iters}")
    times: list[float] = []
    result = None
    start = None
    for step in range(warmup + (iters if iters is not None else MAX_ITERS)):
        if before is not None:
            before()
        result = None
        _sync(device)
        tic = time.perf_counter()
        result = fn()
        _sync(device)
        toc = time.perf_counter()
        if step < warmup:
            continue
        start = tic if start is None else start
        times.append(toc - tic)
        if iters is None and len(times) >= MIN_ITERS and toc - start >= time_budget_s:
            break
    return times, result


def median_seconds(fn, **kwargs) -> float:
    """The median of :func:`time_calls` (same arguments)."""
    return float(np.median(time_calls(fn, **kwargs)[0]))


def _time_forwards(
    model: nn.Module, example: torch.Tensor, warmup: int, iters: int | None, time_budget_s: float
) -> list[float]:
    """Seconds of each timed forward pass on a fresh copy of ``example`` (see the module doc)."""
    with _eval_mode(model), torch.inference_mode():
        buffer = torch.empty_like(example)
        times, _ = time_calls(
            lambda: model(buffer),
            warmup=warmup,
            iters=iters,
            time_budget_s=time_budget_s,
            device=example.device,
            before=lambda: buffer.copy_(example),
        )
    return times


def measure_latency(
    model: nn.Module,
    example: torch.Tensor,
    warmup: int = 3,
    iters: int | None = None,
    time_budget_s: float = 2.0,
) -> dict:
    """Time of one forward pass on ``example``.

    Args:
        model: any module taking one tensor; timed in eval mode under ``torch.inference_mode``.
        example: the input, on the model's device (usually a batch of 1).
        warmup: untimed passes first (allocator, cuDNN autotuning, caches).
        iters: timed passes; ``None``: time-budgeted (``MIN_ITERS`` to ``MAX_ITERS``).
        time_budget_s: seconds of timed passes to aim for when ``iters`` is ``None``.

    Returns:
        ``{"median_ms", "p90_ms", "iters"}``.
    """
    times = _time_forwards(model, example, warmup, iters, time_budget_s)
    return {
        "median_ms": float(np.percentile(times, 50)) * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "iters": len(times),
    }


def measure_throughput(
    model: nn.Module,
    example_batch: torch.Tensor,
    warmup: int = 2,
    iters: int | None = None,
    time_budget_s: float = 2.0,
) -> float:
    """Images per second: the batch size over the median time of a forward pass on the batch.

    Args: as :func:`measure_latency`, with ``example_batch`` of shape (N, ...).
    """
    times = _time_forwards(model, example_batch, warmup, iters, time_budget_s)
    return example_batch.shape[0] / float(np.median(times))


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def busy_warning(threshold: float = 0.5) -> str:
    """A warning when other processes keep the CPU busy (1-minute load average at or above
    ``threshold``), else ''. CPU timings taken then are unreliable, multi-threaded ones most."""
    if not hasattr(os, "getloadavg"):
        return ""
    load = os.getloadavg()[0]
    if load < threshold:
        return ""
    return (
        f"WARNING: load average {load:.1f} before the run: other processes use the CPU, "
        "timings (multi-threaded ones most) are unreliable"
    )


def _system_busy_seconds() -> float | None:
    """CPU seconds all processes have been busy since boot (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its children that have ended and been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class OtherCpuLoad:
    """How many CPUs other processes kept busy while the ``with`` block ran: the machine's busy
    time (Linux ``/proc/stat``, hypervisor steal included) minus this process's own, over the
    wall time. This process's own time includes that of its children once they have ended
    (data loader workers, subprocesses run and waited for). ``cpus`` is None where
    ``/proc/stat`` is not available.

    A timing taken while ``cpus`` is well above 0 shared the CPU and is unreliable.
    """

    def __enter__(self):
        self.cpus = None
        self._start = (_system_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = _system_busy_seconds(), _own_seconds(), time.perf_counter()
        if busy is not None and self._start[0] is not None and wall > self._start[2]:
            others = (busy - self._start[0]) - (own - self._start[1])
            self.cpus = max(0.0, others / (wall - self._start[2]))
        return False


OTHER_LOAD_WARNING = 0.25
"""CPUs kept busy by other processes above which a speed record is flagged as unreliable."""


def profile_model(
    model: nn.Module,
    input_size: tuple[int, int] = (256, 128),
    device: torch.device | str | None = None,
    batch_size: int = 64,
    warmup: int = 3,
    iters: int | None = None,
    time_budget_s: float = 2.0,
    log=None,
) -> dict:
    """Params, multiply-adds, batch-1 latency and batched throughput on random 0-255 images.

    Args:
        model: a module taking an (N, 3, H, W) image batch (e.g. a FastReID meta-architecture).
        input_size: (H, W) of the images.
        device: where to measure; the model is moved there (``nn.Module.to``). ``None``: the
            device of the model's parameters.
        batch_size: batch of the throughput measurement.
        warmup, iters, time_budget_s: as :func:`measure_latency`, for each measurement.
        log: called with a line as each step starts and ends (a measurement on a CPU can take
            tens of seconds: a batch-64 pass of a ResNet-50 takes seconds); None: silent.

    Returns:
        ``{"device", "device_name", "input_size", "params", "macs", "feature_dim", "latency_ms",
        "throughput", "throughput_batch"}``: ``device`` is ``"cpu"`` or ``"cuda"``,
        ``feature_dim`` the width of the (N, D) descriptor the model returns, ``latency_ms`` the
        median at batch 1, ``throughput`` in images/s at ``throughput_batch``,
        ``other_cpu_load`` the CPUs other processes kept busy meanwhile (:class:`OtherCpuLoad`).
    """
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    height, width = input_size
    generator = torch.Generator(device=device).manual_seed(0)
    batch = 255 * torch.rand(batch_size, 3, height, width, generator=generator, device=device)
    single = batch[:1].clone()
    log = log or (lambda line: None)
    passes = (
        f"{warmup} warm-up + {iters} timed passes"
        if iters
        else f"{warmup} warm-up + {MIN_ITERS} to {MAX_ITERS} timed passes (~{time_budget_s:g} s)"
    )
    started = time.perf_counter()
    with OtherCpuLoad() as others:
        log(f"Speed 1/3: latency at batch 1 on {device.type}, {passes}")
        latency = measure_latency(model, single, warmup, iters, time_budget_s)
        # a batched pass takes at most about batch x the batch-1 latency
        per_pass = latency["median_ms"] * batch_size / 1000
        bound = per_pass * (warmup + (iters or MIN_ITERS)) + (0 if iters else time_budget_s)
        log(
            f"Speed 2/3: latency {latency['median_ms']:.2f} ms; throughput at batch "
            f"{batch_size}, {passes} (about {bound:.0f} s at most)"
        )
        throughput = measure_throughput(model, batch, warmup, iters, time_budget_s)
    log(f"Speed 3/3: {throughput:.1f} images/s; counting multiply-adds")
    with _eval_mode(model), torch.inference_mode():
        feature_dim = int(model(single).shape[-1])
    macs = count_macs(model, single)
    log(f"Speed measured in {time.perf_counter() - started:.0f} s")
    return {
        "device": device.type,
        "device_name": device_name(device),
        "input_size": [int(height), int(width)],
        "params": count_parameters(model),
        "macs": macs,
        "feature_dim": feature_dim,
        "latency_ms": latency["median_ms"],
        "throughput": throughput,
        "throughput_batch": int(batch_size),
        "other_cpu_load": None if others.cpus is None else round(others.cpus, 2),
    }


def write_record(path: str | os.PathLike, record: dict) -> None:
    """Write ``record`` as JSON to ``path`` atomically (:func:`kdreid.checkpoint.atomic_write`): a
    reader sees the old file or the new one. The parent directory is created if needed."""
    from kdreid.checkpoint import atomic_write

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2) + "\n"), mode="w")


def read_records(paths_or_dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[dict]:
    """Records from JSON files, or from ``<dir>/speed_accuracy.json`` for each directory given.

    Raises:
        FileNotFoundError: a file (or a directory's record) does not exist; names the path.
        ValueError: a file does not hold one JSON object.
    """
    if isinstance(paths_or_dirs, str | os.PathLike):
        paths_or_dirs = [paths_or_dirs]
    records = []
    for entry in paths_or_dirs:
        path = os.fspath(entry)
        if os.path.isdir(path):
            path = os.path.join(path, RECORD_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No speed/accuracy record at '{path}'")
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict):
            raise ValueError(f"'{path}' holds a JSON {type(record).__name__}, not a record object")
        records.append(record)
    return records


def format_record(record: dict) -> str:
    """A record as a few aligned lines for a log; figures a record lacks read ``n/a``."""
    metrics = record.get("metrics") or {}
    macs = record.get("macs")

    def figure(key: str, fmt: str) -> str:
        value = record.get(key)
        return fmt.format(value) if value is not None else "n/a"

    rows = [
        ("model", f"{record.get('name', '?')} on {record.get('dataset', '?')}"),
        (
            "accuracy",
            f"mAP {metrics.get('mAP', float('nan')):.2f}  "
            f"Rank-1 {metrics.get('Rank-1', float('nan')):.2f}",
        ),
        ("params", f"{record['params'] / 1e6:.3f} M" if record.get("params") else "n/a"),
        ("multiply-adds", f"{macs / 1e9:.3f} G per image" if macs else "n/a"),
        ("descriptor", figure("feature_dim", "{}-d")),
        ("latency", figure("latency_ms", "{:.2f} ms at batch 1")),
        (
            "throughput",
            figure("throughput", "{:.1f} images/s")
            + (f" at batch {record['throughput_batch']}" if "throughput_batch" in record else ""),
        ),
        ("device", f"{record.get('device', '?')} ({record.get('device_name', '?')})"),
    ]
    load = record.get("other_cpu_load")
    if load is not None and load >= OTHER_LOAD_WARNING:
        rows.append(("WARNING", f"other processes kept {load:.1f} CPUs busy: speed unreliable"))
    return "\n".join(f"  {key:<14}{value}" for key, value in rows)
