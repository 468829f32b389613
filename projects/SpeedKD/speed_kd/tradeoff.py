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

from kdreid.benchmark import OTHER_LOAD_WARNING, read_records  # noqa: E402
from kdreid.checkpoint import save_figure, write_text  # noqa: E402

__all__ = [
    "find_records",
    "group_records",
    "markdown_table",
    "plot_tradeoff",
    "tradeoff_figure",
    "summarise",
    "write_tradeoff",
]


def _trained_config(record):
    trained = record.get("trained") or {}
    return trained.get("config") or None


def group_records(records):
    """Group records by ``name`` (runs of one model, e.g. several seeds), keeping the order in
    which names first appear.

    Returns:
        OrderedDict[str, list[dict]]

    Raises:
        ValueError: records of one name are of different models (dataset, parameters,
            multiply-adds, training config or distillation differ), or two of them evaluated the
            same weights file (one run counted twice): a row would average them.
    """
    groups = OrderedDict()
    for record in records:
        runs = groups.setdefault(record["name"], [])
        fields = (  # (what, value, whether a record that does not say is no conflict)
            ("dataset", lambda r: r.get("dataset"), False),
            ("params", lambda r: r.get("params"), False),
            ("macs", lambda r: r.get("macs"), False),
            ("training config", _trained_config, True),
            ("distillation", lambda r: r.get("distilled"), True),
        )
        for what, value, lenient in fields:
            if not runs or value(record) == value(runs[0]):
                continue
            if not (lenient and None in (value(record), value(runs[0]))):
                raise ValueError(
                    f"Two records named '{record['name']}' differ in {what} "
                    f"({value(runs[0])} and {value(record)}): they are different models "
                    f"(weights {runs[0].get('weights')} and {record.get('weights')}). Give each "
                    "its own KDREID.NAME (the record's name) when evaluating it."
                )
        digest = record.get("weights_sha256")
        twin = next((r for r in runs if digest and r.get("weights_sha256") == digest), None)
        if twin is not None:
            raise ValueError(
                f"Two records named '{record['name']}' evaluated the same weights "
                f"({twin.get('weights')} and {record.get('weights')}, SHA-256 {digest[:12]}): "
                "one run would count twice. Keep one of the two records."
            )
        runs.append(record)
    return groups


BUSY_MARK = " ⚠"
"""Marks a speed figure measured while other processes loaded the CPU."""


def _busy(row):
    return (row.get("other_cpu_load") or 0.0) >= OTHER_LOAD_WARNING


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
        list[dict]: keys ``name``, ``kind``, ``distilled`` (True, False, or None: not
        recorded), ``runs``, ``other_cpu_load`` (the most of its runs), ``mAP``, ``mAP_std``,
        ``Rank-1``, ``Rank-1_std``, ``params``, ``macs``, ``latency_ms``, ``throughput``,
        ``throughput_batch``, ``device``, ``device_name``, ``dataset``.
    """
    rows = []
    for name, runs in group_records(records).items():
        row = {
            "name": name,
            "kind": runs[0].get("kind", "deep"),
            "distilled": runs[0].get("distilled"),
            "runs": len(runs),
            "other_cpu_load": max((r.get("other_cpu_load") or 0.0 for r in runs), default=0.0),
        }
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
        flag = BUSY_MARK if _busy(r) else ""
        lines.append(
            f"| {r['name']} | {r['runs']} | {_acc(r, 'mAP')} | {_acc(r, 'Rank-1')} "
            f"| {_fmt(r['params'] and r['params'] / 1e6, '.2f')} "
            f"| {_fmt(r['macs'] and r['macs'] / 1e9, '.3f')} "
            f"| {_fmt(r['latency_ms'], '.2f')}{flag} | {_fmt(speedup, '.1f')}×{flag} "
            f"| {_fmt(r['throughput'], '.0f')}{flag} |"
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
    busy = [r for r in rows if _busy(r)]
    if busy:
        lines.append(
            f"{BUSY_MARK} unreliable speed: other processes kept up to "
            f"{max(r['other_cpu_load'] for r in busy):.1f} CPUs busy while "
            f"{', '.join(r['name'] for r in busy)} {'was' if len(busy) == 1 else 'were'} "
            "measured; measure again on an idle machine."
        )
    return "\n".join(lines)


_STYLES = {
    "classical": ("s", "tab:gray", "classical (LOMO+XQDA)"),
    "alone": ("o", "tab:blue", "trained alone"),
    "distilled": ("o", "tab:red", "distilled (KD)"),
    "unknown": ("D", "tab:olive", "training not recorded"),
}


def _style(row):
    """How a row is drawn: by its records' kind and ``distilled`` flag, never by its name."""
    if row["kind"] == "classical":
        return "classical"
    return {True: "distilled", False: "alone"}.get(row.get("distilled"), "unknown")


