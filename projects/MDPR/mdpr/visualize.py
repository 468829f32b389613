"""Pictures of MDPR's stripes and attention maps: pure functions, used by
``projects/MDPR/visualize_attention.py``.

Each panel is an image at the model's input resolution; attention maps are upsampled bilinearly to
it and blended as a heat colour, whose opacity grows with the attention, over the image in grey
(:func:`overlay`: on a colourful picture the heat could not be told from the clothes), on a fixed
0-1 colour scale, each panel titled with its map's peak; the stripe split of the hard branch is
drawn as labelled boundaries (:func:`stripe_boundaries`, the same split as
:meth:`mdpr.modeling.Generate.stripes`). Drawn on matplotlib's Agg canvas (no display, no pyplot
state).
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps, patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from kdreid.checkpoint import save_figure

__all__ = [
    "Layout",
    "attention_panels",
    "background",
    "greyscale",
    "layout",
    "overlay",
    "pixel_boundaries",
    "render",
    "stripe_boundaries",
    "stripe_rows",
    "upsample",
]

MIN_PANEL_WIDTH = 128
"""Default ``--scale``: the smallest that makes panels at least this many pixels wide."""

CMAP = "turbo"
ALPHA = 0.7
"""Opacity of the heat colour where the attention is 1 (it falls linearly to 0 with the map)."""
BOUNDARY_COLOUR = (1.0, 1.0, 1.0)

_DPI = 100
_GAP = 8  # pixels around and between panels
_TITLE = 40  # band above the panels: the picture's name, then two-line panel titles
_COLORBAR = 34  # colour bar band under the panels: bar, ticks and their labels
_FONT_SIZE = 7


# --- Stripes ----------------------------------------------------------------------------------


def stripe_rows(map_rows: int, num_stripes: int) -> list[int]:
    """Rows of each of the P stripes of a map ``map_rows`` high, top first.

    The split of ``torch.tensor_split`` (``Generate.stripes``): ``map_rows // P`` rows each, one
    more for the first ``map_rows % P`` stripes.

    Raises:
        ValueError: ``num_stripes`` is below 1 or above ``map_rows``.
    """
    if not 1 <= num_stripes <= map_rows:
        raise ValueError(f"cannot split {map_rows} rows into {num_stripes} stripes")
    size, extra = divmod(map_rows, num_stripes)
    return [size + (i < extra) for i in range(num_stripes)]


def pixel_boundaries(stripe_heights: Sequence[int], image_height: int) -> list[int]:
    """Pixel rows of the P - 1 boundaries between stripes of the given heights (map rows).

    A boundary after map row ``r`` of ``R`` is image row ``r * image_height / R``, rounded to the
    nearest (halves up): the first image row of the next stripe.
    """
    total = sum(stripe_heights)
    ends = np.cumsum(stripe_heights)[:-1]
    return [int((2 * int(end) * image_height + total) // (2 * total)) for end in ends]


def stripe_boundaries(map_rows: int, num_stripes: int, image_height: int) -> list[int]:
    """Pixel rows of the boundaries between the P stripes of a final map ``map_rows`` high.

    Example: 24 map rows, 2 stripes, a 384-pixel image: ``[192]``.
    """
    return pixel_boundaries(stripe_rows(map_rows, num_stripes), image_height)


# --- Attention maps ---------------------------------------------------------------------------


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of (B, M, h, w) maps to (B, M, *size)."""
    return F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)


def background(parts: np.ndarray) -> np.ndarray:
    """The background map of an attention level: 1 minus the sum of its (M, H, W) part maps."""
    return np.clip(1.0 - parts.sum(axis=0), 0.0, 1.0)


def attention_panels(
    levels: Sequence[tuple[int, np.ndarray]], with_background: bool = True
) -> list[tuple[str, np.ndarray]]:
    """The titled maps of one image: every part of every level, each level's background last.

    Args:
        levels: (level number, (M, H, W) foreground attention maps) in display order.
        with_background: add each level's :func:`background` map.

    Returns:
        (title, (H, W) map) pairs, titled "level 4, part 1", ..., "level 4, background".
    """
    panels = []
    for level, parts in levels:
        panels += [(f"level {level}, part {i + 1}", part) for i, part in enumerate(parts)]
        if with_background:
            panels.append((f"level {level}, background", background(parts)))
    return panels


