"""Several processes, GPUs and machines, through ``torch.distributed``.

One process per GPU with NCCL on CUDA, or N CPU processes with gloo; started by
:func:`kdreid.engine.launch_main` (``--num-gpus``, ``--num-machines``, ``--machine-rank``,
``--dist-url``) or by ``torchrun`` (its ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` /
``MASTER_ADDR`` environment). Each process then runs the same :func:`kdreid.engine.main`:
FastReID's samplers give each rank its share of every batch (``SOLVER.IMS_PER_BATCH`` is the
global batch) and of the test set, and its evaluator gathers the features on rank 0.

This module holds what the processes share: the process group (:func:`init_process_group`), the
model's DDP wrapper (:func:`wrap_model`) and the one-model guarantee (:func:`sync_buffers`,
:func:`check_replicas`): every rank holds the same weights and buffers whenever the model is
evaluated or saved.
"""

import datetime
import hashlib
import itertools
import logging
import os
import socket
from urllib.parse import urlparse

import torch
import torch.distributed as dist
from fastreid.utils import comm
from torch.nn.parallel import DistributedDataParallel

from kdreid.errors import UserInputError

__all__ = [
    "DistributedSetupError",
    "ReplicaMismatchError",
    "TORCHRUN_VARIABLES",
    "backend_for",
    "check_port_free",
    "check_replicas",
    "fingerprint",
    "free_port",
    "init_process_group",
    "started_by_torchrun",
    "sync_buffers",
    "wrap_model",
]

logger = logging.getLogger(__name__)

#: The environment ``torchrun`` gives each process it starts (``LOCAL_RANK`` defaults to 0).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(UserInputError):
    """The processes cannot form their group (a port in use, an address that cannot be reached)."""


class ReplicaMismatchError(RuntimeError):
    """The ranks' copies of the model differ where they must be identical."""


def started_by_torchrun(environ=os.environ):
    """Whether this process was started by ``torchrun`` (or a scheduler with its conventions)."""
    return all(name in environ for name in TORCHRUN_VARIABLES)


def backend_for(device):
    """``"nccl"`` for a CUDA device, ``"gloo"`` for the CPU."""
    return "nccl" if str(device).startswith("cuda") else "gloo"


