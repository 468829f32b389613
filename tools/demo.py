"""The demo: train FastReID's bag-of-tricks baseline on SynthReID on the CPU; show what it learned.

    python tools/demo.py [--config-file configs/Synthetic/bagtricks_R18.yml] [--output-dir DIR]
                         [KEY VALUE ...]

Generates SynthReID-small under ``$FASTREID_DATASETS`` (default ``datasets/``) on first use,
evaluates the untrained model, trains it, evaluates it again and prints both side by side.
"""

import argparse
import logging
import os
import time

from tabulate import tabulate

os.environ.setdefault("FASTREID_DATASETS", "datasets")  # FastReID reads it once, at import

from fastreid.utils.logger import setup_logger  # noqa: E402

from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device  # noqa: E402
from kdreid.engine import Trainer, seed  # noqa: E402
from kdreid.engine.defaults import report_user_errors  # noqa: E402

METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", default="configs/Synthetic/bagtricks_R18.yml")
    parser.add_argument("--output-dir", default="logs/demo")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def build_cfg(args):
    cfg = get_cfg()
    merge_from_file(cfg, args.config_file)
    merge_from_list(cfg, ["OUTPUT_DIR", args.output_dir, *args.opts])
    for name in ("fastreid", "kdreid"):
        setup_logger(cfg.OUTPUT_DIR, name=name)
    seed(cfg)
    resolve_device(cfg)
    cfg.freeze()
    return cfg


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def results_table(rows):
    headers = ["model", *METRICS, "time (s)"]
    body = [
        [name, *(f"{res[m]:.1f}" for m in METRICS), f"{seconds:.0f}"] for name, res, seconds in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github")


def run(args):
    cfg = build_cfg(args)
    logger = logging.getLogger("kdreid.demo")
    start = time.perf_counter()
    trainer = Trainer(cfg)  # generates the dataset on first use
    logger.info("Evaluating the untrained model")
    untrained, eval_seconds = timed(Trainer.test, cfg, trainer.model)
    trainer.resume_or_load(resume=False)
    trained, train_seconds = timed(trainer.train)
    rows = [
        ("untrained", untrained, eval_seconds),
        (f"trained ({cfg.SOLVER.MAX_EPOCH} epochs)", trained, train_seconds),
    ]
    print(
        f"\nSynthReID {cfg.DATASETS.TESTS[0]}, {cfg.MODEL.META_ARCHITECTURE} "
        f"ResNet-{cfg.MODEL.BACKBONE.DEPTH.rstrip('x')} on {cfg.MODEL.DEVICE} "
        f"(metrics in %, time = evaluation / training incl. its evaluations)\n"
    )
    print(results_table(rows))
    print(f"\nTotal {time.perf_counter() - start:.0f} s. Checkpoints and logs: {cfg.OUTPUT_DIR}")
    return untrained, trained


def main(argv=None):
    report_user_errors(run, parse_args(argv))


if __name__ == "__main__":
    main()
