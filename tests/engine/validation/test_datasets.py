"""Missing datasets and broken images give errors that name the path and what was expected."""

import shutil

import numpy as np
import pytest

from kdreid.config import get_cfg, merge_from_file
from kdreid.errors import DatasetNotFoundError, UnreadableImageError

from ...conftest import REPO


def test_missing_dataset_names_path_and_layout(tmp_path, recwarn):
    from fastreid.data.datasets import DATASET_REGISTRY

    with pytest.raises(DatasetNotFoundError) as info:
        DATASET_REGISTRY.get("Market1501")(root=str(tmp_path))
    assert not recwarn.list  # FastReID's "deprecated layout" warning: the error says it all
    message = str(info.value)
    assert str(tmp_path) in message
    assert "bounding_box_train" in message and "query" in message  # the expected layout
    assert "FASTREID_DATASETS" in message
    # the layout FastReID asks for (it warns that the other one is deprecated), not the old one
    preferred = tmp_path / "Market-1501-v15.09.15"
    assert f"'{preferred}' is not found" in message
    assert f"\n  {preferred / 'bounding_box_train'}\n" in message
    assert f"deprecated, the same folders directly in '{tmp_path}'" in message


def test_missing_dataset_with_its_folder_there_names_the_missing_part(tmp_path):
    from fastreid.data.datasets import DATASET_REGISTRY

    (tmp_path / "Market-1501-v15.09.15" / "bounding_box_train").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as info:
        DATASET_REGISTRY.get("Market1501")(root=str(tmp_path))
    message = str(info.value)
    assert f"'{tmp_path / 'Market-1501-v15.09.15' / 'query'}' is not found" in message
    assert "deprecated" not in message


@pytest.mark.parametrize(
    "stray, why",
    [("copy_of_image.jpg", "identity -1..1501, camera 1..6"), ("0002_c9s1_000451_03.jpg", "c1s1")],
)
def test_a_file_named_unlike_the_dataset_is_named(tmp_path, stray, why):
    """FastReID reads identity and camera from each name: a stray file failed with an
    AttributeError (or a bare assert for camera 9) that named nothing."""
    from fastreid.data.datasets import DATASET_REGISTRY

    from kdreid.errors import DatasetCorruptError

    market = tmp_path / "Market-1501-v15.09.15"
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        (market / split).mkdir(parents=True)
        (market / split / "0002_c1s1_000451_03.jpg").write_bytes(b"")
    assert len(DATASET_REGISTRY.get("Market1501")(root=str(tmp_path)).query) == 1  # well named
    with pytest.warns(UserWarning, match="data structure is deprecated"):  # a real fallback
        old = DATASET_REGISTRY.get("Market1501")(root=str(market))
    assert len(old.query) == 1
    (market / "query" / stray).write_bytes(b"")
    with pytest.raises(DatasetCorruptError, match=f"'{market / 'query' / stray}' is not named"):
        len(DATASET_REGISTRY.get("Market1501")(root=str(tmp_path)).query)  # read when first used
    with pytest.raises(DatasetCorruptError, match=why):
        len(DATASET_REGISTRY.get("Market1501")(root=str(tmp_path)).query)


def test_missing_dataset_through_the_trainer(tmp_path, monkeypatch):
    from fastreid.data import build

    from kdreid.engine import Trainer

    monkeypatch.setattr(build, "_root", str(tmp_path))
    cfg = get_cfg()
    merge_from_file(cfg, f"{REPO}/configs/Market1501/bagtricks_R50.yml")
    with pytest.raises(DatasetNotFoundError, match="Market1501"):
        Trainer.build_train_loader(cfg)