def greyscale(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB as grey in three channels: ITU-R BT.601 luma (as PIL's "L")."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def overlay(
    image: np.ndarray,
    attention: np.ndarray,
    cmap: str = CMAP,
    alpha: float = ALPHA,
    grey: bool = True,
) -> np.ndarray:
    """The image under an attention map drawn as heat, opaque where the attention is high.

    Each pixel becomes ``(1 - w) * base + w * colour(a)`` with ``a`` the attention clipped to
    [0, 1], ``colour`` the colour map on [0, 1], ``w = alpha * a`` and ``base`` the image in
    grey (:func:`greyscale`), or as it is with ``grey`` False: where the attention is 0 the
    panel shows the base.

    Args:
        image: (H, W, 3) uint8 RGB.
        attention: (h, w) map in [0, 1]; upsampled bilinearly to H x W when smaller or larger.
        cmap: a matplotlib colour map name.
        alpha: the heat's opacity where the attention is 1.
        grey: blend over the image in grey, so that only the heat is in colour.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if attention.ndim != 2:
        raise ValueError(f"attention must be (h, w), got shape {attention.shape}")
    height, width = image.shape[:2]
    if attention.shape != (height, width):
        attention = upsample(torch.as_tensor(attention)[None, None], (height, width))[0, 0].numpy()
    a = np.clip(attention.astype(np.float32), 0.0, 1.0)
    heat = colormaps[cmap](a)[..., :3].astype(np.float32) * 255
    weight = (alpha * a)[..., None]
    base = greyscale(image) if grey else image
    blended = (1 - weight) * base.astype(np.float32) + weight * heat
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


# --- Picture ----------------------------------------------------------------------------------


class Layout(NamedTuple):
    """Pixel geometry of a picture: its size and each panel's box ``(left, top, width, height)``
    from the top-left corner."""

    width: int
    height: int
    panels: list[tuple[int, int, int, int]]
    colorbar: tuple[int, int, int, int]


def text_scale(panel_width: int) -> float:
    """How much larger than at :data:`MIN_PANEL_WIDTH` the lettering is: it grows with the
    panels (``--scale``), so that a large picture stays legible when it is shrunk to be seen."""
    return max(1.0, panel_width / MIN_PANEL_WIDTH)


def layout(num_panels: int, panel_width: int, panel_height: int) -> Layout:
    """Boxes of ``num_panels`` panels in a row, the picture's name and the titles above, the
    colour bar below.

    The panels are ``_GAP`` pixels apart and from the edges; the colour bar spans the attention
    panels (all but the first). The bands for text grow with :func:`text_scale`.
    """
    k = text_scale(panel_width)
    gap, title, bar_band = round(_GAP * k), round(_TITLE * k), round(_COLORBAR * k)
    width = gap + num_panels * (panel_width + gap)
    top = gap + title
    height = top + panel_height + bar_band + gap
    panels = [
        (gap + i * (panel_width + gap), top, panel_width, panel_height) for i in range(num_panels)
    ]
    bar_left = panels[1][0] if num_panels > 1 else panels[0][0]
    margin = 2 * gap  # room for the half-width of the end tick labels
    bar = (bar_left + margin, top + panel_height + gap, width - bar_left - 2 * margin, round(8 * k))
    return Layout(width, height, panels, bar)


def _axes(figure: Figure, box: tuple[int, int, int, int], size: Layout):
    left, top, width, height = box
    rect = (
        left / size.width,
        1 - (top + height) / size.height,
        width / size.width,
        height / size.height,
    )
    return figure.add_axes(rect)


def render(
    image: np.ndarray,
    boundaries: Sequence[int],
    maps: Sequence[tuple[str, np.ndarray]],
    path: str,
    scale: int = 1,
    cmap: str = CMAP,
    alpha: float = ALPHA,
    name: str = "",
) -> Layout:
    """Write one image's picture: the image with its stripes, then one panel per attention map.

    Args:
        image: (H, W, 3) uint8 RGB, the model's input.
        boundaries: pixel rows of the stripe boundaries (:func:`pixel_boundaries`); P - 1 of them.
        maps: (title, (h, w) attention map) pairs (:func:`attention_panels`), each drawn with
            :func:`overlay`.
        path: the PNG to write.
        scale: magnification of every panel (nearest neighbour), a positive integer.
        cmap: the colour map of the heat.
        alpha: the heat's opacity where the attention is 1.
        name: the image's name, written above the panels.

    Returns:
        The :class:`Layout` of the picture written.
    """
    height, width = image.shape[:2]
    size = layout(1 + len(maps), scale * width, scale * height)
    figure = Figure(figsize=(size.width / _DPI, size.height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(figure)
    font = _FONT_SIZE * text_scale(scale * width)
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    if name:
        figure.text(
            size.panels[0][0] / size.width, 1 - 2 / size.height, name,
            fontsize=font, ha="left", va="top", fontweight="bold",
        )  # fmt: skip

    ax = _axes(figure, size.panels[0], size)
    ax.imshow(image, interpolation="nearest")
    ax.set_title(f"input\n{len(boundaries) + 1} stripes", fontsize=font, pad=2)
    edges = [0, *boundaries, height]
    for i, (start, end) in enumerate(zip(edges[:-1], edges[1:])):
        if i:
            ax.axhline(start - 0.5, color=BOUNDARY_COLOUR, linewidth=1.5)
        label = f"stripe {i + 1}"
        ax.text(
            1,
            (start + end) / 2 - 0.5,
            label,
            color="white",
            fontsize=font,
            va="center",
            ha="left",
            path_effects=outline,
        )
    for box, (title, attention) in zip(size.panels[1:], maps):
        ax_map = _axes(figure, box, size)
        ax_map.imshow(overlay(image, attention, cmap, alpha), interpolation="nearest")
        # the colours are on one 0-1 scale for every map; the peak says how much of it a map uses
        peak = float(np.max(attention)) if attention.size else 0.0
        ax_map.set_title(f"{title}\npeak {peak:.2f}", fontsize=font, pad=2)
    for ax_panel in figure.axes:
        ax_panel.set_axis_off()
    if maps:
        bar = figure.colorbar(
            ScalarMappable(Normalize(0, 1), cmap),
            cax=_axes(figure, size.colorbar, size),
            orientation="horizontal",
        )
        bar.ax.tick_params(labelsize=font, length=2, pad=1)
        bar.set_label("attention (same scale in every panel)", fontsize=font, labelpad=1)
    save_figure(figure, path, dpi=_DPI, facecolor="white")
    return size
