"""Checks of the data as FastReID reads it: clear errors for missing datasets, misnamed files and
unreadable images.

FastReID reports a missing dataset folder as ``RuntimeError('"path" is not found')`` and a broken
image as whatever PIL raises deep inside a loader worker, without the file name. :func:`install`
wraps the two functions involved so that the error names the path and what was expected.
"""

import functools
import glob
import os
import re
import sys
import warnings

import numpy as np
from fastreid.data import build, common
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import Dataset
from PIL import Image, ImageOps

from kdreid.errors import DatasetCorruptError, DatasetNotFoundError, UnreadableImageError

__all__ = ["install", "read_image"]

HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL modes of 16-bit (and 32-bit integer) greyscale images, e.g. a 16-bit PNG from a depth or
thermal camera. FastReID's ``read_image`` fails on them (``Image.fromarray`` of a uint16 HxWx3
array) or, converted to RGB, saturates them to white; they are scaled to 8 bits instead."""


def _to_8bit(image, file_name):
    """An 8-bit "L" image for a high-bit-depth greyscale one (16 bits scaled by 1/257)."""
    values = np.asarray(image)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UnreadableImageError(
            f"Cannot read image '{file_name}': 32-bit integer pixels (range {values.min()} to "
            f"{values.max()}). Expected 8- or 16-bit pixels; convert it to an 8-bit JPEG/PNG."
        )
    scaled = np.round(values.astype(np.float64) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _decoded(file_name):
    """The image of ``file_name`` as PIL decodes it, EXIF orientation applied, pixels loaded."""
    with open(file_name, "rb") as f:
        image = Image.open(f)
        try:  # as FastReID does (Pillow #3973: broken EXIF data must not stop the read)
            image = ImageOps.exif_transpose(image)
        except Exception:
            pass
        image.load()
    return image


def _converted(image, format, file_name):
    """FastReID's conversion of a decoded image to ``format``, for every mode a camera writes."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = _to_8bit(image, file_name)
    elif image.mode == "F":
        raise UnreadableImageError(
            f"Cannot read image '{file_name}': floating-point pixels (PIL mode F, e.g. a TIFF of "
            "measurements). Expected an 8- or 16-bit photograph; convert it to an 8-bit JPEG/PNG."
        )
    if format is None:
        # FastReID keeps the decoded mode, so a palette PNG became a grey image of palette
        # indices and an RGBA or CMYK file a 4-channel tensor the first convolution refuses.
        format = "L" if image.mode == "L" else "RGB"
        if format == "L":  # FastReID repeats a grey image into 3 channels
            return Image.fromarray(np.repeat(np.asarray(image)[..., None], 3, axis=-1))
    array = np.asarray(image.convert("RGB" if format == "BGR" else format))
    if format == "L":
        array = np.expand_dims(array, -1)
    elif format == "BGR":
        array = array[:, :, ::-1]
    elif array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array))


def read_image(file_name, format=None):
    """FastReID's ``read_image`` (an HWC PIL image in ``format``; None: 3-channel RGB) that names
    the file when it cannot be read, scales 16-bit greyscale images to 8 bits and gives palette,
    RGBA and CMYK files 3 channels.

    Raises:
        UnreadableImageError: the file is missing, truncated, not an image, or of float pixels.
    """
    try:
        image = _decoded(file_name)
    except Exception as exc:
        raise UnreadableImageError(
            f"Cannot read image '{file_name}': {type(exc).__name__}: {exc}. "
            "Expected a complete JPEG/PNG file; remove or replace it."
        ) from exc
    try:
        return _converted(image, format, file_name)
    except UnreadableImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(
            f"Cannot read image '{file_name}' (PIL mode {image.mode}) as {format or 'RGB'}: "
            f"{type(exc).__name__}: {exc}. Expected an RGB or greyscale JPEG/PNG file."
        ) from exc


PREFERRED_SUBFOLDER = {"Market1501": "Market-1501-v15.09.15"}
"""Datasets whose FastReID loader prefers the files in a subfolder and otherwise falls back to a
layout it calls deprecated."""


def check_before_run(self, required_files):
    """Replacement for ``Dataset.check_before_run`` that explains the expected layout."""
    if isinstance(required_files, str):
        required_files = [required_files]
    missing = [path for path in required_files if not os.path.exists(path)]
    if not missing:
        return
    layout = "Expected this layout"
    subfolder = PREFERRED_SUBFOLDER.get(type(self).__name__)
    data_dir = getattr(self, "data_dir", None)
    if subfolder and data_dir and os.path.basename(os.path.normpath(data_dir)) != subfolder:
        # FastReID fell back to its deprecated layout (and warned): show the one it asks for.
        preferred = os.path.join(data_dir, subfolder)
        required_files = [
            os.path.normpath(os.path.join(preferred, os.path.relpath(path, data_dir)))
            for path in required_files
        ]
        missing = [path for path in required_files if not os.path.exists(path)]
        layout += f" (or, deprecated, the same folders directly in '{os.path.normpath(data_dir)}')"
    raise _not_found(type(self).__name__, missing[0], layout, required_files)


