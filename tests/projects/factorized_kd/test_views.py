"""FactorizedKD views: the table, the row rule, the batched crop, the transform, the configs."""

import math
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from factorized_kd import (
    FKDTrainer,
    ViewCrop,
    build_transforms,
    check_fkd_config,
    crop_view,
    view_fractions,
    view_rows,
)
from factorized_kd.views import FIGURE_1, VIEW_NAMES, VIEW_TABLES
from kdreid.config import get_cfg, merge_from_file, merge_from_list
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError

from ...conftest import REPO

PARTIAL = ("Up1", "Mid1", "Dn1", "Up2", "Mid2", "Dn2")
FKD_CONFIGS = os.path.join(REPO, "configs", "FactorizedKD")
TEACHERS = [os.path.join(FKD_CONFIGS, d, "teacher.yml") for d in ("Market1501", "DukeMTMC")]
TINY = os.path.join(FKD_CONFIGS, "Synthetic", "tiny_teacher.yml")


def _row_image(height=28, width=5):
    """A ``(1, height, width)`` tensor whose row r holds the value r."""
    return torch.arange(height, dtype=torch.float32).view(1, height, 1).expand(1, height, width)


def _smooth_image(height, width, seed=0):
    """A random RGB uint8 image without fine detail, as an ``(H, W, 3)`` array."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 3, generator=g) * 255
    full = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return full[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _view_cfg(view, size=(24, 24), reading="stripes"):
    """A config for ``view`` at ``size`` with every training augmentation off."""
    cfg = get_cfg()
    cfg.MODEL.FKD.VIEW = view
    cfg.MODEL.FKD.VIEW_READING = reading
    cfg.MODEL.FKD.VIEW_SIZE = list(size)
    cfg.INPUT.SIZE_TRAIN = list(size)
    cfg.INPUT.SIZE_TEST = list(size)
    for node in ("FLIP", "PADDING", "REA", "RPT", "CJ", "AUTOAUG", "AUGMIX", "AFFINE", "CROP"):
        cfg.INPUT[node].ENABLED = False
    return cfg


# --- the table ---------------------------------------------------------------------------------


def test_table_is_the_page_reading():
    """The method page's table, written out by hand."""
    f = Fraction
    assert VIEW_TABLES["stripes"] == {
        "Holistic": (f(0), f(1)),
        "Up1": (f(0), f(1, 2)),
        "Mid1": (f(1, 4), f(3, 4)),
        "Dn1": (f(1, 2), f(1)),
        "Up2": (f(0), f(3, 7)),
        "Mid2": (f(2, 7), f(5, 7)),
        "Dn2": (f(4, 7), f(1)),
    }
    assert VIEW_TABLES["boundaries"] == {
        "Holistic": (f(0), f(1)),
        "Up1": (f(1, 4), f(1, 2)),
        "Mid1": (f(1, 2), f(3, 4)),
        "Dn1": (f(3, 4), f(1)),
        "Up2": (f(1, 7), f(3, 7)),
        "Mid2": (f(3, 7), f(5, 7)),
        "Dn2": (f(5, 7), f(1)),
    }
    assert set(FIGURE_1) == set(PARTIAL) and VIEW_NAMES == ("Holistic", *PARTIAL)


# --- rows ----------------------------------------------------------------------------------------

# A 28-row image (divisible by 4 and 7): rows are exact, r/4 = 7 rows, r/7 = 4 rows.
ROWS_28 = {
    "stripes": {"Holistic": (0, 28), "Up1": (0, 14), "Mid1": (7, 21), "Dn1": (14, 28),
                "Up2": (0, 12), "Mid2": (8, 20), "Dn2": (16, 28)},
    "boundaries": {"Holistic": (0, 28), "Up1": (7, 14), "Mid1": (14, 21), "Dn1": (21, 28),
                   "Up2": (4, 12), "Mid2": (12, 20), "Dn2": (20, 28)},
}  # fmt: skip


