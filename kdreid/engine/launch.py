"""What every project's ``train_net.py`` runs: FastReID's flags, then training or ``--eval-only``.

A project's ``train_net.py`` is::

    import mdpr  # noqa: F401  (registers the project's models)
    from kdreid.engine import default_argument_parser, launch_main

    if __name__ == "__main__":
        launch_main(default_argument_parser().parse_args())

The walk: :func:`launch_main` starts the processes, each runs :func:`main`: :func:`setup` (config,
checks, logging, seed), then either :func:`evaluate_only` or the :class:`Trainer` (built and
checked), :func:`write_config`, training.
"""

import argparse
import dataclasses
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fastreid.engine import default_argument_parser as fastreid_argument_parser
from torch.distributed.elastic.multiprocessing.errors import record

from kdreid.engine import distributed
from kdreid.engine.evaluate import evaluate_only
from kdreid.engine.setup import claim_output_dir, load_config, setup, write_config
from kdreid.engine.trainer import Trainer
from kdreid.errors import log_to_files_only, report_user_errors
from kdreid.meta_arch import distils

__all__ = ["default_argument_parser", "launch_main", "main"]

LAUNCH_HELP = """\
Processes: --num-gpus N starts N processes on this machine, one GPU each with NCCL, or N CPU
processes with gloo where torch sees no GPU; SOLVER.IMS_PER_BATCH stays the global batch
(each process draws IMS_PER_BATCH / N images). Several machines: run the same command on each
with --num-machines M --machine-rank 0..M-1 --dist-url tcp://<machine 0's address>:<port>.
torchrun (torchrun --nproc_per_node N train_net.py ...) works too: its processes form one group.
"""


def default_argument_parser():
    """FastReID's parser, same flags, with a description, how the processes are started, and
    ``--dist-timeout``; ``--dist-url`` defaults to ``auto`` (a free port on this machine)."""
    parser = fastreid_argument_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's paragraphs
    parser.description = (
        "Train the model a FastReID config describes (kdreid: on CPU or GPU, with this "
        "project's models), or evaluate a checkpoint with --eval-only."
    )
    parser.epilog = (
        "KEY VALUE config options come last, after every flag, e.g. --config-file F.yml "
        "--eval-only MODEL.WEIGHTS model.pth OUTPUT_DIR logs/x. OUTPUT_DIR defaults to "
        "logs/<config path under configs/>.\n\n" + LAUNCH_HELP
    )
    for action in parser._actions:
        if action.dest == "opts":
            action.help = "config options as KEY VALUE pairs (e.g. SOLVER.MAX_EPOCH 10), last"
        elif action.dest == "num_gpus":
            action.help = "processes per machine: GPUs (NCCL), or CPU processes (gloo) without one"
        elif action.dest == "dist_url":
            action.default = "auto"
            action.help = (
                "where the processes meet: tcp://HOST:PORT on machine 0 (several machines), "
                "or auto: a free port on this machine"
            )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into an OUTPUT_DIR that holds another run's checkpoints, replacing them "
        "(without it such a folder is refused; --resume continues that run instead)",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="how long a process waits for the others in a collective before the run fails "
        "(a rank that stopped on another machine)",
    )
    return parser


def training_provenance(cfg, config_file, model):
    """What the checkpoints of this run say about the model they hold
    (:data:`kdreid.checkpoint.PROVENANCE_KEY`), read back by ``--eval-only``'s record."""
    stem = os.path.splitext(os.path.basename(config_file))[0] if config_file else ""
    return {
        "name": cfg.KDREID.NAME or stem or cfg.MODEL.META_ARCHITECTURE,
        "config": config_file or "",
        "distilled": bool(distils(model)),
    }


