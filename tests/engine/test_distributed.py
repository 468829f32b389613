"""Several processes on the CPU with gloo, as a user starts them: ``--num-gpus N``, several
"machines" (``--num-machines`` / ``--machine-rank`` / ``--dist-url``) and ``torchrun``.

One MDPR run of 2 processes is shared: one process group, the same weights and buffers on both
ranks, one set of files, its in-run evaluation equal to ``--eval-only`` of its checkpoint on 1, 2
and 3 processes (on a test set of 95 images, which 2 and 3 processes split unevenly), and
``--resume`` on 2 processes. Then each project's tiny config, MDPR without its cross-entropy
through torchrun, and the faults: a rank that raises or dies, a port in use, too many GPUs.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from kdreid.data.synthreid.generate import GALLERY_DIR, QUERY_DIR, TRAIN_DIR, generate_synthreid

from ..conftest import REPO

MDPR_TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
SCRIPTS = {
    "MDPR": os.path.join(REPO, "projects", "MDPR", "train_net.py"),
    "SpeedKD": os.path.join(REPO, "projects", "SpeedKD", "train_net.py"),
    "FactorizedKD": os.path.join(REPO, "projects", "FactorizedKD", "train_net.py"),
}
QUIET = ("KDREID.PROGRESS", "False", "KDREID.SEED", "0")
# The test set of the runs below: SynthReID-tiny's query and gallery, less one gallery image, in
# Market-1501's layout (95 images: 48 + 47 on 2 processes, 32 + 32 + 31 on 3).
TEST_SET = ("DATASETS.TESTS", "('Market1501',)")


def _env(datasets_root, **extra):
    return {
        **os.environ,
        "FASTREID_DATASETS": str(datasets_root),
        "CUDA_VISIBLE_DEVICES": "",
        **extra,
    }


def _start(argv, datasets_root, **extra_env):
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=REPO,
        env=_env(datasets_root, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(argv, datasets_root, timeout=600, **extra_env):
    """``python argv...`` from the repository root; (exit status, output)."""
    proc = _start(argv, datasets_root, **extra_env)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _results(log):
    """The last evaluation results (full precision) logged in ``log``."""
    found = re.findall(r"Evaluation results for \w+: (\{.*\})", log)
    assert found, log[-3000:]
    return json.loads(found[-1])


def _digests(log):
    return re.findall(
        r"(Epoch \d+): weights and buffers identical on all 2 ranks \(digest (\w+)\)", log
    )


@pytest.fixture(scope="module")
def market95(datasets_root):
    """SynthReID-tiny in Market-1501's layout, one gallery image fewer: 95 test images."""
    source = generate_synthreid(datasets_root, "tiny")
    target = datasets_root / "Market-1501-v15.09.15"
    if not target.exists():
        for split in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
            shutil.copytree(source / split, target / split)
        os.remove(target / GALLERY_DIR / sorted(os.listdir(target / GALLERY_DIR))[-1])
    count = len(os.listdir(target / QUERY_DIR)) + len(os.listdir(target / GALLERY_DIR))
    assert count == 95 and count % 2 and count % 3
    return datasets_root


@pytest.fixture(scope="module")
def mdpr_run(market95, tmp_path_factory):
    """MDPR's tiny config, 1 epoch on 2 CPU processes (``--num-gpus 2`` without a GPU)."""
    out = tmp_path_factory.mktemp("mdpr2") / "run"
    status, log = _run(
        [SCRIPTS["MDPR"], "--config-file", MDPR_TINY, "--num-gpus", "2", *QUIET, *TEST_SET,
         "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", str(out)],
        market95,
    )  # fmt: skip
    assert status == 0, log[-5000:]
    return out, log


