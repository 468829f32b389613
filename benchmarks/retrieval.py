"""Retrieval speed: kdreid against FastReID on Market-1501-sized, ReID-like features.

    python benchmarks/retrieval.py [--sections eval rerank rerank_features rerank_msmt]
        [--repeats N] [--seed S] [--with-python] [--scale S] [--device auto|cpu|cuda]
        [--memory-budgets MIB ...] [--msmt-dim D] [--msmt-scale S]

Every section times kdreid's code and a named FastReID reference in the same run on the same
data, checks that both give the same results, and adds rows to one table: median and range of
``--repeats`` timed runs after one warm-up run, and the speed as a ratio against the reference.
The exit status is 1 when any section's results differ from its reference.

Sections:
    eval  CMC / mAP / mINP (Market-1501 protocol) of three 3,368 x 15,913 distance matrices, easy,
          medium and hard (mAP 90, 60 and 30, see ``EVAL_DIFFICULTIES``): a sort costs the same
          on each, a ranker that stops at the last positive does not, so all three are timed.
          ``kdreid.evaluation.evaluate_rank`` against FastReID's Cython ``evaluate_cy``,
          compiled from FastReID's own ``rank_cy.pyx`` (see ``_fastreid_cython.py``; needs
          Cython and a C compiler) and, with ``--with-python``, FastReID's Python path (~1 min
          each). Every CMC value, mAP, mINP and each query's AP and INP must agree to 1e-6.
          Query rows where a positive and a negative are at exactly the same float32 distance
          are set apart: FastReID's ``np.argsort`` (not stable) orders them arbitrarily, kdreid
          puts the lower gallery index first; their differences are shown, and the other rows
          must agree. The rerank sections use the default features (mAP 89).
    rerank
          k-reciprocal re-ranking (k1 = 20, k2 = 6, lambda = 0.3) of the Euclidean
          ``pairwise_distance`` matrices q_g, q_q, g_g of the same features: kdreid's
          ``re_ranking`` against FastReID's NumPy ``re_ranking`` (one run, about a minute and
          9 GB). Each method runs in a fresh process (``_peak_memory.py``) that loads the matrices
          from .npy files, so its peak memory (VmHWM) is shown beside its time. The re-ranked
          distances must agree to 1e-5, and their metrics (``evaluate_rank``) to 1e-6.
    rerank_features
          the whole path a GPU evaluator takes, on ``--device`` (``auto``: CUDA when torch sees
          one): the same features, already on the device, through ``re_ranking_features`` and
          ``evaluate_rank``, timed stage by stage (:data:`kdreid.evaluation.rerank.STAGES`, then
          the evaluation), each stage ending with a device synchronisation. Checked against
          kdreid's ``re_ranking`` of the CPU distance matrices (FastReID's output bit for bit,
          see ``rerank``): distances to 1e-5, metrics to 1e-6. On CUDA the table says whether
          the median meets the 100 ms asked of an H100. ``--memory-budgets`` times several
          block sizes (``memory_budget``, MiB) one after another.
    rerank_msmt
          (only when named) kdreid's ``re_ranking_features`` at MSMT17 size: 11,659 queries x
          82,161 gallery images of 3,060 identities, 15 cameras, d = ``--msmt-dim``; one run in
          a fresh process, time and peak memory. FastReID's ``re_ranking`` cannot run there: each
          of its dense N x N float32 matrices needs 35 GB. Minutes at d = 2,048 on 2 cores.

``--scale`` multiplies the Market-1501 sizes (e.g. 0.125 for a quick try), ``--msmt-scale``
the MSMT17 ones.

A section is a function ``(workload, args, results)`` registered in ``SECTIONS``; the workload
generates the features and the distance matrix once, on first use.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from tabulate import tabulate

import kdreid  # noqa: F401  (repairs fastreid before it is imported)

# isort: split
from _fastreid_cython import load_evaluate_cy
from fastreid.evaluation.rank import evaluate_py
from fastreid.utils.compute_dist import build_dist

from kdreid.benchmark import busy_warning, time_calls
from kdreid.cli import at_least, finite_above
from kdreid.evaluation import evaluate_rank, re_ranking, re_ranking_features
from kdreid.evaluation.rerank import DEFAULT_MEMORY_BUDGET, STAGES, pairwise_distance

TOLERANCE = 1e-6
"""Largest difference allowed in every CMC value, in mAP and in mINP."""

RERANK_TOLERANCE = 1e-5
"""Largest difference allowed between kdreid's and FastReID's re-ranked distances."""

GPU_TARGET = 0.100
"""Seconds the issue asks of ``rerank_features`` at Market-1501 size on an H100."""

RERANK_METRIC = "euclidean"
"""Distance the re-ranking sections feed (``pairwise_distance``); the reference squares it."""

MARKET = {"num_query": 3368, "num_gallery": 15913, "num_ids": 750, "num_distractors": 2793}
"""Market-1501's test split as FastReID loads it (6 cameras)."""