@pytest.fixture
def broken_tiny(datasets_root, tmp_path, monkeypatch):
    """A private copy of SynthReID-tiny whose first training image is truncated."""
    from fastreid.data.datasets import DATASET_REGISTRY

    DATASET_REGISTRY.get("SynthReIDTiny")(root=str(datasets_root))  # generate once per session
    shutil.copytree(datasets_root / "SynthReID-tiny", tmp_path / "SynthReID-tiny")
    victim = sorted((tmp_path / "SynthReID-tiny" / "bounding_box_train").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    return tmp_path, victim


# With a worker process, the loader left behind by the error takes ~5 s to shut down.
@pytest.mark.parametrize("num_workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_truncated_image_is_named(broken_tiny, num_workers, monkeypatch):
    from fastreid.data import build

    from kdreid.engine import Trainer

    root, victim = broken_tiny
    monkeypatch.setattr(build, "_root", str(root))
    cfg = get_cfg()
    merge_from_file(cfg, f"{REPO}/configs/Synthetic/tiny.yml")
    cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    cfg.SOLVER.IMS_PER_BATCH = 96  # one batch holds every training image
    loader = Trainer.build_train_loader(cfg)
    with pytest.raises(UnreadableImageError, match=victim.name):
        for _ in range(3):
            next(iter(loader))


def test_readable_images_still_load(fastreid_root):
    from fastreid.data.common import CommDataset
    from fastreid.data.datasets import DATASET_REGISTRY

    data = DATASET_REGISTRY.get("SynthReIDTiny")(root=str(fastreid_root))
    image = CommDataset(data.query, transform=None, relabel=False)[0]["images"]
    assert np.asarray(image).shape == (128, 64, 3)


@pytest.mark.slow
def test_truncated_image_through_train_net(broken_tiny, tmp_path):
    """The command line ends with one line naming the file, and exit status 2."""
    import os
    import subprocess
    import sys

    root, victim = broken_tiny
    cmd = [
        sys.executable,
        f"{REPO}/projects/SpeedKD/train_net.py",
        "--config-file",
        f"{REPO}/configs/Synthetic/tiny.yml",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATALOADER.NUM_WORKERS",
        "1",
        "DATALOADER.SAMPLER_TRAIN",
        "TrainingSampler",
        "SOLVER.IMS_PER_BATCH",
        "96",
        "KDREID.PROGRESS",
        "False",
    ]
    env = {**os.environ, "FASTREID_DATASETS": str(root)}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot read image") and victim.name in last


def test_msmt17_missing_names_the_folder_and_layout(tmp_path):
    """FastReID's MSMT17 asserted 'Dataset folder not found' without a path, and opened its list
    files unchecked."""
    from fastreid.data.datasets import DATASET_REGISTRY

    msmt17 = DATASET_REGISTRY.get("MSMT17")
    with pytest.raises(DatasetNotFoundError) as info:
        msmt17(root=str(tmp_path))
    message = str(info.value)
    assert f"'{tmp_path / 'MSMT17_V1'}' is not found" in message
    assert f"\n  {tmp_path / 'MSMT17_V1' / 'list_gallery.txt'}\n" in message
    assert "or MSMT17_V2 with mask_train_v2/ and mask_test_v2/" in message
    v2 = tmp_path / "MSMT17_V2"
    for name in ("mask_train_v2", "mask_test_v2"):
        (v2 / name).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=f"'{v2 / 'list_train.txt'}' is not found"):
        msmt17(root=str(tmp_path))
    for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt"):
        (v2 / name).write_text("0001/0001_011_01_0303morning_0015_0.jpg 1\n")
    assert len(msmt17(root=str(tmp_path)).query) == 1  # complete: FastReID reads it as before


def _photo(height=24, width=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("format", [None, "RGB", "BGR"])
def test_16bit_greyscale_png_is_scaled_not_saturated(tmp_path, format):
    # FastReID's read_image fails on a 16-bit PNG (format None: Image.fromarray of uint16 HxWx3)
    # or, asked for RGB, clips every value above 255 to white.
    from PIL import Image

    from kdreid.engine.validation.datasets import read_image

    grey8 = _photo()[..., 0]
    path = tmp_path / "depth.png"
    Image.fromarray(grey8.astype(np.uint16) * 257).save(path)  # 16-bit PNG of the same picture
    assert Image.open(path).mode.startswith("I")
    image = np.asarray(read_image(str(path), format))
    assert image.shape == (*grey8.shape, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey8)


def test_palette_rgba_and_cmyk_images_give_three_channels(tmp_path):
    # FastReID keeps the decoded mode for format None: a palette PNG gave its indices as grey,
    # an RGBA PNG or a CMYK JPEG a 4-channel image the model's first convolution refuses.
    from PIL import Image

    from kdreid.engine.validation.datasets import read_image

    rgb = Image.fromarray(_photo())
    palette = rgb.quantize(colors=16)
    palette.save(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / "p.png"))), expected)
    rgba = rgb.convert("RGBA")
    rgba.save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / "a.png"))), _photo())
    rgb.convert("CMYK").save(tmp_path / "c.jpg")
    assert np.asarray(read_image(str(tmp_path / "c.jpg"))).shape == (24, 16, 3)
    # an ordinary image reads as FastReID reads it, grey ones repeated into three channels
    rgb.save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(read_image(str(tmp_path / "rgb.png"))), _photo())
    np.testing.assert_array_equal(
        np.asarray(read_image(str(tmp_path / "rgb.png"), "BGR")), _photo()[..., ::-1]
    )
    rgb.convert("L").save(tmp_path / "l.png")
    grey = np.asarray(read_image(str(tmp_path / "l.png")))
    assert grey.shape == (24, 16, 3) and (grey[..., 0] == grey[..., 2]).all()


def test_float_image_is_refused_by_name(tmp_path):
    from PIL import Image

    from kdreid.engine.validation.datasets import read_image

    path = tmp_path / "measurements.tif"
    Image.fromarray(np.zeros((8, 8), np.float32)).save(path)
    with pytest.raises(UnreadableImageError, match="measurements.tif': floating-point pixels"):
        read_image(str(path))
