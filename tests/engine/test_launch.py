"""The launcher's checks before any process starts, and the one-model guarantee of
:mod:`kdreid.engine.distributed` on two gloo processes."""

import argparse
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kdreid.config import get_cfg, merge_from_file
from kdreid.engine import distributed, launch
from kdreid.engine.validation import check_processes
from kdreid.errors import ConfigError

from ..conftest import REPO

TINY = f"{REPO}/configs/Synthetic/tiny.yml"


def _args(tmp_path, *opts, **flags):
    values = dict(
        config_file=TINY, opts=["OUTPUT_DIR", str(tmp_path), *opts], eval_only=False,
        resume=False, num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto",
        dist_timeout=60.0,
    )  # fmt: skip
    values.update(flags)
    return argparse.Namespace(**values)


def _refusal(capsys, args):
    with pytest.raises(SystemExit) as info:
        launch._plan(args)
    assert info.value.code == 2
    return capsys.readouterr().err.strip()


def test_more_gpus_than_the_machine_has_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _refusal(capsys, _args(tmp_path, num_gpus=2)) == (
        "error: --num-gpus 2 but torch sees 1 GPU(s) on this machine; use --num-gpus 1 or fewer "
        "(or MODEL.DEVICE cpu for CPU processes)."
    )


def test_cpu_processes_where_there_is_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plan = launch._plan(_args(tmp_path, num_gpus=4))
    assert (plan.backend, plan.world_size, plan.per_machine, plan.threads) == ("gloo", 4, 4, 2)
    assert plan.dist_url.startswith("tcp://127.0.0.1:")


def test_several_machines_need_an_address(tmp_path, capsys):
    err = _refusal(capsys, _args(tmp_path, num_machines=2))
    assert err.startswith("error: --num-machines 2 needs --dist-url tcp://<machine 0's address>")
    assert _refusal(capsys, _args(tmp_path, num_machines=2, machine_rank=2)).startswith(
        "error: --machine-rank 2 is not in 0..1"
    )


def test_the_global_batch_must_split_over_the_processes(tmp_path, capsys):
    err = _refusal(capsys, _args(tmp_path, num_gpus=3))
    assert err == (
        "error: SOLVER.IMS_PER_BATCH 16 (the global batch) does not split evenly over 3 "
        "processes: use a multiple of 3."
    )


def test_a_port_in_use_is_found_before_the_processes_start():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(distributed.DistributedSetupError, match=f"port {port} is in use"):
            distributed.check_port_free(f"tcp://127.0.0.1:{port}")
    distributed.check_port_free(f"tcp://127.0.0.1:{port}")  # free again
    distributed.check_port_free("file:///tmp/x")  # not ours to check


def test_sync_batchnorm_is_refused_on_cpu_processes_only():
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NORM = "syncBN"
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.NORM syncBN: torch's SyncBatchNorm"):
        check_processes(cfg, 2)
    check_processes(cfg, 1)  # one process: plain BatchNorm's statistics
    check_processes(cfg, 2, training=False)  # evaluation does not synchronise
    cfg.MODEL.BACKBONE.NORM = "BN"
    cfg.TEST.IMS_PER_BATCH = 2
    with pytest.raises(ConfigError, match="TEST.IMS_PER_BATCH 2 is split over 3 processes"):
        check_processes(cfg, 3)


def test_torchrun_is_recognised_by_its_environment():
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert distributed.started_by_torchrun(env)
    assert not distributed.started_by_torchrun({k: v for k, v in env.items() if k != "RANK"})
    assert distributed.backend_for("cuda:1") == "nccl" and distributed.backend_for("cpu") == "gloo"


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)


def _replicas(rank, url, results):
    dist.init_process_group("gloo", init_method=url, world_size=2, rank=rank)
    distributed._local_group(rank, [2])
    torch.manual_seed(0)
    model = _Net()  # the same weights on both ranks
    with torch.no_grad():
        model.bn.running_mean.fill_(float(rank))  # statistics of different images
        model.bn.running_var.fill_(1.0 + 2 * rank)
        model.bn.num_batches_tracked.fill_(7 + rank)
    try:
        distributed.check_replicas(model, "before")
        outcome = "no mismatch found"
    except distributed.ReplicaMismatchError as exc:
        outcome = str(exc)
    distributed.sync_buffers(model)
    digest = distributed.check_replicas(model, "after")
    results[rank] = (
        outcome,
        model.bn.running_mean.tolist(),
        model.bn.running_var.tolist(),
        int(model.bn.num_batches_tracked),
        digest,
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_buffers_are_averaged_and_replicas_checked_on_two_processes():
    url = f"tcp://127.0.0.1:{distributed.free_port()}"
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_replicas, args=(url, results), nprocs=2)
        results = dict(results)
    for rank in (0, 1):
        outcome, mean, var, tracked, digest = results[rank]
        assert outcome.startswith("before: the ranks' weights and buffers differ")
        assert mean == [0.5] * 4 and var == [2.0] * 4  # averaged
        assert tracked == 7  # rank 0's counter
    assert results[0][4] == results[1][4]


def test_the_failed_rank_is_summed_up_by_its_exception_line():
    trace = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "    g()\n"
        "RuntimeError: Expected to have finished reduction in the prior iteration.\n"
        "In addition, you can set TORCH_DISTRIBUTED_DEBUG\n"
    )
    assert launch._exception_line(trace) == (
        "RuntimeError: Expected to have finished reduction in the prior iteration. (parameters "
        "without a gradient: set KDREID.FIND_UNUSED_PARAMETERS True)"
    )
    assert launch._exception_line("ValueError: " + "x" * 400).endswith("x...")
