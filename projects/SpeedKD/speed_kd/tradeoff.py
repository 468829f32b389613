"""The speed/accuracy trade-off: one table and one plot from the models' speed/accuracy records.

A record is what ``--eval-only`` (deep models) and ``projects/SpeedKD/lomo_xqda.py`` (LOMO+XQDA)
write to ``speed_accuracy.json`` (schema in :mod:`kdreid.benchmark`). Records with the same name
are runs of one model with different seeds: the table shows the mean ± standard deviation of their
accuracy and the median of their speed figures.
"""

import glob
import json
import math
import os
import statistics
from collections import OrderedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from kdreid.benchmark import read_records  # noqa: E402
from kdreid.checkpoint import save_figure, write_text  # noqa: E402

__all__ = [
    "find_records",
    "group_records",
    "markdown_table",
    "plot_tradeoff",
    "summarise",
    "write_tradeoff",
]


def group_records(records):
    """Group records by ``name`` (runs of one model, e.g. several seeds), keeping the order in
    which names first appear.

    Returns:
        OrderedDict[str, list[dict]]

    Raises:
        ValueError: records of one name are of different models (dataset, parameters or
            multiply-adds differ): a row would average them.
    """
    groups = OrderedDict()
    for record in records:
        runs = groups.setdefault(record["name"], [])
        for key in ("dataset", "params", "macs"):
            if runs and record.get(key) != runs[0].get(key):
                raise ValueError(
                    f"Two records named '{record['name']}' differ in {key} "
                    f"({runs[0].get(key)} and {record.get(key)}): they are different models. "
                    "Give each its own KDREID.NAME (the record's name) when evaluating it."
                )
        runs.append(record)
    return groups


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(records):
    """One row per model name: accuracy mean/std over its runs, median speed figures.

    Returns:
        list[dict]: keys ``name``, ``kind``, ``runs``, ``mAP``, ``mAP_std``, ``Rank-1``,
        ``Rank-1_std``, ``params``, ``macs``, ``latency_ms``, ``throughput``,
        ``throughput_batch``, ``device``, ``device_name``, ``dataset``.
    """
    rows = []
    for name, runs in group_records(records).items():
        row = {"name": name, "kind": runs[0].get("kind", "deep"), "runs": len(runs)}
        for metric in ("mAP", "Rank-1"):
            row[metric], row[f"{metric}_std"] = _mean_std([r["metrics"].get(metric) for r in runs])
        for key in ("params", "macs", "latency_ms", "throughput"):
            row[key] = _median([r.get(key) for r in runs])
        for key in ("throughput_batch", "device", "device_name", "dataset"):
            row[key] = runs[0].get(key)
        rows.append(row)
    return rows


def _fmt(value, spec, missing="n/a"):
    return (
        missing
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (format(value, spec))
    )


def _acc(row, metric):
    mean, std = row[metric], row[f"{metric}_std"]
    return _fmt(mean, ".1f") + (f" ± {std:.1f}" if row["runs"] > 1 else "")