MSMT17 = {"num_query": 11659, "num_gallery": 82161, "num_ids": 3060, "num_distractors": 0}
"""MSMT17's test split (15 cameras, no distractors)."""

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_peak_memory.py")


class Labels(NamedTuple):
    """Person and camera ids of the query and gallery images, int64 arrays."""

    q_pids: np.ndarray  # (Q,)
    g_pids: np.ndarray  # (G,)
    q_camids: np.ndarray  # (Q,)
    g_camids: np.ndarray  # (G,)


class Workload:
    """Market-1501-sized ReID-like features, deterministic by seed; derived data made once.

    Market-1501's test split as FastReID loads it: 3,368 queries of 750 identities, 15,913
    gallery images (the 750 identities plus 2,793 distractors with pid 0), 6 cameras. Each
    identity has a centre in a ``latent_dim``-dimensional space; an image is its centre plus a
    shift of its camera plus latent noise, mapped to ``dim`` dimensions by a fixed random
    projection, plus isotropic noise, L2-normalised. Each distractor has a centre of its own.
    With the defaults a cosine ranking of these features scores roughly like a ResNet-50
    baseline on Market-1501 (the section prints the numbers).

    Args:
        seed (int): seed of every random draw.
        num_query, num_gallery, num_ids, num_distractors, num_cams (int): the split's sizes.
        dim (int): feature dimension ``D``.
        latent_dim (int): dimension of the identity space.
        noise (float): standard deviation of the latent noise per image (difficulty).
        feature_noise (float): standard deviation of the isotropic noise in ``D`` dimensions.
    """

    def __init__(
        self,
        seed=0,
        num_query=3368,
        num_gallery=15913,
        num_ids=750,
        num_distractors=2793,
        num_cams=6,
        dim=2048,
        latent_dim=128,
        noise=1.2,
        feature_noise=0.3,
    ):
        self.seed = seed
        self.num_query = num_query
        self.num_gallery = num_gallery
        self.num_ids = num_ids
        self.num_distractors = num_distractors
        self.num_cams = num_cams
        self.dim = dim
        self.latent_dim = latent_dim
        self.noise = noise
        self.feature_noise = feature_noise
        self.seconds = {}

    def with_noise(self, noise):
        """The same split and seed with another latent noise (another difficulty); its
        generation times are added to this workload's."""
        if noise == self.noise:
            return self
        other = Workload(
            self.seed, self.num_query, self.num_gallery, self.num_ids, self.num_distractors,
            self.num_cams, self.dim, self.latent_dim, noise, self.feature_noise,
        )  # fmt: skip
        other.seconds = self.seconds
        return other

    def describe(self):
        """One line: sizes, seed and how the data was made."""
        return (
            f"{self.num_query:,} queries x {self.num_gallery:,} gallery images, d = {self.dim:,}, "
            f"{self.num_ids} identities + {self.num_distractors:,} distractors, "
            f"{self.num_cams} cameras, seed {self.seed}"
        )

    @cached_property
    def labels(self):
        """Labels: every identity in the query and the gallery, cameras uniform."""
        rng = np.random.default_rng(self.seed)
        ids = np.arange(1, self.num_ids + 1)
        q_pids = rng.permutation(np.resize(ids, self.num_query))
        g_pids = np.concatenate(
            [
                np.zeros(self.num_distractors, dtype=np.int64),
                rng.permutation(np.resize(ids, self.num_gallery - self.num_distractors)),
            ]
        )
        return Labels(
            q_pids=q_pids.astype(np.int64),
            g_pids=g_pids.astype(np.int64),
            q_camids=rng.integers(0, self.num_cams, self.num_query),
            g_camids=rng.integers(0, self.num_cams, self.num_gallery),
        )

    @cached_property
    def features(self):
        """tuple[Tensor, Tensor]: (Q, D) query and (G, D) gallery features, float32, unit norm."""
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(self.seed)
        labels = self.labels
        centres = torch.randn(self.num_ids + 1, self.latent_dim, generator=gen)
        cameras = 0.3 * torch.randn(self.num_cams, self.latent_dim, generator=gen)
        projection = torch.randn(self.latent_dim, self.dim, generator=gen) / self.latent_dim**0.5

        def images(pids, camids):
            pids, camids = torch.from_numpy(pids), torch.from_numpy(camids)
            own = torch.randn(len(pids), self.latent_dim, generator=gen)
            centre = torch.where((pids == 0).unsqueeze(1), own, centres[pids])
            latent = centre + cameras[camids]
            latent += self.noise * torch.randn(len(pids), self.latent_dim, generator=gen)
            feats = latent @ projection
            feats += self.feature_noise * torch.randn(len(pids), self.dim, generator=gen)
            return torch.nn.functional.normalize(feats, dim=1)

        feats = images(labels.q_pids, labels.q_camids), images(labels.g_pids, labels.g_camids)
        self.seconds["features"] = time.perf_counter() - start
        return feats

    @cached_property
    def distmat(self):
        """np.ndarray: (Q, G) float32 cosine distances, FastReID's ``build_dist`` (its default
        ``TEST.METRIC``), as the evaluator computes them."""
        query, gallery = self.features
        start = time.perf_counter()
        dist = build_dist(query, gallery, metric="cosine")
        self.seconds["distmat"] = time.perf_counter() - start
        return dist