@pytest.mark.parametrize("reading", ["stripes", "boundaries"])
@pytest.mark.parametrize("view", VIEW_NAMES)
def test_crops_of_a_known_image_keep_exactly_the_view_rows(view, reading):
    """Row r of the image holds r, so the crop's values are its row indices: the tensor and the
    PIL paths of ViewCrop both return exactly rows [start, stop) of the table above."""
    start, stop = ROWS_28[reading][view]
    assert view_rows(view, 28, reading) == (start, stop)
    expected = torch.arange(start, stop, dtype=torch.float32)
    crop = ViewCrop(view, reading)(_row_image())
    assert crop.shape == (1, stop - start, 5)
    assert torch.equal(crop[0, :, 0], expected) and torch.equal(crop[0, :, 4], expected)
    pil = Image.fromarray(np.repeat(np.arange(28, dtype=np.uint8)[:, None], 5, axis=1))
    cropped = np.asarray(ViewCrop(view, reading)(pil))
    assert cropped.shape == (stop - start, 5)
    assert (cropped == np.arange(start, stop)[:, None]).all()


# Hand-derived: start = floor(top H), stop = ceil(bottom H).
#   H=16: Up2 stop ceil(48/7 = 6.86) = 7; Mid2 floor(32/7 = 4.57) = 4, ceil(80/7 = 11.4) = 12;
#         Dn2 floor(64/7 = 9.14) = 9.
#   H=8:  Up2 ceil(24/7 = 3.43) = 4; Mid2 floor(16/7 = 2.29) = 2, ceil(40/7 = 5.71) = 6;
#         Dn2 floor(32/7 = 4.57) = 4.
#   H=7:  Up1 ceil(3.5) = 4; Mid1 floor(1.75) = 1, ceil(5.25) = 6; Dn1 floor(3.5) = 3.
#   H=1:  every view is the one row.
ROUNDED = {
    16: {"Up1": (0, 8), "Mid1": (4, 12), "Dn1": (8, 16), "Up2": (0, 7), "Mid2": (4, 12),
         "Dn2": (9, 16)},
    8: {"Up1": (0, 4), "Mid1": (2, 6), "Dn1": (4, 8), "Up2": (0, 4), "Mid2": (2, 6),
        "Dn2": (4, 8)},
    7: {"Up1": (0, 4), "Mid1": (1, 6), "Dn1": (3, 7), "Up2": (0, 3), "Mid2": (2, 5),
        "Dn2": (4, 7)},
    1: {view: (0, 1) for view in PARTIAL},
}  # fmt: skip


@pytest.mark.parametrize("height", sorted(ROUNDED))
def test_rows_round_outward_on_odd_and_feature_map_heights(height):
    for view, rows in ROUNDED[height].items():
        assert view_rows(view, height) == rows, view


@pytest.mark.parametrize("reading", ["stripes", "boundaries"])
def test_rows_cover_the_fraction_by_less_than_one_row_each_side(reading):
    for height in range(1, 300):
        for view in VIEW_NAMES:
            top, bottom = view_fractions(view, reading)
            start, stop = view_rows(view, height, reading)
            assert 0 <= start < stop <= height
            assert top * height - 1 < start <= top * height
            assert bottom * height <= stop < bottom * height + 1


@pytest.mark.parametrize("height", [0, -3, 2.5, True])
def test_rows_need_a_positive_integer_height(height):
    with pytest.raises(ValueError, match="height"):
        view_rows("Up1", height)


# --- the batched crop ---------------------------------------------------------------------------


def _pil_float_reference(images, view, size, resample):
    """crop_view one image and one channel at a time with PIL's float ("F") resize."""
    start, stop = view_rows(view, images.shape[-2])
    out = torch.empty(*images.shape[:2], *size)
    for b, image in enumerate(images):
        for c, channel in enumerate(image):
            pil = Image.fromarray(channel[start:stop].numpy(), mode="F")
            out[b, c] = torch.from_numpy(np.array(pil.resize(size[::-1], resample)))
    return out


@pytest.mark.parametrize(
    "mode,resample",
    [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)],
)
@pytest.mark.parametrize(
    "hw,size",
    [((40, 20), (24, 24)), ((30, 12), (28, 28)), ((64, 32), (7, 5))],
)
def test_crop_view_equals_a_per_image_pil_reference(hw, size, mode, resample):
    """Down- and upsampling: torch's antialiased resize is PIL's, image by image."""
    images = torch.rand(3, 3, *hw, generator=torch.Generator().manual_seed(1)) * 255
    for view in VIEW_NAMES:
        out = crop_view(images, view, size, mode=mode)
        assert out.shape == (3, 3, *size) and out.dtype == images.dtype
        ref = _pil_float_reference(images, view, size, resample)
        torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)


