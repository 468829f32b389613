"""Writing SynthReID to disk: its sizes, the plan of every image, and their parallel rendering.

`generate_synthreid(root, size, seed)` writes `<root>/SynthReID-<size>/` with the folders
`bounding_box_train/`, `query/` and `bounding_box_test/` and Market-1501 file names
(`0002_c1s1_000003_00.jpg`: person id, camera 1..6, image index), so FastReID's loaders read it as
they read Market-1501. Train and test identities are disjoint; every query identity also appears
in the gallery under another camera.

Every image is rendered from its own random generator seeded by (seed, pid, camera, index), so the
images can be rendered by any number of worker processes and the files are byte-identical for a
given (size, seed). Generation writes into a hidden staging folder next to the final one and
renames it into place after writing a completion marker, so an interrupted run never leaves a
half-written dataset under the final name.
"""

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from kdreid.data.synthreid.factors import CameraStyle, Identity, sample_camera, sample_identities
from kdreid.data.synthreid.render import encode_jpeg, render_background, render_image
from kdreid.errors import DatasetCorruptError

logger = logging.getLogger(__name__)

TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
MARKER = "synthreid.json"  # written last; its presence means the dataset is complete
_VERSION = 1  # bump when the images a (size, seed) produces change
_STREAM_PLAN = 100
_CHUNK = 128  # images per task sent to a worker
_MIN_PARALLEL = 512  # below this many images, rendering in-process beats starting workers