class Row(NamedTuple):
    """One timed method of a section."""

    section: str
    method: str
    times: list  # seconds of each timed run
    reference: str | None  # the method of the same section it is compared with
    note: str


class Results:
    """The rows of every section and the checks that failed."""

    def __init__(self):
        self.rows = []
        self.failures = []

    def add(self, section, method, times, reference=None, note=""):
        self.rows.append(Row(section, method, list(times), reference, note))

    def fail(self, message):
        self.failures.append(message)
        print(f"MISMATCH: {message}")

    def _median(self, section, method):
        for row in self.rows:
            if row.section == section and row.method == method:
                return float(np.median(row.times))
        raise KeyError(f"no row {method!r} in section {section!r}")

    def table(self):
        """The rows as a GitHub-flavoured table; speed is the reference's median over the row's."""
        body = []
        for row in self.rows:
            median = float(np.median(row.times))
            if row.reference is None:
                speed = ""
            else:
                ratio = self._median(row.section, row.reference) / median
                speed = f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"
            body.append(
                [
                    row.section,
                    row.method,
                    f"{median:.3f}",
                    f"{min(row.times):.3f}-{max(row.times):.3f}",
                    len(row.times),
                    speed,
                    row.note,
                ]
            )
        headers = ["section", "method", "median (s)", "range (s)", "runs", "speed", "note"]
        return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def timed(fn, repeats, warmup=1):
    """:func:`kdreid.benchmark.time_calls`: ``warmup`` untimed calls, then ``repeats`` timed.

    Returns:
        tuple[Any, list[float]]: the last result and the seconds of each timed call.
    """
    times, result = time_calls(fn, warmup=warmup, iters=repeats)
    return result, times


