"""The views of FactorizedKD: which rows of a pedestrian image each partial ReID model sees.

Reference:
    Ren & Li, "Factorized Distillation: Training Holistic Person Re-identification Model by
    Distilling an Ensemble of Partial ReID Models", arXiv 1811.08073 (2018), Figure 1.

Figure 1 names each partial view by stripes: group 1 divides the image into 4 horizontal stripes
(Up1 "1/4-2/4", Mid1 "2/4-3/4", Dn1 "3/4-4/4"), group 2 into 7 (Up2 "1/7-3/7", Mid2 "3/7-5/7",
Dn2 "5/7-7/7"). :data:`FIGURE_1` keeps that notation as written, and :data:`VIEW_TABLES` turns it
into rows, as fractions of the image height, under two readings:

``"stripes"`` (ours, the default): "a/n-b/n" is stripes a to b inclusive, rows [(a-1)/n, b/n)::

    Up1  [0, 1/2)     Up2  [0, 3/7)
    Mid1 [1/4, 3/4)   Mid2 [2/7, 5/7)
    Dn1  [1/2, 1)     Dn2  [4/7, 1)

Each group then covers the whole body with overlapping, nearly square views (128x128 and
~110x128 of a 256x128 image), which suits the 224x224 resize.

``"boundaries"``: "a/n-b/n" are the boundaries themselves, rows [a/n, b/n) (Up1 [1/4, 1/2),
..., Up2 [1/7, 3/7), ...); group 1 then never sees the top quarter (the head).

``Holistic`` is the whole image, [0, 1), in both readings. ``MODEL.FKD.VIEW_READING`` picks the
reading.
"""

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from PIL import Image

from kdreid.errors import ConfigError

__all__ = [
    "FIGURE_1",
    "HOLISTIC",
    "PARTIAL_VIEWS",
    "READINGS",
    "VIEW_NAMES",
    "VIEW_TABLES",
    "ViewCrop",
    "crop_view",
    "view_fractions",
    "view_rows",
]

HOLISTIC = "Holistic"

# The paper's partial views as Figure 1 writes them: name -> (a, b, n) for "a/n-b/n".
FIGURE_1 = {
    "Up1": (1, 2, 4),
    "Mid1": (2, 3, 4),
    "Dn1": (3, 4, 4),
    "Up2": (1, 3, 7),
    "Mid2": (3, 5, 7),
    "Dn2": (5, 7, 7),
}

# reading -> view -> (top, bottom): rows [top, bottom) as exact fractions of the image height.
VIEW_TABLES = {
    "stripes": {
        HOLISTIC: (Fraction(0), Fraction(1)),
        **{name: (Fraction(a - 1, n), Fraction(b, n)) for name, (a, b, n) in FIGURE_1.items()},
    },
    "boundaries": {
        HOLISTIC: (Fraction(0), Fraction(1)),
        **{name: (Fraction(a, n), Fraction(b, n)) for name, (a, b, n) in FIGURE_1.items()},
    },
}

READINGS = tuple(VIEW_TABLES)
VIEW_NAMES = (HOLISTIC, *FIGURE_1)
PARTIAL_VIEWS = tuple(FIGURE_1)


def view_fractions(view, reading="stripes"):
    """The rows of ``view`` as fractions of the image height.

    Args:
        view (str): a name in :data:`VIEW_NAMES`.
        reading (str): a key of :data:`VIEW_TABLES`.

    Returns:
        tuple[Fraction, Fraction]: ``(top, bottom)``, the view being rows ``[top, bottom)``.

    Raises:
        ConfigError: an unknown view or reading (the message lists the valid ones).
    """
    if reading not in VIEW_TABLES:
        raise ConfigError(
            f"Unknown FactorizedKD view reading '{reading}'; valid readings: {', '.join(READINGS)}."
        )
    table = VIEW_TABLES[reading]
    if view not in table:
        raise ConfigError(
            f"Unknown FactorizedKD view '{view}'; valid views: {', '.join(table)} "
            "(or '' for the whole image)."
        )
    return table[view]