@dataclass(frozen=True)
class SynthReIDSize:
    """The counts that define one size of SynthReID.

    Attributes:
        num_train_ids: identities of the training split.
        num_test_ids: identities of the query/gallery split (disjoint from the training ones).
        num_cams: number of cameras (2..6, as FastReID's Market-1501 reader allows).
        num_train_images: images in `bounding_box_train/`.
        num_query: images in `query/`: one per (test identity, camera) for some of its cameras.
        num_gallery: images in `bounding_box_test/`.
        cams_per_id: mean number of cameras an identity is seen by (each is seen by at least 2).
        max_images_per_cam: most images of one identity in one camera (per split).
    """

    num_train_ids: int
    num_test_ids: int
    num_cams: int
    num_train_images: int
    num_query: int
    num_gallery: int
    cams_per_id: float
    max_images_per_cam: int

    def slots(self, num_ids: int) -> int:
        """Number of (identity, camera) pairs among `num_ids` identities."""
        return round(self.cams_per_id * num_ids)

    def __post_init__(self) -> None:
        train_slots, test_slots = self.slots(self.num_train_ids), self.slots(self.num_test_ids)
        checks = [
            (self.num_train_ids >= 1 and self.num_test_ids >= 1, "needs train and test ids"),
            (self.num_train_ids + self.num_test_ids <= 1501, "Market-1501 pids stop at 1501"),
            (2 <= self.num_cams <= 6, "num_cams must be in 2..6"),
            (2 <= self.cams_per_id <= self.num_cams, "cams_per_id must be in 2..num_cams"),
            (
                train_slots <= self.num_train_images <= train_slots * self.max_images_per_cam,
                "num_train_images must give every (id, camera) pair 1..max_images_per_cam images",
            ),
            (
                self.num_test_ids <= self.num_query <= test_slots,
                "num_query must be in num_test_ids..(num_test_ids * cams_per_id)",
            ),
            (
                test_slots <= self.num_gallery <= test_slots * self.max_images_per_cam,
                "num_gallery must give every (id, camera) pair 1..max_images_per_cam images",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Invalid SynthReID size {self}: {message}")

    @property
    def counts(self) -> dict[str, int]:
        """Number of images per split folder."""
        return {
            TRAIN_DIR: self.num_train_images,
            QUERY_DIR: self.num_query,
            GALLERY_DIR: self.num_gallery,
        }


SYNTHREID_SIZES = {
    "tiny": SynthReIDSize(  # tests: generated in a fraction of a second
        num_train_ids=16,
        num_test_ids=16,
        num_cams=3,
        num_train_images=96,
        num_query=32,
        num_gallery=64,
        cams_per_id=2.5,
        max_images_per_cam=6,
    ),
    "small": SynthReIDSize(  # the CPU demo
        num_train_ids=150,
        num_test_ids=150,
        num_cams=4,
        num_train_images=1500,
        num_query=300,
        num_gallery=1500,
        cams_per_id=3.2,
        max_images_per_cam=8,
    ),
    "market": SynthReIDSize(  # Market-1501's identities, cameras and image counts
        num_train_ids=751,
        num_test_ids=750,
        num_cams=6,
        num_train_images=12936,
        num_query=3368,
        num_gallery=15913,
        cams_per_id=4.8,
        max_images_per_cam=12,
    ),
}


@dataclass(frozen=True)
class ImageJob:
    """One image to render: its split folder, person id, 0-based camera and index."""

    split: str
    pid: int
    cam: int
    index: int

    @property
    def filename(self) -> str:
        """Market-1501 file name; the index is unique per (pid, camera) across query and gallery."""
        return f"{self.pid:04d}_c{self.cam + 1}s1_{self.index:06d}_00.jpg"


def _allocate(
    rng: np.random.Generator, total: int, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Splits `total` into random integer counts with low[i] <= counts[i] <= high[i].

    Each of the `total - sum(low)` spare units goes to a slot drawn without replacement from the
    slots' remaining capacities, so every valid split can occur.
    """
    spare = np.repeat(np.arange(len(low)), high - low)
    extra = rng.choice(len(spare), size=total - int(low.sum()), replace=False)
    return low + np.bincount(spare[extra], minlength=len(low))


def _camera_sets(rng: np.random.Generator, size: SynthReIDSize, num_ids: int) -> list[np.ndarray]:
    """Draws, per identity, the sorted cameras it is seen by (at least 2 each)."""
    per_id = _allocate(
        rng, size.slots(num_ids), np.full(num_ids, 2), np.full(num_ids, size.num_cams)
    )
    return [np.sort(rng.permutation(size.num_cams)[:k]) for k in per_id]


def _split_jobs(
    rng: np.random.Generator,
    size: SynthReIDSize,
    pids: Sequence[int],
    total: int,
    split: str,
    query: int = 0,
) -> list[ImageJob]:
    """Plans the images of one split; with `query` > 0, also one query image per chosen camera."""
    cams = _camera_sets(rng, size, len(pids))
    slots = [(pid, int(cam)) for pid, cs in zip(pids, cams) for cam in cs]
    counts = _allocate(
        rng, total, np.ones(len(slots), int), np.full(len(slots), size.max_images_per_cam)
    )
    queried = set()
    if query:
        per_id = _allocate(rng, query, np.ones(len(pids), int), np.array([len(c) for c in cams]))
        queried = {
            (pid, int(cam))
            for pid, cs, k in zip(pids, cams, per_id)
            for cam in rng.choice(cs, size=k, replace=False)
        }
    jobs = []
    for (pid, cam), count in zip(slots, counts):
        first = 1 if (pid, cam) in queried else 0
        if first:
            jobs.append(ImageJob(QUERY_DIR, pid, cam, 0))
        jobs += [ImageJob(split, pid, cam, first + i) for i in range(count)]
    return jobs


def split_pids(size: SynthReIDSize) -> tuple[range, range]:
    """Person ids of the train split (1..N) and of the test split (the next ones)."""
    num_train = size.num_train_ids
    return range(1, num_train + 1), range(num_train + 1, num_train + size.num_test_ids + 1)


def plan_images(size: SynthReIDSize, seed: int) -> list[ImageJob]:
    """Lists every image of a dataset, train split first."""
    rng = np.random.default_rng([seed, _STREAM_PLAN])
    train_pids, test_pids = split_pids(size)
    train = _split_jobs(rng, size, train_pids, size.num_train_images, TRAIN_DIR)
    test = _split_jobs(rng, size, test_pids, size.num_gallery, GALLERY_DIR, size.num_query)
    return train + test


def build_identities(size: SynthReIDSize, seed: int) -> dict[int, Identity]:
    """Samples every identity of a dataset; train and test families are disjoint."""
    train_pids, test_pids = split_pids(size)
    identities = sample_identities(seed, train_pids, first_family=0)
    identities += sample_identities(seed, test_pids, first_family=len(train_pids))
    return {identity.pid: identity for identity in identities}


class _Renderer:
    """Renders and writes image jobs; one per process."""

    def __init__(
        self, identities: dict[int, Identity], cameras: list[CameraStyle], seed: int, out_dir: Path
    ) -> None:
        self.identities, self.cameras, self.seed, self.out_dir = identities, cameras, seed, out_dir
        self.backgrounds = [render_background(camera) for camera in cameras]

    def __call__(self, jobs: Sequence[ImageJob]) -> int:
        for job in jobs:
            rng = np.random.default_rng([self.seed, job.pid, job.cam, job.index])
            camera = self.cameras[job.cam]
            image = render_image(self.identities[job.pid], camera, self.backgrounds[job.cam], rng)
            (self.out_dir / job.split / job.filename).write_bytes(encode_jpeg(image, camera, rng))
        return len(jobs)


_worker_renderer: _Renderer | None = None


def _init_worker(*args) -> None:
    global _worker_renderer
    cv2.setNumThreads(1)
    _worker_renderer = _Renderer(*args)


def _render_chunk(jobs: Sequence[ImageJob]) -> int:
    return _worker_renderer(jobs)


def _num_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _write_dataset(
    out_dir: Path, size: SynthReIDSize, seed: int, name: str, num_workers: int | None
) -> None:
    """Renders every image into `out_dir`, then writes the completion marker."""
    jobs = plan_images(size, seed)
    args = (
        build_identities(size, seed),
        [sample_camera(seed, c) for c in range(size.num_cams)],
        seed,
        out_dir,
    )
    for split in size.counts:
        (out_dir / split).mkdir(parents=True)
    workers = num_workers or _num_workers()
    if workers == 1 or len(jobs) < _MIN_PARALLEL:
        _Renderer(*args)(jobs)
    else:
        chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
        with multiprocessing.Pool(workers, initializer=_init_worker, initargs=args) as pool:
            for _ in pool.imap_unordered(_render_chunk, chunks):
                pass
    marker = {
        "name": name,
        "seed": seed,
        "version": _VERSION,
        "size": asdict(size),
        "counts": size.counts,
    }
    (out_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _staging_dir(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


def _check_complete(final: Path, size_name: str, size: SynthReIDSize, seed: int) -> None:
    """Raises a DatasetCorruptError naming `final` unless it holds this exact, complete dataset."""
    advice = f"Delete {final} and run again to regenerate it."
    marker = final / MARKER
    if not marker.is_file():
        raise DatasetCorruptError(
            f"{final} exists but is not a complete SynthReID dataset (no {MARKER}); it may have "
            f"been left by an interrupted generation. {advice}"
        )
    meta = json.loads(marker.read_text())
    expected = {"name": size_name, "seed": seed, "version": _VERSION}
    found = {key: meta.get(key) for key in expected}
    if found != expected:
        raise DatasetCorruptError(f"{final} holds SynthReID {found}, not {expected}. {advice}")
    for split, count in size.counts.items():
        folder = final / split
        found_count = len(os.listdir(folder)) if folder.is_dir() else 0
        if found_count != count:
            raise DatasetCorruptError(
                f"{folder} holds {found_count} images instead of {count}; the SynthReID dataset "
                f"is corrupt. {advice}"
            )


@contextlib.contextmanager
def _generation_lock(root: Path, name: str) -> Iterator[None]:
    """Serialises generation between processes (e.g. the ranks of a distributed run)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def generate_synthreid(
    root_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, num_workers: int | None = None
) -> Path:
    """Returns `<root_dir>/SynthReID-<size>/`, generating it first if it does not exist.

    Args:
        root_dir: folder that holds the datasets (FastReID's `datasets/` root).
        size: a key of `SYNTHREID_SIZES`.
        seed: dataset seed; the same (size, seed) always gives byte-identical files.
        num_workers: rendering processes; defaults to the CPUs this process may use.

    Returns:
        The dataset folder.

    Raises:
        ValueError: for an unknown size.
        DatasetCorruptError: if the folder exists but is incomplete, corrupt or of another seed,
            or an interrupted generation left its staging folder behind.
    """
    if size not in SYNTHREID_SIZES:
        raise ValueError(f"Unknown SynthReID size {size!r}; choose one of {list(SYNTHREID_SIZES)}")
    spec = SYNTHREID_SIZES[size]
    root = Path(root_dir)
    final = root / f"SynthReID-{size}"
    if final.exists():
        _check_complete(final, size, spec, seed)
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _generation_lock(root, final.name):
        if final.exists():
            _check_complete(final, size, spec, seed)
            return final
        staging = _staging_dir(final)
        if staging.exists():
            raise DatasetCorruptError(
                f"{staging} was left by an interrupted SynthReID generation. Delete it and run "
                f"again to generate {final}."
            )
        start = time.perf_counter()
        try:
            _write_dataset(staging, spec, seed, size, num_workers)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        staging.rename(final)
    logger.info(
        "Generated SynthReID-%s (%d images) at %s in %.1f s",
        size,
        sum(spec.counts.values()),
        final,
        time.perf_counter() - start,
    )
    return final