def plot_tradeoff(rows, path, title="Speed/accuracy trade-off"):
    """mAP against batch-1 latency and against multiply-adds (both log scale), one labelled point
    per model, error bars for models with several runs; classical, trained-alone and distilled
    models in different markers and colours.

    Args:
        rows: from :func:`summarise`.
        path: the PNG to write.
        title: the plot's title.
    """
    fig = tradeoff_figure(rows, title)
    save_figure(fig, path)
    plt.close(fig)


def _log_axis(axis):
    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    # minor ticks at 2 and 5 of each decade, labelled; at 3, 4, 6 to 9 the labels overlapped
    axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
    axis.set_minor_formatter(ticker.FormatStrFormatter("%g"))


def _panel(ax, rows, x_of, xlabel):
    """One scatter of mAP against ``x_of(row)`` (rows without it are left out); returns the
    styles drawn."""
    drawn = []
    for r in rows:
        x = x_of(r)
        if not x:
            continue
        style = _style(r)
        marker, color = _STYLES[style][:2]
        busy = _busy(r)  # hollow, and said in the label: its latency is not to be trusted
        ax.errorbar(
            x, r["mAP"], yerr=r["mAP_std"] if r["runs"] > 1 else None,
            fmt=marker, color=color, capsize=3, markersize=7,
            markerfacecolor="none" if busy else color,
        )  # fmt: skip
        label = r["name"] + (f" (CPU busy: {r['other_cpu_load']:.1f})" if busy else "")
        ax.annotate(label, (x, r["mAP"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
        drawn.append((style, busy))
    ax.set_xscale("log")
    ax.margins(x=0.25)  # room for the labels of the rightmost points
    _log_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP (%)")
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def tradeoff_figure(rows, title="Speed/accuracy trade-off"):
    """The figure :func:`plot_tradeoff` writes (the caller closes it): latency on the left,
    multiply-adds on the right (the classical pipeline has none counted)."""
    fig, (by_latency, by_macs) = plt.subplots(1, 2, figsize=(13, 5), dpi=120, sharey=True)
    drawn = _panel(
        by_latency, rows, lambda r: r["latency_ms"],
        f"latency at batch 1 (ms, log scale) on {rows[0].get('device')}",
    )  # fmt: skip
    _panel(by_macs, rows, lambda r: r["macs"] and r["macs"] / 1e9,
           "multiply-adds per image (G, log scale)")  # fmt: skip
    by_macs.yaxis.set_tick_params(labelleft=True)
    fig.suptitle(title)
    shown = dict.fromkeys(style for style, _ in drawn)
    handles = [
        plt.Line2D([], [], marker=m, color=c, ls="", label=label)
        for m, c, label in (_STYLES[style] for style in _STYLES if style in shown)
    ]
    if any(busy for _, busy in drawn):
        handles.append(
            plt.Line2D([], [], marker="o", color="k", markerfacecolor="none", ls="",
                       label="hollow: CPU busy, speed unreliable")
        )  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    return fig


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