def free_port():
    """A TCP port that is free on this machine now (another process may take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def check_port_free(dist_url):
    """Refuse a ``tcp://HOST:PORT`` whose port is taken on this machine (rank 0 listens there).

    Addresses of other machines, and other schemes (``file://``), are left to torch.

    Raises:
        DistributedSetupError: the port is in use.
    """
    url = urlparse(dist_url)
    if url.scheme != "tcp" or url.port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((url.hostname or "", url.port))
        except OSError as exc:
            if exc.errno == 98:  # EADDRINUSE; EADDRNOTAVAIL: not this machine's address
                raise DistributedSetupError(
                    f"--dist-url {dist_url}: port {url.port} is in use on this machine (another "
                    "run?); pick another port, or --dist-url auto on one machine."
                ) from None


def _local_group(rank, local_sizes):
    """Create one process group per machine (every rank must create every group, in order) and
    give FastReID's ``comm`` this rank's (``comm.get_local_rank()`` reads it)."""
    start = 0
    for size in local_sizes:
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            comm._LOCAL_PROCESS_GROUP = group
        start += size


def init_process_group(
    backend, init_method, world_size, rank, local_rank, timeout_s, processes_per_machine=None
):
    """Join the process group and set up what FastReID expects of it.

    Args:
        backend (str): ``"nccl"`` or ``"gloo"``.
        init_method (str): ``tcp://HOST:PORT``, ``file://...`` or ``env://``.
        world_size (int): processes in all.
        rank (int): this process's global rank.
        local_rank (int): its rank on this machine (its GPU with NCCL).
        timeout_s (float): how long a collective waits for the other ranks before failing, so a
            rank that stopped does not leave the others waiting forever.
        processes_per_machine (int): ranks ``k * n ... (k + 1) * n - 1`` run on machine ``k``;
            ``None``: found from the machines' host names (torchrun numbers ranks so).

    Raises:
        DistributedSetupError: the group cannot be formed (the address named).
    """
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(
            backend=backend,
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except dist.DistNetworkError as exc:
        where = init_method
        if init_method == "env://":
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        reason = "the port is in use" if "EADDRINUSE" in str(exc) else str(exc).splitlines()[0]
        raise DistributedSetupError(
            f"rank {rank} cannot join the process group at {where}: {reason}"
        ) from exc
    if processes_per_machine is None:
        hosts = [None] * world_size
        dist.all_gather_object(hosts, socket.gethostname())
        local_sizes = [len(list(group)) for _, group in itertools.groupby(hosts)]
    else:
        local_sizes = [processes_per_machine] * (world_size // processes_per_machine)
    _local_group(rank, local_sizes)


def _frozen_names(model):
    """Names of the parameters and buffers of the model's frozen teachers, which stay out of DDP:
    every rank loads them from the same files, and they never change."""
    from kdreid.distill.teacher import FrozenTeacher

    names = []
    for prefix, module in model.named_modules():
        if isinstance(module, FrozenTeacher):
            names += [f"{prefix}.{n}" for n, _ in module.named_parameters()]
            names += [f"{prefix}.{n}" for n, _ in module.named_buffers()]
    return names


def wrap_model(cfg, model):
    """``model`` in ``DistributedDataParallel`` (when a process group is up; else unchanged).

    One device per process (``device_ids`` on CUDA, none on the CPU); parameters that get no
    gradient in some configuration (MDPR without its cross-entropy, say) are found at every step
    while ``KDREID.FIND_UNUSED_PARAMETERS`` is on; frozen teachers are left out. Buffers are not
    broadcast at every forward (FastReID's choice): :func:`sync_buffers` averages them whenever
    the model is evaluated or saved.
    """
    if not dist.is_available() or not dist.is_initialized():
        return model
    ignored = _frozen_names(model)
    if ignored:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device = next(model.parameters()).device
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,
        find_unused_parameters=cfg.KDREID.FIND_UNUSED_PARAMETERS,
    )


def _replicated(model):
    """The module DDP replicates, and the names it leaves out."""
    module = getattr(model, "module", model)
    ignored = set(getattr(model, "parameters_to_ignore", ()))
    return module, ignored


def sync_buffers(model):
    """Make every rank's buffers rank-identical: floating-point ones (BatchNorm's running mean
    and variance) become their average over the ranks, which saw different images; the others
    (batch counters) are rank 0's. A no-op on one process.

    Returns:
        int: the number of buffers synchronised.
    """
    if comm.get_world_size() == 1:
        return 0
    module, ignored = _replicated(model)
    buffers = [b for name, b in module.named_buffers() if name not in ignored]
    world = comm.get_world_size()
    with torch.no_grad():
        for buffer in buffers:
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(world)
            else:
                dist.broadcast(buffer, src=0)
    return len(buffers)


def fingerprint(model):
    """A digest of the bytes of every parameter and buffer DDP replicates, in order."""
    module, ignored = _replicated(model)
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if name in ignored:
            continue
        digest.update(name.encode())
        data = tensor.detach().cpu().contiguous()
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_replicas(model, when):
    """Check that every rank holds the same weights and buffers (byte for byte) and log it.

    Raises:
        ReplicaMismatchError: the ranks' digests differ (named).
    """
    if comm.get_world_size() == 1:
        return None
    digests = comm.all_gather(fingerprint(model))
    if len(set(digests)) > 1:
        raise ReplicaMismatchError(
            f"{when}: the ranks' weights and buffers differ (digests by rank: {digests})"
        )
    logger.info(
        "%s: weights and buffers identical on all %d ranks (digest %s)",
        when,
        len(digests),
        digests[0],
    )
    return digests[0]