class _Threads:
    """Context manager: torch's intra-op thread count set to ``n`` inside."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def cpu_name():
    """The CPU model as the OS names it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description():
    """Lines naming the CPU, cores, threads, GPU and library versions."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        f"CPU: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; numpy {np.__version__}; "
        f"Python {platform.python_version()}",
        f"GPU: {gpu}",
    ]


def tied_rows(dist, labels):
    """Queries with a positive and a negative at exactly the same distance.

    On those rows the order of the two is implementation-defined in FastReID (``np.argsort``'s
    default sort is not stable) while kdreid ranks the lower gallery index first, so their AP,
    INP and first hit may legitimately differ.

    Args:
        dist (np.ndarray): (Q, G) distances.
        labels (Labels): ids.

    Returns:
        np.ndarray: (Q,) bool.
    """
    tied = np.zeros(len(dist), dtype=bool)
    for q in range(len(dist)):
        same = labels.g_pids == labels.q_pids[q]
        positive = same & (labels.g_camids != labels.q_camids[q])
        tied[q] = np.isin(dist[q][~same], dist[q][positive]).any()
    return tied


def differences(ours, reference):
    """Largest absolute differences between two ``(cmc, all_AP, all_INP)`` results.

    Returns:
        dict[str, float] | None: 'CMC', 'mAP', 'mINP', 'AP per query', 'INP per query'; None when
        the two count different numbers of valid queries.
    """
    cmc, ap, inp = (np.asarray(x, dtype=np.float64) for x in ours)
    ref_cmc, ref_ap, ref_inp = (np.asarray(x, dtype=np.float64) for x in reference)
    if cmc.shape != ref_cmc.shape or ap.shape != ref_ap.shape or inp.shape != ref_inp.shape:
        return None
    return {
        "CMC": float(np.abs(cmc - ref_cmc).max()),
        "mAP": abs(float(ap.mean() - ref_ap.mean())),
        "mINP": abs(float(inp.mean() - ref_inp.mean())),
        "AP per query": float(np.abs(ap - ref_ap).max()),
        "INP per query": float(np.abs(inp - ref_inp).max()),
    }


def check_same(what, ours, reference, results, strict=True):
    """Print the differences; with ``strict``, record every one above :data:`TOLERANCE`.

    Returns:
        bool: every difference is within the tolerance.
    """
    diff = differences(ours, reference)
    if diff is None:
        if strict:
            results.fail(f"{what}: different numbers of valid queries")
        print(f"  {what}: different numbers of valid queries")
        return False
    print(f"  {what}: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items()))
    bad = {k: v for k, v in diff.items() if v > TOLERANCE}
    if strict:
        for key, value in bad.items():
            results.fail(f"{what}: {key} differs by {value:.2e} > {TOLERANCE}")
    return not bad


def short_rows(labels, max_rank=50):
    """Queries whose gallery, once their junk (same identity, same camera) is set aside, has fewer
    than ``max_rank`` entries (only in tiny galleries).

    Past the end of such a list FastReID's Cython ranker reads the values an earlier query left in
    its buffer, so its CMC depends on the rows before; kdreid counts those ranks as found.

    Returns:
        np.ndarray: (Q,) bool.
    """
    junk = (labels.g_pids[None] == labels.q_pids[:, None]) & (
        labels.g_camids[None] == labels.q_camids[:, None]
    )
    return len(labels.g_pids) - junk.sum(axis=1) < max_rank


def check_against_cython(evaluate_cy, dist, labels, ours, reference, results):
    """kdreid against FastReID's Cython ranker: everything equal, rows with exact ties or short
    lists aside.

    Without such rows the two must agree to :data:`TOLERANCE` on CMC, mAP, mINP and every
    query's AP and INP. With them, the full-matrix differences are shown, and both rankers are
    run again on the other rows, where they must agree.

    Returns:
        str: a note for the table.
    """
    tied, short = tied_rows(dist, labels), short_rows(labels)
    if not (tied.any() or short.any()):
        same = check_same("kdreid vs Cython", ours, reference, results)
        return "same results" if same else "RESULTS DIFFER"
    same_all = check_same("kdreid vs Cython, all rows", ours, reference, results, strict=False)

    def some(rows):
        first = ", ".join(map(str, np.flatnonzero(rows)[:8]))
        count = int(rows.sum())
        return f"{count} query row{'s' * (count > 1)} ({first}{', ...' * (count > 8)})"

    if tied.any():
        print(
            f"  {some(tied)}: a positive and a negative at exactly the same float32 "
            "distance; FastReID's np.argsort (not stable) may order them either way, kdreid "
            "puts the lower gallery index first"
        )
    if short.any():
        print(
            f"  {some(short)}: fewer than 50 gallery entries once junk is set aside; past the "
            "end, FastReID's Cython ranker reads values an earlier row left, kdreid counts those "
            "ranks as found"
        )
    keep = ~(tied | short)
    if not keep.any():
        return "same results" if same_all else "no row free of ties or short lists to compare"
    sub = (dist[keep], labels.q_pids[keep], labels.g_pids, labels.q_camids[keep], labels.g_camids)
    same = check_same(
        f"kdreid vs Cython, {keep.sum()} other rows",
        evaluate_rank(*sub),
        evaluate_cy(*sub, 50),
        results,
    )
    if not same:
        return "RESULTS DIFFER"
    kinds = [f"{n} {kind}" for n, kind in ((tied.sum(), "tied"), (short.sum(), "short")) if n]
    rows = "row" if (tied | short).sum() == 1 else "rows"
    return "same results" if same_all else f"same results except on {' and '.join(kinds)} {rows}"


EVAL_DIFFICULTIES = (("easy", 1.18), ("medium", 1.44), ("hard", 1.70))
"""The eval section's matrices: name and latent noise of the features (``Workload.noise``). At
Market-1501's size they score mAP 90, 60 and 30 (Rank-1 99, 92 and 67): a strong model, a
baseline, a weak one or a hard domain."""


def section_eval(work, args, results):
    """CMC/mAP/mINP: kdreid's ``evaluate_rank`` against FastReID's Cython ``evaluate_cy``, on a
    matrix of each of :data:`EVAL_DIFFICULTIES`."""
    evaluate_cy = load_evaluate_cy(log=lambda line: print(f"  {line}"))
    for number, (difficulty, noise) in enumerate(EVAL_DIFFICULTIES):
        data = work.with_noise(noise)
        dist, labels = data.distmat, data.labels
        print(
            f"  {difficulty}: distance matrix {dist.shape[0]:,} x {dist.shape[1]:,} {dist.dtype} "
            f"({dist.nbytes / 2**20:.0f} MiB), features of latent noise {noise}"
        )
        eval_matrix(f"eval {difficulty}", dist, labels, evaluate_cy, args, results, number == 0)


def eval_matrix(section, dist, labels, evaluate_cy, args, results, with_sort):
    """One section of :func:`section_eval`: the rankers timed and compared on one matrix."""
    cython = "FastReID evaluate_cy (Cython)"
    reference, ref_times = timed(lambda: evaluate_cy(dist, *labels, 50), args.repeats)
    ours, times = timed(lambda: evaluate_rank(dist, *labels), args.repeats)
    with _Threads(1):
        ours_1, times_1 = timed(lambda: evaluate_rank(dist, *labels), args.repeats)

    note = check_against_cython(evaluate_cy, dist, labels, ours, reference, results)
    results.add(section, cython, ref_times, note="reference; single-threaded")
    if with_sort:  # the sort FastReID's ranker is built on, whatever the data
        _, sort_times = timed(lambda: np.argsort(dist, axis=1), args.repeats)
        share = np.median(sort_times) / np.median(ref_times)
        results.add(
            section,
            "np.argsort of the matrix",
            sort_times,
            note=f"{share:.0%} of the Cython time",
        )
    cmc, all_ap, _ = ours
    threads = torch.get_num_threads()
    results.add(
        section,
        f"kdreid evaluate_rank, {threads} threads",
        times,
        cython,
        f"mAP {100 * all_ap.mean():.1f}, Rank-1 {100 * cmc[0]:.1f}; {note}",
    )
    same = check_same("kdreid 1 thread vs kdreid", ours_1, ours, results)
    results.add(
        section,
        "kdreid evaluate_rank, 1 thread",
        times_1,
        cython,
        "same as above" if same else "RESULTS DIFFER",
    )

    if torch.cuda.is_available():
        dist_cuda = torch.from_numpy(dist).to("cuda")
        ours_gpu, gpu_times = timed(lambda: evaluate_rank(dist_cuda, *labels), args.repeats)
        same = check_same("kdreid on the GPU vs kdreid", ours_gpu, ours, results)
        results.add(
            section,
            f"kdreid evaluate_rank, {torch.cuda.get_device_name(0)}",
            gpu_times,
            cython,
            ("same as above" if same else "RESULTS DIFFER") + "; matrix already on the GPU",
        )
        del dist_cuda

    if args.with_python:
        slow, py_times = timed(
            lambda: evaluate_py(dist, *labels, 50, use_metric_cuhk03=False), 1, warmup=0
        )
        same = check_same("FastReID Python vs Cython", slow, reference, results)
        results.add(
            section,
            "FastReID evaluate_py (Python)",
            py_times,
            cython,
            "same as Cython" if same else "RESULTS DIFFER",
        )

    top = min(10, len(cmc))  # a tiny gallery has a shorter curve
    print(
        f"  {section}: mAP {100 * all_ap.mean():.1f}, Rank-1 {100 * cmc[0]:.1f}, "
        f"Rank-{top} {100 * cmc[top - 1]:.1f}, mINP {100 * ours[2].mean():.1f} (%), "
        f"{len(all_ap):,} valid queries"
    )


def scaled(sizes, scale):
    """The split's sizes times ``scale`` (at least 1 each, distractors at least 0)."""
    return {
        key: max(0 if key == "num_distractors" else 1, round(value * scale))
        for key, value in sizes.items()
    }


