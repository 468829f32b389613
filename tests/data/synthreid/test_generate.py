"""SynthReID generation: layout and counts, determinism, parallel rendering, recovery."""

import re
from collections import defaultdict

import cv2
import numpy as np
import pytest
from fastreid.data.datasets import DATASET_REGISTRY

from kdreid.data import SYNTHREID_SIZES, generate_synthreid
from kdreid.data.synthreid import generate as synthreid
from kdreid.data.synthreid.generate import (
    GALLERY_DIR,
    QUERY_DIR,
    TRAIN_DIR,
    plan_images,
)

MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d)")  # FastReID's Market1501.process_dir pattern
TINY = SYNTHREID_SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return generate_synthreid(tmp_path_factory.mktemp("synthreid"), "tiny", seed=0)


def _parse(folder):
    """(pid, camera) per file of a split folder, parsed as FastReID parses Market-1501."""
    return [tuple(map(int, MARKET_PATTERN.search(f.name).groups())) for f in folder.iterdir()]


def _read_all(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


def test_tiny_layout_counts_and_images(tiny_dir):
    assert tiny_dir.name == "SynthReID-tiny"
    for split, count in TINY.counts.items():
        assert len(list((tiny_dir / split).glob("*.jpg"))) == count, split
    train, test = _parse(tiny_dir / TRAIN_DIR), _parse(tiny_dir / QUERY_DIR)
    test += _parse(tiny_dir / GALLERY_DIR)
    assert {pid for pid, _ in train} == set(range(1, TINY.num_train_ids + 1))
    assert {pid for pid, _ in test} == set(
        range(TINY.num_train_ids + 1, TINY.num_train_ids + TINY.num_test_ids + 1)
    )
    assert {cam for _, cam in train + test} == set(range(1, TINY.num_cams + 1))
    for path in sorted((tiny_dir / QUERY_DIR).glob("*.jpg"))[:8]:
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (128, 64, 3) and image.dtype == np.uint8


def test_every_query_has_a_cross_camera_gallery_match(tiny_dir):
    gallery = defaultdict(set)
    for pid, cam in _parse(tiny_dir / GALLERY_DIR):
        gallery[pid].add(cam)
    query = _parse(tiny_dir / QUERY_DIR)
    assert len(set(query)) == len(query), "one query image per (identity, camera)"
    for pid, cam in query:
        assert gallery[pid] - {cam}, f"query pid {pid} cam {cam} has no match in another camera"


def test_market_plan_matches_market1501_counts():
    size = SYNTHREID_SIZES["market"]
    jobs = plan_images(size, seed=0)
    counts = {split: sum(job.split == split for job in jobs) for split in size.counts}
    assert counts == {TRAIN_DIR: 12936, QUERY_DIR: 3368, GALLERY_DIR: 15913}
    assert max(job.pid for job in jobs) <= 1501 and max(job.cam for job in jobs) <= 5
    assert len({(job.split, job.filename) for job in jobs}) == len(jobs)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, tiny_dir):
    again = _read_all(generate_synthreid(tmp_path / "a", "tiny", seed=0))
    assert again == _read_all(tiny_dir)
    other = _read_all(generate_synthreid(tmp_path / "b", "tiny", seed=1))
    assert other.keys() != again.keys() or all(other[k] != again[k] for k in other)


def test_parallel_rendering_gives_the_same_bytes(tmp_path, tiny_dir, monkeypatch):
    monkeypatch.setattr(synthreid, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(synthreid, "_CHUNK", 16)
    parallel = generate_synthreid(tmp_path, "tiny", seed=0, num_workers=2)
    assert _read_all(parallel) == _read_all(tiny_dir)


def test_leftover_staging_folder_is_reported(tmp_path):
    staging = tmp_path / ".SynthReID-tiny.partial"
    (staging / QUERY_DIR).mkdir(parents=True)
    with pytest.raises(RuntimeError, match=re.escape(str(staging))):
        DATASET_REGISTRY.get("SynthReIDTiny")(root=str(tmp_path))


def test_folder_without_marker_is_reported(tmp_path):
    final = tmp_path / "SynthReID-tiny"
    (final / TRAIN_DIR).mkdir(parents=True)
    with pytest.raises(RuntimeError, match=re.escape(str(final)) + ".*[Dd]elete"):
        DATASET_REGISTRY.get("SynthReIDTiny")(root=str(tmp_path))


def test_missing_image_is_reported(tmp_path):
    final = generate_synthreid(tmp_path, "tiny")
    next((final / GALLERY_DIR).glob("*.jpg")).unlink()
    with pytest.raises(RuntimeError, match="corrupt"):
        generate_synthreid(tmp_path, "tiny")


def test_failed_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_encoder(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthreid, "encode_jpeg", broken_encoder)
    with pytest.raises(KeyboardInterrupt):
        generate_synthreid(tmp_path, "tiny")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_unknown_size_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        generate_synthreid(tmp_path, "huge")
