"""Run one re-ranking method in a fresh process and report its time and peak memory.

    python benchmarks/_peak_memory.py METHOD INPUT_DIR [--output OUT.npy] [--repeats N] [...]

Used by ``retrieval.py``: the peak memory of NumPy/torch code is only visible as the process's
high-water mark of resident memory, ``VmHWM`` in ``/proc/self/status``, so each method runs alone
in a process that has loaded nothing but its inputs. Methods:

    fastreid  FastReID's NumPy ``re_ranking(q_g, q_q, g_g, ...)`` of ``q_g.npy``, ``q_q.npy``,
              ``g_g.npy`` in INPUT_DIR;
    kdreid    kdreid's ``re_ranking`` of the same matrices;
    features  kdreid's ``re_ranking_features`` of ``q_feat.npy``, ``g_feat.npy`` in INPUT_DIR.

Prints one JSON line: ``times`` (seconds of each timed run, after ``--warmup`` untimed runs),
``hwm_before`` and ``hwm_after`` (VmHWM in bytes after loading the inputs and after the runs),
``input_bytes`` and the output's shape. The last output is saved to ``--output`` when given.
"""

import argparse
import json
import os
import sys

import numpy as np

from kdreid.benchmark import time_calls


def vm_hwm():
    """The process's peak resident memory (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def load(directory, names):
    return [np.load(os.path.join(directory, f"{name}.npy")) for name in names]


def main(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("method", choices=["fastreid", "kdreid", "features"])
    parser.add_argument("input_dir")
    parser.add_argument("--output", help="save the last output here (.npy)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--k1", type=int, default=20)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--lambda-value", type=float, default=0.3)
    parser.add_argument("--metric", default="euclidean")
    args = parser.parse_args(argv)

    import kdreid  # noqa: F401  (repairs fastreid before it is imported)

    params = {"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value}
    if args.method == "fastreid":
        from fastreid.evaluation.rerank import re_ranking

        inputs = load(args.input_dir, ["q_g", "q_q", "g_g"])
    elif args.method == "kdreid":
        from kdreid.evaluation.rerank import re_ranking

        inputs = load(args.input_dir, ["q_g", "q_q", "g_g"])
    else:
        from kdreid.evaluation.rerank import re_ranking_features

        def re_ranking(q_feat, g_feat, **kwargs):
            return re_ranking_features(q_feat, g_feat, metric=args.metric, **kwargs)

        inputs = load(args.input_dir, ["q_feat", "g_feat"])

    hwm_before = vm_hwm()
    # one output held at a time: time_calls releases the last one before each call
    times, out = time_calls(
        lambda: re_ranking(*inputs, **params), warmup=args.warmup, iters=args.repeats
    )
    hwm_after = vm_hwm()
    out = np.asarray(out)
    if args.output:
        np.save(args.output, out)
    report = {
        "method": args.method,
        "times": times,
        "hwm_before": hwm_before,
        "hwm_after": hwm_after,
        "input_bytes": int(sum(x.nbytes for x in inputs)),
        "shape": list(out.shape),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