def gib(num_bytes):
    return f"{num_bytes / 2**30:.2f} GiB"


def run_isolated(method, input_dir, output=None, repeats=1, warmup=0, metric=RERANK_METRIC):
    """Run ``_peak_memory.py``: one method in a fresh process; returns its JSON report."""
    command = [sys.executable, HELPER, method, input_dir, "--repeats", str(repeats)]
    command += ["--warmup", str(warmup), "--metric", metric]
    if output:
        command += ["--output", output]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    peak, before = report["hwm_after"], report["hwm_before"]
    report["memory"] = f"peak {gib(peak)} (+{gib(peak - before)} over the loaded inputs)"
    print(
        f"  {method}: {', '.join(f'{t:.2f}' for t in report['times'])} s; VmHWM "
        f"{gib(before)} after loading {gib(report['input_bytes'])} of inputs, {gib(peak)} after "
        f"the run(s)"
    )
    return report


def section_rerank(work, args, results):
    """k-reciprocal re-ranking of distance matrices: kdreid against FastReID's NumPy code."""
    section = "rerank"
    query, gallery = work.features
    labels = work.labels
    with tempfile.TemporaryDirectory(prefix="kdreid-rerank-") as tmp:
        start = time.perf_counter()
        for name, x, y in [
            ("q_g", query, gallery),
            ("q_q", query, query),
            ("g_g", gallery, gallery),
        ]:
            dist = pairwise_distance(x, y, RERANK_METRIC).numpy()
            np.save(os.path.join(tmp, f"{name}.npy"), dist)
            if name == "q_g":
                before = evaluate_rank(dist, *labels)
            print(
                f"  {name}: {dist.shape[0]:,} x {dist.shape[1]:,} {dist.dtype} ({gib(dist.nbytes)})"
            )
            del dist
        print(
            f"  {RERANK_METRIC} pairwise_distance matrices made and saved in "
            f"{time.perf_counter() - start:.1f} s; k1 = 20, k2 = 6, lambda = 0.3; each method "
            "runs in a fresh process (peak memory = its VmHWM)"
        )
        ref_out, ours_out = os.path.join(tmp, "fastreid.npy"), os.path.join(tmp, "kdreid.npy")
        ref = run_isolated("fastreid", tmp, ref_out)
        ours = run_isolated("kdreid", tmp, ours_out, repeats=args.repeats, warmup=1)
        ref_dist, ours_dist = np.load(ref_out), np.load(ours_out)

    max_diff = float(np.abs(ours_dist.astype(np.float64) - ref_dist).max())
    print(f"  max |kdreid - FastReID| of the re-ranked distances: {max_diff:.1e}")
    same = max_diff <= RERANK_TOLERANCE
    if not same:
        results.fail(f"rerank: distances differ by {max_diff:.2e} > {RERANK_TOLERANCE}")
    ours_metrics = evaluate_rank(ours_dist, *labels)
    same &= check_same(
        "metrics, kdreid vs FastReID", ours_metrics, evaluate_rank(ref_dist, *labels), results
    )
    for when, (cmc, all_ap, _) in [("before", before), ("after", ours_metrics)]:
        print(
            f"  metrics {when} re-ranking: mAP {100 * all_ap.mean():.1f}, "
            f"Rank-1 {100 * cmc[0]:.1f} (%)"
        )

    reference = "FastReID re_ranking (NumPy)"
    results.add(section, reference, ref["times"], note=f"reference, 1 run; {ref['memory']}")
    verdict = f"max abs diff {max_diff:.1e}, same metrics" if same else "RESULTS DIFFER"
    results.add(
        section, "kdreid re_ranking", ours["times"], reference, f"{verdict}; {ours['memory']}"
    )