def test_crop_view_of_an_unresized_view_is_the_rows_themselves():
    images = torch.rand(2, 3, 28, 10)
    out = crop_view(images, "Mid2", (12, 10))
    assert torch.equal(out, images[:, :, 8:20])
    out[0, 0, 0, 0] = -1.0
    assert images[0, 0, 8, 0] >= 0  # a copy, not a view of the batch


def test_crop_view_rejects_what_it_cannot_crop():
    with pytest.raises(ValueError, match="floating-point"):
        crop_view(torch.zeros(1, 3, 8, 4, dtype=torch.uint8), "Up1", (4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        crop_view(torch.zeros(3, 8, 4), "Up1", (4, 4))
    with pytest.raises(ValueError, match="mode"):
        crop_view(torch.zeros(1, 3, 8, 4), "Up1", (4, 4), mode="nearest")
    with pytest.raises(ValueError, match="size"):
        crop_view(torch.zeros(1, 3, 8, 4), "Up1", (4,))


# --- the transform in FastReID's pipeline --------------------------------------------------------


@pytest.mark.parametrize("view", ["Up1", "Mid2", "Dn2"])
def test_train_and_test_transforms_give_the_same_view_pixels(view):
    """Augmentation off: training and test images are the same tensor, namely the view's rows of
    the full image resized by PIL's bicubic to INPUT.SIZE_*; and the device-side crop of the full
    image agrees with them (PIL rounds to 8 bits between passes, hence the tolerance)."""
    array = _smooth_image(40, 20)
    image = Image.fromarray(array)
    cfg = _view_cfg(view)
    train = build_transforms(cfg, is_train=True)
    test = build_transforms(cfg, is_train=False)
    assert isinstance(train.transforms[0], ViewCrop) and isinstance(test.transforms[0], ViewCrop)
    out = train(image)
    assert out.shape == (3, 24, 24)
    assert torch.equal(out, test(image))
    start, stop = view_rows(view, 40)
    ref = np.asarray(image.crop((0, start, 20, stop)).resize((24, 24), Image.BICUBIC))
    assert torch.equal(out, torch.from_numpy(ref.copy()).permute(2, 0, 1).float())
    batch = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float()
    device_side = crop_view(batch, view, (24, 24))[0]
    assert (device_side - out).abs().max() <= 2


def test_the_crop_comes_before_fastreids_resize_and_augmentation():
    cfg = get_cfg()
    merge_from_file(cfg, TEACHERS[0])
    names = [type(t).__name__ for t in build_transforms(cfg, is_train=True).transforms]
    assert names[:2] == ["ViewCrop", "Resize"] and "RandomErasing" in names


def test_without_a_view_the_transforms_are_fastreids():
    from fastreid.data.transforms import build_transforms as fastreid_transforms

    cfg = _view_cfg("", size=(16, 8))
    image = Image.fromarray(_smooth_image(40, 20))
    for is_train in (True, False):
        ours = build_transforms(cfg, is_train=is_train)
        assert not any(isinstance(t, ViewCrop) for t in ours.transforms)
        assert torch.equal(ours(image), fastreid_transforms(cfg, is_train=is_train)(image))


def test_the_reading_is_one_config_change():
    """Up1 of the 28-row image: rows 0-13 as we read the paper, 7-13 under "boundaries"."""
    image = Image.fromarray(np.repeat(np.arange(28, dtype=np.uint8)[:, None], 3, axis=1))
    for reading, rows in (("stripes", (0, 14)), ("boundaries", (7, 14))):
        cfg = _view_cfg("Up1", size=(rows[1] - rows[0], 3), reading=reading)
        out = build_transforms(cfg, is_train=False)(image.convert("RGB"))
        assert torch.equal(out[0, :, 0], torch.arange(*rows, dtype=torch.float32))


# --- bad input ----------------------------------------------------------------------------------


def _assert_lists_the_views(message):
    for view in VIEW_NAMES:
        assert view in message


def test_an_unknown_view_is_refused_with_the_valid_names():
    for call in (
        lambda: view_rows("Up3", 28),
        lambda: ViewCrop("up1"),
        lambda: crop_view(torch.zeros(1, 3, 8, 4), "Top", (4, 4)),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        _assert_lists_the_views(str(info.value))
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    merge_from_list(cfg, ["MODEL.FKD.VIEW", "Middle"])
    with pytest.raises(ConfigError, match="MODEL.FKD.VIEW 'Middle'") as info:
        check_fkd_config(cfg)
    _assert_lists_the_views(str(info.value))
    with pytest.raises(ConfigError, match="Middle"):
        check_config(cfg)  # stage 1 of every run, before the model and the datasets are built


def test_bad_reading_size_or_factor_mode_is_refused():
    cfg = _view_cfg("Up1")
    cfg.MODEL.FKD.VIEW_READING = "fractions"
    with pytest.raises(ConfigError, match="stripes, boundaries"):
        check_fkd_config(cfg)
    with pytest.raises(ConfigError, match="stripes, boundaries"):
        view_rows("Up1", 8, reading="fractions")
    cfg = _view_cfg("Up1")
    cfg.INPUT.SIZE_TEST = [256, 128]
    with pytest.raises(ConfigError, match=r"INPUT.SIZE_TEST is \[256, 128\]"):
        check_config(cfg)  # stage 1, before any transform is built
    cfg.MODEL.FKD.VIEW = ""  # the whole image: any input size
    check_fkd_config(cfg)
    cfg.MODEL.FKD.FACTOR_MODE = "concat"
    with pytest.raises(ConfigError, match="linear, split"):
        check_fkd_config(cfg)


# --- configs, trainer, train_net ----------------------------------------------------------------


@pytest.mark.parametrize("path", [*TEACHERS, TINY], ids=lambda p: os.path.relpath(p, REPO))
def test_teacher_configs_load_and_take_every_view(path):
    cfg = get_cfg()
    merge_from_file(cfg, path)
    assert cfg.MODEL.FKD.VIEW == "Up1" and cfg.MODEL.FKD.VIEW_READING == "stripes"
    assert list(cfg.INPUT.SIZE_TRAIN) == list(cfg.INPUT.SIZE_TEST) == cfg.MODEL.FKD.VIEW_SIZE
    assert not cfg.KD.MODEL_CONFIG and cfg.MODEL.FKD.FACTOR_MODE == "linear"
    for view in VIEW_NAMES:
        merge_from_list(cfg, ["MODEL.FKD.VIEW", view])
        check_fkd_config(cfg)
    if path in TEACHERS:
        assert cfg.MODEL.BACKBONE.DEPTH == "50x" and cfg.INPUT.SIZE_TEST == [224, 224]
        assert os.path.basename(os.path.dirname(path)) in cfg.DATASETS.NAMES


def test_tiny_teacher_builds_a_model_for_its_view_size():
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    model = FKDTrainer.build_model(cfg).eval()
    with torch.no_grad():
        feature = model(torch.rand(1, 3, *cfg.INPUT.SIZE_TEST) * 255)
    assert feature.shape == (1, cfg.MODEL.BACKBONE.FEAT_DIM)


def test_trainer_loaders_crop_the_view(fastreid_root):
    """The test set's images are the view of the file, resized; the training set's transforms
    start with the same crop (the loaders are not iterated)."""
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    merge_from_list(cfg, ["MODEL.FKD.VIEW", "Dn2"])
    loader, _ = FKDTrainer.build_test_loader(cfg, "SynthReIDTiny")
    item = loader.dataset[0]
    image = Image.open(item["img_paths"]).convert("RGB")
    start, stop = view_rows("Dn2", image.height)
    assert start == math.floor(Fraction(4, 7) * image.height) and stop == image.height
    ref = np.asarray(image.crop((0, start, image.width, stop)).resize((32, 32), Image.BICUBIC))
    assert torch.equal(item["images"], torch.from_numpy(ref.copy()).permute(2, 0, 1).float())
    train = FKDTrainer.build_train_loader(cfg)
    first = train.dataset.transform.transforms[0]
    assert isinstance(first, ViewCrop) and first.view == "Dn2"