def view_rows(view, height, reading="stripes"):
    """The integer rows of ``view`` in an image or feature map of ``height`` rows.

    Rounding is outward: ``start = floor(top * height)``, ``stop = ceil(bottom * height)``, so the
    rows always cover the view's fraction (and at least one row). Exact at every height that the
    stripe count divides (28 rows: Up2 is rows 0-11); elsewhere a boundary row belongs to both
    neighbouring views (an 8-row feature map: Up2 rows [0, 4), Mid2 [2, 6), Dn2 [4, 8)).

    Args:
        view (str): a name in :data:`VIEW_NAMES`.
        height (int): rows of the image or feature map (>= 1).
        reading (str): a key of :data:`VIEW_TABLES`.

    Returns:
        tuple[int, int]: ``(start, stop)`` with ``0 <= start < stop <= height``.

    Raises:
        ConfigError: an unknown view or reading.
        ValueError: ``height`` is not a positive integer.
    """
    top, bottom = view_fractions(view, reading)
    if isinstance(height, bool) or not isinstance(height, int) or height < 1:
        raise ValueError(f"height must be a positive int, got {height!r}")
    return math.floor(top * height), math.ceil(bottom * height)


def crop_view(images, view, size, reading="stripes", mode="bicubic"):
    """Crop ``view``'s rows from a batch and resize them, on the batch's device.

    This is how a student's trainer feeds each partial teacher the very (augmented) batch the
    student sees. The resize is antialiased and, with ``mode="bicubic"``, the one FastReID's
    transforms apply with PIL (``T.Resize(..., interpolation=3)``): on float images torch's
    antialiased bicubic equals PIL's to float precision, on 8-bit ones within a grey level or so
    (PIL rounds to 8 bits between its two passes). Values may overshoot the input's range
    slightly, as bicubic does; nothing is clamped.

    Args:
        images (Tensor): ``(B, C, H, W)`` floating-point images (FastReID's batches: 0-255).
        view (str): a name in :data:`VIEW_NAMES`.
        size (Sequence[int]): ``(h, w)`` of the output.
        reading (str): a key of :data:`VIEW_TABLES`.
        mode (str): ``"bicubic"`` or ``"bilinear"``, both antialiased.

    Returns:
        Tensor: ``(B, C, h, w)``, same dtype and device as ``images``.

    Raises:
        ConfigError: an unknown view or reading.
        ValueError: ``images`` is not a 4-d floating-point tensor, or ``mode``/``size`` is invalid.
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a (B, C, H, W) floating-point tensor, got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {mode!r}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (h, w) with positive sides, got {size}")
    start, stop = view_rows(view, images.shape[-2], reading)
    crop = images[:, :, start:stop]
    if tuple(crop.shape[-2:]) == size:
        return crop.clone()
    return F.interpolate(crop, size=size, mode=mode, align_corners=False, antialias=True)


class ViewCrop:
    """Transform: keep ``view``'s rows of one image (no resize; FastReID's ``Resize`` follows).

    Placed first in FastReID's train and test transforms, so the view is cut from the full image
    before anything else, and is then resized to ``INPUT.SIZE_TRAIN`` / ``INPUT.SIZE_TEST`` and
    augmented like any image.

    Args:
        view (str): a name in :data:`VIEW_NAMES`.
        reading (str): a key of :data:`VIEW_TABLES`.

    Raises:
        ConfigError: an unknown view or reading.
    """

    def __init__(self, view, reading="stripes"):
        view_fractions(view, reading)  # fail at construction, not on the first image
        self.view = view
        self.reading = reading

    def __call__(self, image):
        """Crop one image.

        Args:
            image (PIL.Image.Image | Tensor): a PIL image, or a ``(..., H, W)`` tensor.

        Returns:
            The same type: a PIL image of the view's rows, or a ``(..., stop - start, W)`` tensor.
        """
        if isinstance(image, Image.Image):
            start, stop = view_rows(self.view, image.height, self.reading)
            return image.crop((0, start, image.width, stop))
        if isinstance(image, torch.Tensor):
            start, stop = view_rows(self.view, image.shape[-2], self.reading)
            return image[..., start:stop, :]
        raise TypeError(f"ViewCrop takes a PIL image or a tensor, got {type(image).__name__}")

    def __repr__(self):
        top, bottom = view_fractions(self.view, self.reading)
        return f"{type(self).__name__}(view={self.view!r}, rows=[{top}, {bottom}))"