@pytest.mark.slow
def test_two_processes_are_one_group_with_one_model_and_one_set_of_files(mdpr_run):
    out, _ = mdpr_run
    rank0, rank1 = _read(out / "log.txt"), _read(out / "log.txt.rank1")
    for rank, log in enumerate((rank0, rank1)):
        assert f"Process group: backend gloo, world size 2, rank {rank}" in log
        assert f"Seeded the random generators with {rank}" in log  # per rank, reproducibly
    # DDP keeps the weights equal; the BatchNorm statistics are averaged before the model is
    # evaluated or saved: byte for byte the same on both ranks.
    assert _digests(rank0) == _digests(rank1) and len(_digests(rank0)) == 1
    # Only rank 0 writes: one set of checkpoints, one config.yaml; rank 1 its own log.
    assert "Saving checkpoint" in rank0 and "Saving checkpoint" not in rank1
    files = set(os.listdir(out))
    assert {"config.yaml", "last_checkpoint", "model_final.pth", "model_best.pth"} <= files
    assert {f for f in files if "rank" in f} == {"log.txt.rank1"}
    # no probe or temporary file left; the lock file stays (removing it would race a new run)
    assert [f for f in files if f.startswith(".")] == [".kdreid.lock"]


@pytest.mark.slow
def test_in_run_evaluation_is_eval_only_of_the_checkpoint_on_1_2_and_3_processes(
    mdpr_run, market95, tmp_path
):
    """2 processes as 2 "machines" of one process each; 3 with --num-gpus 3."""
    out, _ = mdpr_run
    in_run = _results(_read(out / "log.txt"))
    assert in_run["mAP"] > 0
    flags = ["--config-file", MDPR_TINY, "--eval-only"]
    weights = str(out / "model_final.pth")
    opts = [*QUIET, *TEST_SET, "KDREID.SPEED", "False", "MODEL.WEIGHTS", weights]
    runs = {}
    for n in (1, 3):
        status, log = _run(
            [SCRIPTS["MDPR"], *flags, "--num-gpus", str(n), *opts,
             "OUTPUT_DIR", str(tmp_path / f"e{n}")],
            market95,
        )  # fmt: skip
        assert status == 0, log[-3000:]
        runs[n] = log
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    machines = [
        _start(
            [
                SCRIPTS["MDPR"],
                *flags,
                "--num-machines",
                "2",
                "--machine-rank",
                str(rank),
                "--dist-url",
                url,
                *opts,
                "OUTPUT_DIR",
                str(tmp_path / "e2"),
            ],
            market95,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    runs[2] = outputs[0]
    assert "world size 3" in _read(tmp_path / "e3" / "log.txt.rank2")
    assert "world size 2" in _read(tmp_path / "e2" / "log.txt.rank1")
    for n, log in runs.items():
        assert _results(log) == in_run, n


@pytest.mark.slow
def test_resume_on_two_processes_continues_where_it_stopped(mdpr_run, market95, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(mdpr_run[0], out)
    status, log = _run(
        [SCRIPTS["MDPR"], "--config-file", MDPR_TINY, "--num-gpus", "2", "--resume", *QUIET,
         *TEST_SET, "SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", str(out)],
        market95,
    )  # fmt: skip
    assert status == 0, log[-5000:]
    assert "saved after 1 of 2 epochs: training continues from iteration 6" in log
    seeds = [
        re.search(r"Resuming at epoch 1: seeded the random generators with (\d+)", _read(p))[1]
        for p in (out / "log.txt", out / "log.txt.rank1")
    ]
    assert seeds[0] != seeds[1]
    assert [e for e, _ in _digests(_read(out / "log.txt.rank1"))][-1] == "Epoch 2"
    final = torch.load(out / "model_final.pth", weights_only=True, map_location="cpu")
    assert final["epoch"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("project", ["SpeedKD", "FactorizedKD"])
def test_each_project_trains_on_two_processes(project, tiny_teacher, datasets_root, tmp_path):
    """MDPR's is :func:`mdpr_run`; SpeedKD distils the tiny teacher; FactorizedKD trains a
    partial-view teacher (its own trainer, which crops the view)."""
    if project == "SpeedKD":
        config = os.path.join(REPO, "configs", "SpeedKD", "Synthetic", "tiny_kd.yml")
        extra = ("KD.MODEL_WEIGHTS", f"('{tiny_teacher[1]}',)")
    else:
        config = os.path.join(REPO, "configs", "FactorizedKD", "Synthetic", "tiny_teacher.yml")
        extra = ("MODEL.FKD.VIEW", "Dn1")
    out = tmp_path / "run"
    status, log = _run(
        [SCRIPTS[project], "--config-file", config, "--num-gpus", "2", *QUIET, *extra,
         "SOLVER.MAX_EPOCH", "1", "SOLVER.STEPS", "[1]", "TEST.EVAL_PERIOD", "1",
         "OUTPUT_DIR", str(out)],
        datasets_root,
    )  # fmt: skip
    assert status == 0, log[-5000:]
    assert _digests(_read(out / "log.txt")) == _digests(_read(out / "log.txt.rank1")) != []
    assert _results(log)["mAP"] > 0
    assert (out / "model_final.pth").is_file()


@pytest.mark.slow
def test_mdpr_without_cross_entropy_through_torchrun(datasets_root, tmp_path):
    """torchrun's processes form one group (not two runs of world size 1 in one folder), and
    MDPR's classifiers, which get no gradient without the cross-entropy, do not stop DDP."""
    out = tmp_path / "run"
    status, log = _run(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         SCRIPTS["MDPR"], "--config-file", MDPR_TINY, *QUIET, "MODEL.LOSSES.NAME",
         "('TripletLoss',)", "SOLVER.MAX_EPOCH", "1", "OUTPUT_DIR", str(out)],
        datasets_root,
    )  # fmt: skip
    assert status == 0, log[-5000:]
    training = log.split("Starting training")[-1]  # the loss line sums MDPR's terms by kind
    assert "triplet: " in training and "cls" not in training
    with open(out / "metrics.json") as f:
        terms = set().union(*(json.loads(line) for line in f))
    assert "loss_hard_global_triplet" in terms and not any(t.endswith("_cls") for t in terms)
    for rank, name in enumerate(("log.txt", "log.txt.rank1")):
        assert f"world size 2, rank {rank}" in _read(out / name)
    assert _digests(_read(out / "log.txt")) == _digests(_read(out / "log.txt.rank1")) != []


FAILING = """
import os, signal, sys
sys.path.insert(0, {project!r})
import mdpr  # noqa: F401
from fastreid.utils import comm
from kdreid.engine import Trainer, default_argument_parser, launch_main


class Failing(Trainer):
    def run_step(self):
        if comm.get_rank() == 1 and self.iter == 1:
            if {how!r} == "raise":
                raise RuntimeError("rank one breaks")
            os.kill(os.getpid(), signal.SIGKILL)
        super().run_step()


if __name__ == "__main__":
    launch_main(default_argument_parser().parse_args(), Failing)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "die"])
def test_a_rank_that_fails_ends_the_run_naming_it(how, datasets_root, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(
        textwrap.dedent(FAILING.format(project=os.path.join(REPO, "projects", "MDPR"), how=how))
    )
    start = time.monotonic()
    status, log = _run(
        [str(script), "--config-file", TINY, "--num-gpus", "2", *QUIET, "OUTPUT_DIR",
         str(tmp_path / "run")],
        datasets_root,
        timeout=300,
    )  # fmt: skip
    assert status == 1, log[-3000:]
    assert time.monotonic() - start < 240  # rank 0, waiting in a collective, was ended
    if how == "raise":
        assert "error: rank 1 raised RuntimeError: rank one breaks; the run stopped" in log
        assert "rank one breaks" in _read(tmp_path / "run" / "log.txt.rank1")
    else:
        assert f"error: rank 1 was killed by {signal.Signals.SIGKILL.name}; the run stopped" in log
    assert not (tmp_path / "run" / "model_final.pth").exists()


@pytest.mark.slow
def test_a_port_in_use_is_one_line(datasets_root, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        status, log = _run(
            [SCRIPTS["MDPR"], "--config-file", TINY, "--num-gpus", "2", "--dist-url",
             f"tcp://127.0.0.1:{port}", "OUTPUT_DIR", str(tmp_path / "run")],
            datasets_root,
            timeout=120,
        )  # fmt: skip
    assert status == 2
    assert log.strip().splitlines() == [
        f"error: --dist-url tcp://127.0.0.1:{port}: port {port} is in use on this machine "
        "(another run?); pick another port, or --dist-url auto on one machine."
    ]
