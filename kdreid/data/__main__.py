"""Generate SynthReID ahead of time: ``python -m kdreid.data --size market [--root datasets]``.

Training generates the dataset on first use anyway; this command does it up front and reports
where it went and how long it took.
"""

import argparse
import logging
import os
import time

from kdreid.cli import at_least, check_output_dir, report_user_errors
from kdreid.data.synthreid import SYNTHREID_SIZES, generate_synthreid


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m kdreid.data", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", choices=sorted(SYNTHREID_SIZES), default="small")
    parser.add_argument(
        "--root",
        default=os.getenv("FASTREID_DATASETS", "datasets"),
        help="datasets folder (default: $FASTREID_DATASETS or datasets/)",
    )
    parser.add_argument("--seed", type=at_least(0), default=0, help="0 or more (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # the line below says it
    start = time.perf_counter()
    path = report_user_errors(_generate, args)  # bad --root, a folder of another seed: one line
    spec = SYNTHREID_SIZES[args.size]
    print(
        f"SynthReID-{args.size}: {sum(spec.counts.values())} images in {path} "
        f"({time.perf_counter() - start:.1f} s)"
    )


def _generate(args):
    if not os.path.exists(os.path.join(args.root, f"SynthReID-{args.size}")):
        check_output_dir(args.root, "--root")  # a dataset already there is only checked
    return generate_synthreid(args.root, args.size, seed=args.seed)


if __name__ == "__main__":
    main()
