"""Write the speed/accuracy trade-off table (markdown) and plot (PNG) from speed/accuracy records.

    python projects/SpeedKD/tradeoff.py logs/speedkd --output-dir logs/speedkd [--reference NAME]
        [--title TITLE]

Each argument is a ``speed_accuracy.json`` file or a folder searched recursively for them; they
come from ``train_net.py --eval-only`` (deep models, with ``KDREID.NAME`` naming the row) and
``projects/SpeedKD/lomo_xqda.py``. ``benchmarks/speedkd_evidence.py`` runs everything and calls
this at the end.
"""

import argparse
import sys

from speed_kd.tradeoff import find_records, write_tradeoff


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("records", nargs="+", help="speed_accuracy.json files or folders")
    parser.add_argument(
        "--output-dir",
        default=".",
        help="folder to write tradeoff.md and tradeoff.png into, created if missing "
        "(default: the current folder)",
    )
    parser.add_argument("--reference", default=None, help="row the speed-up divides")
    parser.add_argument("--title", default="Speed/accuracy trade-off", help="the plot's title")
    args = parser.parse_args(argv)
    try:
        records = find_records(args.records)
        table = write_tradeoff(records, args.output_dir, args.reference, args.title)
    except (OSError, ValueError) as exc:  # unreadable records, unwritable --output-dir
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(table)
    print(f"\nWrote {args.output_dir}/tradeoff.md and tradeoff.png")


if __name__ == "__main__":
    main()