def resolve_device(name):
    """``--device``: ``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but torch sees no CUDA device")
    return torch.device(name)


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_name()})"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def section_rerank_features(work, args, results):
    """Re-ranking from features to metrics on ``--device``, stage by stage, synchronised."""
    section = "rerank_features"
    device = args.device
    query, gallery = work.features
    labels = work.labels

    start = time.perf_counter()
    expected = re_ranking(
        *(pairwise_distance(a, b, RERANK_METRIC) for a, b in
          ((query, gallery), (query, query), (gallery, gallery)))
    )  # fmt: skip
    expected_metrics = evaluate_rank(expected, *labels)
    print(
        f"  check: kdreid re_ranking of the {RERANK_METRIC} pairwise_distance matrices on the CPU "
        f"(FastReID's output bit for bit, see section rerank), {time.perf_counter() - start:.1f} s"
    )
    q_dev, g_dev = query.to(device), gallery.to(device)
    name = device_name(device)
    print(
        f"  {name}: features already on the device, k1 = 20, k2 = 6, lambda = 0.3; every stage "
        "ends with a device synchronisation"
    )
    for mib in args.memory_budgets:
        budget = mib * 2**20
        default = " (default)" if budget == DEFAULT_MEMORY_BUDGET else ""

        def run(budget=budget):
            stages = {}
            synchronize(device)
            start = time.perf_counter()
            out = re_ranking_features(
                q_dev, g_dev, metric=RERANK_METRIC, memory_budget=budget, timings=stages
            )
            synchronize(device)
            middle = time.perf_counter()
            metrics = evaluate_rank(out, *labels)  # returns NumPy: synchronised
            stages["evaluation"] = time.perf_counter() - middle
            stages["total"] = time.perf_counter() - start
            return out, metrics, stages

        run()  # warm-up: kernels compiled, allocator filled
        runs = [run() for _ in range(args.repeats)]
        out, metrics, _ = runs[-1]
        max_diff = float((out.cpu() - expected).abs().max())
        what = f"{device.type} features path, memory_budget {mib} MiB{default}"
        print(f"  max |{what} - CPU matrix path|: {max_diff:.1e}")
        same = max_diff <= RERANK_TOLERANCE
        if not same:
            results.fail(
                f"rerank_features: distances differ by {max_diff:.2e} > {RERANK_TOLERANCE}"
            )
        same &= check_same(
            f"metrics, {what} vs CPU matrix path", metrics, expected_metrics, results
        )
        verdict = f"max abs diff {max_diff:.1e}, same metrics" if same else "RESULTS DIFFER"
        totals = [stages["total"] for _, _, stages in runs]
        target = ""
        if device.type == "cuda":
            met = "met" if np.median(totals) < GPU_TARGET else "NOT met"
            target = f"; target < {GPU_TARGET * 1000:.0f} ms on an H100: {met}"
        results.add(
            section,
            f"kdreid features -> re-ranking -> metrics, {name}, budget {mib} MiB{default}",
            totals,
            note=f"{verdict}{target}",
        )
        for stage in (*STAGES, "evaluation"):
            times = [stages[stage] for _, _, stages in runs]
            share = np.median(times) / np.median(totals)
            part = "evaluate_rank of the output" if stage == "evaluation" else "re_ranking_features"
            results.add(section, f"  stage: {stage}", times, note=f"{share:.0%}; {part}")


def section_rerank_msmt(work, args, results):
    """k-reciprocal re-ranking from features at MSMT17 size: kdreid only."""
    section = "rerank_msmt"
    msmt = Workload(
        seed=args.seed, num_cams=15, dim=args.msmt_dim, **scaled(MSMT17, args.msmt_scale)
    )
    print(f"  data: {msmt.describe()}")
    num_items = msmt.num_query + msmt.num_gallery
    full_items = MSMT17["num_query"] + MSMT17["num_gallery"]
    dense, full_dense = num_items**2 * 4, full_items**2 * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    here = "" if num_items == full_items else f"{dense / 1e9:.1f} GB at N = {num_items:,}; "
    print(
        f"  FastReID's re_ranking is not run: its dense N x N float32 matrices need N^2 * 4 B "
        f"each, {here}at MSMT17's size (N = {full_items:,}) {full_dense / 1e9:.1f} GB "
        f"({gib(full_dense)}) each, more than this machine's {gib(memory)} of memory, so it "
        "cannot run there"
    )
    start = time.perf_counter()
    query, gallery = msmt.features
    print(f"  features generated in {time.perf_counter() - start:.1f} s")
    with tempfile.TemporaryDirectory(prefix="kdreid-rerank-msmt-") as tmp:
        np.save(os.path.join(tmp, "q_feat.npy"), query.numpy())
        np.save(os.path.join(tmp, "g_feat.npy"), gallery.numpy())
        del query, gallery, msmt.features
        report = run_isolated("features", tmp)
    out_bytes = msmt.num_query * msmt.num_gallery * 4
    results.add(
        section,
        f"kdreid re_ranking_features, N = {num_items:,}, d = {msmt.dim:,}",
        report["times"],
        note=(
            f"1 run; {report['memory']}, output {gib(out_bytes)}; the reference needs "
            f"{dense / 1e9:.1f} GB per N x N matrix"
        ),
    )


SECTIONS = {
    "eval": section_eval,
    "rerank": section_rerank,
    "rerank_features": section_rerank_features,
    "rerank_msmt": section_rerank_msmt,
}
"""Section name -> function ``(workload, args, results)``, run in this order."""

OPT_IN = ("rerank_msmt",)
"""Sections that run only when named in ``--sections``."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(SECTIONS),
        default=[name for name in SECTIONS if name not in OPT_IN],
        help="sections to run (default: all but " + ", ".join(OPT_IN) + ")",
    )
    parser.add_argument(
        "--repeats", type=at_least(1), default=5, help="timed runs per method (>= 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument(
        "--with-python",
        action="store_true",
        help="eval: also time FastReID's pure-Python ranker once (about a minute)",
    )
    parser.add_argument(
        "--scale",
        type=finite_above(0),
        default=1.0,
        help="Market-1501 split sizes times this (e.g. 0.125 for a quick try; default 1)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="rerank_features: where it runs (auto: CUDA when torch sees a GPU, else the CPU)",
    )
    parser.add_argument(
        "--memory-budgets",
        type=at_least(1),
        nargs="+",
        default=[DEFAULT_MEMORY_BUDGET // 2**20],
        metavar="MIB",
        help="rerank_features: memory_budget values to time, in MiB (default: the default, "
        f"{DEFAULT_MEMORY_BUDGET // 2**20})",
    )
    parser.add_argument(
        "--msmt-dim",
        type=at_least(1),
        default=2048,
        help="rerank_msmt: feature dimension (default 2048)",
    )
    parser.add_argument(
        "--msmt-scale",
        type=finite_above(0),
        default=1.0,
        help="rerank_msmt: MSMT17 split sizes times this (default 1)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.device = resolve_device(args.device)  # refused before any section runs
    work = Workload(seed=args.seed, **scaled(MARKET, args.scale))
    print("Retrieval benchmark")
    for line in machine_description():
        print(line)
    print(f"Data: {work.describe()}")
    runs = f"median of {args.repeats} runs" if args.repeats > 1 else "one run"
    print(f"Timing: {runs} after one warm-up run")
    warning = busy_warning()
    if warning:
        print(warning)
    print()
    results = Results()
    for name in SECTIONS:
        if name in args.sections:
            print(f"[{name}]")
            SECTIONS[name](work, args, results)
    made = ", ".join(f"{k} {v:.1f} s" for k, v in work.seconds.items())
    print(f"\nData generated in: {made or 'not needed'}\n")
    print(results.table())
    if results.failures:
        print(f"\n{len(results.failures)} mismatch(es):", *results.failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
