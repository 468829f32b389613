"""Clear errors for missing datasets and unreadable images in FastReID's data pipeline.

FastReID reports a missing dataset folder as ``RuntimeError('"path" is not found')`` and a broken
image as whatever PIL raises deep inside a loader worker, without the file name. :func:`install`
wraps the two functions involved so that the error names the path and what was expected.
"""

import os

from fastreid.data import build, common, data_utils
from fastreid.data.datasets.bases import Dataset

from kdreid.errors import DatasetNotFoundError, UnreadableImageError

__all__ = ["install", "read_image"]

_original_read_image = data_utils.read_image


def read_image(file_name, format=None):
    """FastReID's ``read_image`` that names the file when it cannot be read.

    Raises:
        UnreadableImageError: the file is missing, truncated, or not an image.
    """
    try:
        return _original_read_image(file_name, format)
    except Exception as exc:
        raise UnreadableImageError(
            f"Cannot read image '{file_name}': {type(exc).__name__}: {exc}. "
            "Expected a complete JPEG/PNG file; remove or replace it."
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
    root = build._root  # FastReID reads $FASTREID_DATASETS once, when fastreid.data is imported
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
    expected = "\n".join(f"  {path}" for path in required_files)
    raise DatasetNotFoundError(
        f"Dataset {type(self).__name__}: '{missing[0]}' is not found.\n"
        f"{layout}:\n{expected}\n"
        f"Datasets are read from $FASTREID_DATASETS (now '{root}', resolved to "
        f"'{os.path.abspath(root)}'); download the dataset there or point the variable at it."
    )


def install():
    """Apply both wrappers (idempotent)."""
    common.read_image = read_image
    Dataset.check_before_run = check_before_run