def markdown_table(rows, reference=None):
    """The trade-off as a GitHub markdown table, fastest model last.

    Args:
        rows: from :func:`summarise`.
        reference: name of the row whose latency the speed-up column divides (default: the
            slowest deep model).

    Returns:
        str: the table, with a caption line naming the device and batch sizes.
    """
    names = [r["name"] for r in rows]
    if reference is not None and reference not in names:
        raise ValueError(f"No model named '{reference}' to compare with; models: {names}")
    deep = [r for r in rows if r["latency_ms"] and r["kind"] == "deep"]
    ref = next((r for r in rows if r["name"] == reference), None) or max(
        deep or rows, key=lambda r: r["latency_ms"] or 0
    )
    ordered = sorted(rows, key=lambda r: -(r["latency_ms"] or 0))
    lines = [
        "| model | runs | mAP | Rank-1 | params (M) | mult-adds (G) | latency b=1 (ms) "
        f"| speed-up vs {ref['name']} | throughput (img/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ordered:
        speedup = ref["latency_ms"] / r["latency_ms"] if r["latency_ms"] else None
        lines.append(
            f"| {r['name']} | {r['runs']} | {_acc(r, 'mAP')} | {_acc(r, 'Rank-1')} "
            f"| {_fmt(r['params'] and r['params'] / 1e6, '.2f')} "
            f"| {_fmt(r['macs'] and r['macs'] / 1e9, '.3f')} "
            f"| {_fmt(r['latency_ms'], '.2f')} | {_fmt(speedup, '.1f')}× "
            f"| {_fmt(r['throughput'], '.0f')} |"
        )
    first = rows[0]
    batches = sorted({r["throughput_batch"] for r in rows if r.get("throughput_batch")})
    datasets = ", ".join(dict.fromkeys(str(r.get("dataset")) for r in rows))
    lines.append("")
    lines.append(
        f"{datasets}; accuracy in % (mean ± std over runs); speed on "
        f"{first.get('device')} ({first.get('device_name')}), latency = median at batch 1, "
        f"throughput at batch {'/'.join(map(str, batches))}."
    )
    return "\n".join(lines)


def plot_tradeoff(rows, path, title="Speed/accuracy trade-off"):
    """mAP against batch-1 latency (log scale), one labelled point per model, error bars for
    models with several runs; classical, teacher and student models in different markers.

    Args:
        rows: from :func:`summarise`.
        path: the PNG to write.
        title: the plot's title.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for r in rows:
        if not r["latency_ms"]:
            continue
        kd = "KD" in r["name"] or "kd" in r["name"]
        marker, color = (
            ("s", "tab:gray")
            if r["kind"] == "classical"
            else ("o", "tab:red")
            if kd
            else ("o", "tab:blue")
        )
        ax.errorbar(
            r["latency_ms"], r["mAP"], yerr=r["mAP_std"] if r["runs"] > 1 else None,
            fmt=marker, color=color, capsize=3, markersize=7,
        )  # fmt: skip
        ax.annotate(r["name"], (r["latency_ms"], r["mAP"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"latency at batch 1 (ms, log scale) on {rows[0].get('device')}")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="s", color="tab:gray", ls="", label="classical (LOMO+XQDA)"),
        plt.Line2D([], [], marker="o", color="tab:blue", ls="", label="trained alone"),
        plt.Line2D([], [], marker="o", color="tab:red", ls="", label="distilled (KD)"),
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def _read_record(path):
    """The record in the JSON file ``path``, checked for what the table needs.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` cannot be read, is not UTF-8 JSON holding one object, or lacks a
            string ``name`` or a ``metrics`` object; the message names the file.
    """
    try:
        (record,) = read_records([path])
    except FileNotFoundError:
        raise
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"'{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); expected a "
            "speed_accuracy.json record"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"'{path}' is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "expected a speed_accuracy.json record"
        ) from exc
    except OSError as exc:
        raise ValueError(f"Cannot read '{path}': {exc.strerror or exc}") from exc
    except ValueError as exc:  # read_records: not one JSON object; its message names the file
        raise ValueError(f"{exc}; expected a speed_accuracy.json record") from exc
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise ValueError(
            f"'{path}' has no 'name' (a non-empty string naming the model's row); expected a "
            "speed_accuracy.json record as written by train_net.py --eval-only or lomo_xqda.py"
        )
    if not isinstance(record.get("metrics"), dict):
        raise ValueError(
            f"'{path}' has no 'metrics' object (with 'mAP' and 'Rank-1'); expected a "
            "speed_accuracy.json record as written by train_net.py --eval-only or lomo_xqda.py"
        )
    return record


def find_records(paths):
    """Every ``speed_accuracy.json`` named or under the folders named, sorted within a folder.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no record.
        ValueError: a file is not a readable record (see :func:`_read_record`).
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                glob.glob(os.path.join(path, "**", "speed_accuracy.json"), recursive=True)
            )
            if not found:
                raise FileNotFoundError(f"No speed_accuracy.json under '{path}'.")
            files += found
        elif os.path.exists(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"No speed/accuracy record at '{path}'")
    return [_read_record(f) for f in files]


def write_tradeoff(records, output_dir, reference=None, title="Speed/accuracy trade-off"):
    """Write ``tradeoff.md`` and ``tradeoff.png`` into ``output_dir``; return the table."""
    rows = summarise(records)
    table = markdown_table(rows, reference=reference)
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "tradeoff.md"), table + "\n")
    plot_tradeoff(rows, os.path.join(output_dir, "tradeoff.png"), title=title)
    return table