def _not_found(dataset, missing, layout, expected):
    root = build._root  # FastReID reads $FASTREID_DATASETS once, when fastreid.data is imported
    expected = "\n".join(f"  {path}" for path in expected)
    return DatasetNotFoundError(
        f"Dataset {dataset}: '{missing}' is not found.\n{layout}:\n{expected}\n"
        f"Datasets are read from $FASTREID_DATASETS (now '{root}', resolved to "
        f"'{os.path.abspath(root)}'); download the dataset there or point the variable at it."
    )


def _msmt17_checked(init):
    """FastReID's MSMT17 asserts ``'Dataset folder not found'`` (no path) when neither release
    folder is there, and opens its list files unchecked: name what is missing instead."""
    from fastreid.data.datasets.msmt17 import TEST_DIR_KEY, TRAIN_DIR_KEY, VERSION_DICT

    lists = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")

    @functools.wraps(init)
    def checked(self, root="datasets", **kwargs):
        found = [v for v in VERSION_DICT if os.path.exists(os.path.join(root, v))]
        version = found[0] if found else next(iter(VERSION_DICT))
        dirs = VERSION_DICT[version]
        required = [
            os.path.join(root, version, name)
            for name in (dirs[TRAIN_DIR_KEY], dirs[TEST_DIR_KEY], *lists)
        ]
        missing = [path for path in required if not os.path.exists(path)]
        if missing:
            others = [
                f"{v} with {d[TRAIN_DIR_KEY]}/ and {d[TEST_DIR_KEY]}/"
                for v, d in VERSION_DICT.items()
                if v != version
            ]
            layout = "Expected this layout" + (f" (or {', '.join(others)})" if others else "")
            raise _not_found("MSMT17", os.path.join(root, version) if not found else missing[0],
                             layout, required)  # fmt: skip
        init(self, root=root, **kwargs)

    checked._kdreid_checked = True
    return checked


FILE_NAMES = {
    # dataset: (FastReID's pattern, identities allowed, cameras allowed, an example)
    "Market1501": (r"([-\d]+)_c(\d)", range(-1, 1502), range(1, 7), "0002_c1s1_000451_03.jpg"),
    "DukeMTMC": (r"([-\d]+)_c(\d)", None, range(1, 9), "0001_c2_f0046182.jpg"),
}
"""Datasets whose FastReID loader reads the identity and camera from each ``.jpg`` file name (and
fails on a file named otherwise with an ``AttributeError`` or a bare ``assert``)."""


def _checking_file_names(process_dir, dataset):
    pattern, identities, cameras, example = FILE_NAMES[dataset]

    def checked(self, dir_path, *args, **kwargs):
        for path in sorted(glob.glob(os.path.join(dir_path, "*.jpg"))):
            match = re.search(pattern, path)
            pid, camid = map(int, match.groups()) if match else (None, None)
            if match is None or camid not in cameras or (identities and pid not in identities):
                allowed = f"identity {identities.start}..{identities.stop - 1}, " * bool(identities)
                raise DatasetCorruptError(
                    f"Dataset {dataset}: '{path}' is not named like the dataset's images "
                    f"({example}: {allowed}camera {cameras.start}..{cameras.stop - 1}); "
                    "move it out of the folder."
                )
        return process_dir(self, dir_path, *args, **kwargs)

    checked._kdreid_checked = True
    return checked


def _warning_once_found(init):
    """FastReID's Market-1501 warns of its deprecated layout before it checks that anything is
    there; for a missing dataset, :func:`check_before_run`'s error already shows both layouts. The
    warnings of ``__init__`` are held back and issued only if the dataset loads."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            init(self, *args, **kwargs)
        for w in caught:  # once per place, as before (the module's registry)
            registry = vars(sys.modules[init.__module__]).setdefault("__warningregistry__", {})
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=registry)

    wrapped._kdreid_checked = True
    return wrapped


def install():
    """Apply the wrappers (idempotent)."""
    common.read_image = read_image
    Dataset.check_before_run = check_before_run
    msmt17 = DATASET_REGISTRY.get("MSMT17")
    if not getattr(msmt17.__init__, "_kdreid_checked", False):
        msmt17.__init__ = _msmt17_checked(msmt17.__init__)
    for name in PREFERRED_SUBFOLDER:
        cls = DATASET_REGISTRY.get(name)
        if not getattr(cls.__init__, "_kdreid_checked", False):
            cls.__init__ = _warning_once_found(cls.__init__)
    for name in FILE_NAMES:
        cls = DATASET_REGISTRY.get(name)
        if not getattr(cls.process_dir, "_kdreid_checked", False):
            cls.process_dir = _checking_file_names(cls.process_dir, name)
