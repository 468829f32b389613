"""The demo: knowledge distillation for ReID on SynthReID, on the CPU, teacher to student.

    python benchmarks/demo.py [--student resnet18_64x32] [--epochs 16] [--output-dir logs/demo]
                         [--seed 0]

1. trains the teacher, a bag-of-tricks ResNet-18 at 128x64
   (``configs/Synthetic/bagtricks_R18.yml``);
2. trains the student (``configs/SpeedKD/Synthetic/<student>.yml``; by default the same network at
   64x32, 2.4x fewer multiply-adds: MobileNets trained from scratch do not learn in a CPU
   schedule on SynthReID, see projects/SpeedKD/README.md), alone;
3. trains the same student with the same schedule and seed, distilled from the teacher
   (Hinton KD, ``kd_<student>.yml``);

all three with the same schedule (``--epochs``, 16 by default so that the demo ends within 15
minutes on two CPU cores; the configs' own 20 epochs are what ``benchmarks/speedkd_evidence.py``
measures over several seeds). It then prints the three side by side: accuracy, and speed measured
by ``--eval-only`` (params, multiply-adds, batch-1 latency, throughput). SynthReID-small is
generated under ``$FASTREID_DATASETS`` (default ``datasets/``) on first use. A model whose run
finished before (its ``speed_accuracy.json`` exists under ``--output-dir``) is not trained again:
delete the folder to start over.
"""

import argparse
import os
import time

from tabulate import tabulate

from harness.runs import main_of_runs
from harness.speedkd import STUDENTS, missing_student, train_and_record
from kdreid.benchmark import OTHER_LOAD_WARNING
from kdreid.cli import at_least, check_output_dir

TEACHER = "configs/Synthetic/bagtricks_R18.yml"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--student", type=student, default="resnet18_64x32",
        help=f"a student name: {STUDENTS}/<name>.yml alone, kd_<name>.yml distilled",
    )  # fmt: skip
    parser.add_argument("--output-dir", default="logs/demo", help="one folder per model")
    parser.add_argument("--seed", type=int, default=0, help="KDREID.SEED of every run")
    parser.add_argument(
        "--epochs", type=at_least(1), default=16, help="training epochs of every model"
    )
    return parser.parse_args(argv)


def student(name):
    """An argparse ``type``: a student with both configs (alone and distilled)."""
    if (problem := missing_student(name)) is not None:
        raise argparse.ArgumentTypeError(problem)
    return name


def progress(label):
    def echo(line):
        if "eta:" not in line:  # a stage of the run (its evaluation)
            print(f"\r  {label}: {line}", " " * 20, end="", flush=True)
            return
        # FastReID's periodic line: "... eta: 0:01:02  epoch/iter: 3/80  total_loss: ..."
        eta = line.split("eta:")[1].split()[0]
        step = line.split("epoch/iter:")[1].split()[0] if "epoch/iter:" in line else "?"
        print(f"\r  {label}: epoch/iteration {step}, eta {eta}   ", end="", flush=True)

    return echo


def table(runs):
    headers = ["model", "mAP", "Rank-1", "Rank-5", "mINP", "params (M)", "mult-adds (G)",
               "latency (ms)", "images/s", "training (s)"]  # fmt: skip
    rows = []
    for label, run in runs:
        r, m = run.record, run.record["metrics"]
        rows.append([
            label, f"{m['mAP']:.1f}", f"{m['Rank-1']:.1f}", f"{m['Rank-5']:.1f}",
            f"{m['mINP']:.1f}", f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e9:.3f}",
            f"{r['latency_ms']:.1f}", f"{r['throughput']:.0f}",
            f"{run.train_seconds:.0f}" if run.train_seconds else "earlier",
        ])  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github")


def run(args):
    out = os.path.abspath(args.output_dir)
    check_output_dir(out)  # a file, a read-only place: one line now, not after the teacher
    os.environ.setdefault("FASTREID_DATASETS", "datasets")
    start = time.perf_counter()
    student = os.path.join(STUDENTS, f"{args.student}.yml")  # from REPO, where the runs run
    kd_student = os.path.join(STUDENTS, f"kd_{args.student}.yml")

    # The learning rate drops tenfold after three quarters of the epochs, as in the configs.
    schedule = ["SOLVER.MAX_EPOCH", str(args.epochs), "SOLVER.STEPS", f"[{args.epochs * 3 // 4}]"]
    stages = []
    print("1/3 teacher: ResNet-18, bag of tricks", flush=True)
    teacher = train_and_record("ResNet-18 (teacher)", TEACHER, os.path.join(out, "teacher"),
                               args.seed, schedule, echo=progress("teacher"))  # fmt: skip
    stages.append(("teacher ResNet-18", teacher))
    print(f"\n2/3 student alone: {args.student}", flush=True)
    plain = train_and_record(args.student, student, os.path.join(out, args.student), args.seed,
                             schedule, echo=progress("student"))  # fmt: skip
    stages.append((f"student {args.student}, alone", plain))
    print(f"\n3/3 student distilled from the teacher: {args.student} + KD", flush=True)
    kd = train_and_record(
        f"{args.student} +KD", kd_student, os.path.join(out, f"{args.student}_kd"), args.seed,
        opts=[*schedule, "KD.MODEL_WEIGHTS", f"('{teacher.weights}',)"],
        echo=progress("student + KD"),
    )  # fmt: skip
    stages.append((f"student {args.student}, distilled", kd))
    print("\n\n" + report(stages, args.seed, args.epochs))
    print(f"Total {time.perf_counter() - start:.0f} s. Checkpoints and logs: {out}")
    return teacher, plain, kd


def report(stages, seed, epochs):
    """The demo's result: the table of the three runs (teacher, student alone, student distilled),
    a warning for speeds measured on a busy CPU, and what distillation changed."""
    (_, teacher), (_, plain), (_, kd) = stages
    record = teacher.record
    lines = [
        f"{record['dataset']}, seed {seed}; accuracy in %; speed of the deployed model on "
        f"{record['device']} ({record['device_name']}): latency at batch 1, throughput at batch "
        f"{record['throughput_batch']}; {epochs} epochs each; training time includes its "
        "evaluations.\n",
        table(stages),
    ]
    busy = [
        label for label, r in stages if (r.record.get("other_cpu_load") or 0) >= OTHER_LOAD_WARNING
    ]
    if busy:
        lines.append(
            f"\nWARNING: other processes kept the CPU busy while the speed of {', '.join(busy)} "
            "was measured: those latencies and throughputs are unreliable."
        )
    speedup = kd.record["throughput"] / teacher.record["throughput"]
    gain = kd.record["metrics"]["mAP"] - plain.record["metrics"]["mAP"]
    lines.append(
        f"\nThe distilled student has {speedup:.1f}x the teacher's throughput and moves "
        f"{gain:+.1f} mAP from the student trained alone (one seed: the evidence over several "
        "seeds is benchmarks/speedkd_evidence.py)."
    )
    return "\n".join(lines)


def main(argv=None):
    main_of_runs(run, parse_args(argv))  # a folder of other settings, a failed run: one line


if __name__ == "__main__":
    main()