def main(args, trainer_cls=Trainer):
    """Train (or with ``--eval-only`` evaluate) the model the config describes.

    Returns:
        dict: the evaluation results.
    """
    cfg = setup(args)
    if args.eval_only:
        return evaluate_only(cfg, trainer_cls, config_file=args.config_file)
    overwrite = getattr(args, "overwrite", False)
    with claim_output_dir(cfg.OUTPUT_DIR, resume=args.resume, overwrite=overwrite):
        trainer = trainer_cls(cfg)
        trainer.checkpointer.provenance = training_provenance(
            trainer.cfg, args.config_file, trainer.model
        )
        trainer.resume_or_load(resume=args.resume)
        write_config(trainer.cfg)  # the model, the data and the weights are in place
        return trainer.train()


def _main_reporting_errors(args, trainer_cls, rank=None):
    """:func:`main`, bad input as one line (``rank R:`` first on several processes), Ctrl-C as
    how to continue (said by rank 0 only)."""
    prefix = "" if rank is None else f"rank {rank}: "
    try:
        return report_user_errors(main, args, trainer_cls, prefix=prefix)
    except KeyboardInterrupt:
        if rank in (None, 0):
            again = "" if args.resume else ", adding --resume"
            print(
                "\ninterrupted: run the same command again" + again + " to continue from the "
                "last checkpoint (written every SOLVER.CHECKPOINT_PERIOD epochs)."
                if not args.eval_only
                else "\ninterrupted.",
                file=sys.stderr,
            )
        sys.exit(130)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the processes of one machine meet."""

    backend: str
    dist_url: str
    world_size: int
    per_machine: int
    machine_rank: int
    timeout_s: float
    threads: int  # CPU threads per process; 0: torch's default


def _worker(local_rank, args, trainer_cls, plan):
    """One process of a run started by :func:`launch_main`."""
    rank = plan.machine_rank * plan.per_machine + local_rank
    if plan.threads:
        torch.set_num_threads(plan.threads)
    report_user_errors(
        distributed.init_process_group,
        plan.backend,
        plan.dist_url,
        plan.world_size,
        rank,
        local_rank,
        plan.timeout_s,
        plan.per_machine,
        prefix=f"rank {rank}: ",
    )
    _run_in_group(args, trainer_cls, rank)


def _run_in_group(args, trainer_cls, rank):
    try:
        result = _main_reporting_errors(args, trainer_cls, rank)
    except Exception as exc:
        log_to_files_only(f"Rank {rank} failed", exc)  # its log file; the console gets it once
        raise
    dist.destroy_process_group()
    return result


def _requested_device(cfg):
    device = str(cfg.MODEL.DEVICE)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device if torch.cuda.is_available() else "cpu"


def _fail(message, status=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _plan(args):
    """Check the flags and the config for ``args.num_gpus`` processes on each of
    ``args.num_machines`` machines, before any process starts (one error line, status 2)."""
    world_size = args.num_gpus * args.num_machines
    if args.num_gpus < 1 or args.num_machines < 1:
        _fail("--num-gpus and --num-machines must be at least 1.")
    if not 0 <= args.machine_rank < args.num_machines:
        _fail(f"--machine-rank {args.machine_rank} is not in 0..{args.num_machines - 1}.")
    cfg = report_user_errors(load_config, args, world_size)
    device = _requested_device(cfg)
    available = torch.cuda.device_count()
    if device.startswith("cuda") and args.num_gpus > available:
        _fail(
            f"--num-gpus {args.num_gpus} but torch sees {available} GPU(s) on this machine; "
            f"use --num-gpus {available} or fewer (or MODEL.DEVICE cpu for CPU processes)."
        )
    dist_url = args.dist_url
    if dist_url == "auto":
        if args.num_machines > 1:
            _fail(
                f"--num-machines {args.num_machines} needs --dist-url tcp://<machine 0's address>:"
                "<port>, the same on every machine."
            )
        dist_url = f"tcp://127.0.0.1:{distributed.free_port()}"
    if args.machine_rank == 0:
        report_user_errors(distributed.check_port_free, dist_url)
    threads = 0
    if not device.startswith("cuda") and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // args.num_gpus)
    return _Plan(
        backend=distributed.backend_for(device),
        dist_url=dist_url,
        world_size=world_size,
        per_machine=args.num_gpus,
        machine_rank=args.machine_rank,
        timeout_s=args.dist_timeout,
        threads=threads,
    )


def _exception_line(trace, limit=300):
    """The exception's own first line (``Type: message``) of a formatted traceback: the first
    unindented line after the last frame, cut at ``limit`` characters; a DDP reduction error gets
    the key that fixes it."""
    lines = trace.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    after = lines[frames[-1] + 1 :] if frames else lines[-1:]
    line = next((x for x in after if x.strip()), "an exception").strip()
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    if "Expected to have finished reduction" in trace:
        line += " (parameters without a gradient: set KDREID.FIND_UNUSED_PARAMETERS True)"
    return line


def _join(context, plan):
    """Wait for the processes; the first that fails ends them all (torch terminates the others)
    and is named. Returns the exit status."""
    try:
        while not context.join(grace_period=10):
            pass
    except mp.ProcessRaisedException as exc:
        rank = plan.machine_rank * plan.per_machine + exc.error_index
        trace = str(exc).strip()
        print(trace, file=sys.stderr)
        last = _exception_line(trace)
        others = plan.per_machine - 1
        log = f"log.txt.rank{rank}" if rank else "log.txt"
        print(
            f"error: rank {rank} raised {last}; the run stopped"
            + (f" (its {others} other process(es) here were ended)" if others else "")
            + f". Its traceback is above and in OUTPUT_DIR/{log}.",
            file=sys.stderr,
        )
        return 1
    except mp.ProcessExitedException as exc:
        rank = plan.machine_rank * plan.per_machine + exc.error_index
        if exc.exit_code in (2, 130):  # bad input (its one line is printed) or interrupted
            return exc.exit_code
        how = (
            f"was killed by {exc.signal_name}"
            if exc.signal_name
            else f"exited with status {exc.exit_code}"
        )
        print(f"error: rank {rank} {how}; the run stopped.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        for process in context.processes:  # they got the Ctrl-C too; give them a moment
            process.join(10)
            if process.is_alive():
                process.terminate()
        return 130
    return 0


@record
def _torchrun_process(args, trainer_cls):
    """One process started by ``torchrun``: join its group (``env://``) and run."""
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    per_machine = os.environ.get("LOCAL_WORLD_SIZE")
    cfg = report_user_errors(load_config, args, world_size, prefix=f"rank {rank}: ")
    report_user_errors(
        distributed.init_process_group,
        distributed.backend_for(_requested_device(cfg)),
        "env://",
        world_size,
        rank,
        local_rank,
        args.dist_timeout,
        int(per_machine) if per_machine else None,
        prefix=f"rank {rank}: ",
    )
    return _run_in_group(args, trainer_cls, rank)


def launch_main(args, trainer_cls=Trainer):
    """Run :func:`main` on every process of the run.

    - Started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set):
      this process joins torchrun's group; ``--num-gpus`` and the other launch flags are torchrun's
      business and ignored.
    - ``--num-gpus N`` (per machine) x ``--num-machines M``: N processes here, ranks
      ``machine_rank * N ...``, meeting at ``--dist-url``: NCCL with one GPU each on CUDA, gloo on
      the CPU. The first process to fail ends the others here; a rank elsewhere that stops makes
      the others fail within ``--dist-timeout``.
    - One process in all: :func:`main` runs here, without a process group.

    Bad input (:class:`kdreid.errors.UserInputError`) is printed as one message, exit status 2.
    """
    if distributed.started_by_torchrun():
        return _torchrun_process(args, trainer_cls)
    if args.num_gpus * args.num_machines == 1:
        return _main_reporting_errors(args, trainer_cls)
    plan = _plan(args)
    context = mp.start_processes(
        _worker,
        args=(args, trainer_cls, plan),
        nprocs=plan.per_machine,
        join=False,
        daemon=False,
        start_method="spawn",
    )
    status = _join(context, plan)
    if status:
        sys.exit(status)
    return None
