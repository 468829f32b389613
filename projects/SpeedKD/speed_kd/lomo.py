"""LOMO, the Local Maximal Occurrence descriptor, vectorised in torch (CPU or CUDA, whole batches).

Pipeline per image, as in Liao et al.: resize to 128x48; multi-scale Retinex with colour
restoration; the Retinex image in HSV, each channel quantised to 8 levels, gives a joint 8x8x8
colour code per pixel; the grey image gives two SILTP texture codes (radii 3 and 5, tau 0.3,
4 neighbours, 3^4 codes). Each code map is histogrammed in 10x10 windows with stride 5, and every
bin keeps its maximum over the windows of a row (the "local maximal occurrence"), at three pyramid
levels (2x2 average pooling between them). Each of the three feature groups gets log(x + 1) and L2
normalisation: (512 + 2 * 81) bins x (24 + 11 + 5) rows = 26,960 dimensions.

Histograms use no loop over windows or pixels: with a stride that divides the window size, a window
is a block of ``(block_size / block_step)^2`` cells of ``block_step^2`` pixels, so each cell is
histogrammed once by one ``bincount`` over the batch and windows are sums of neighbouring cells.
The Gaussian blurs of Retinex are two matrix products per scale, the replicated border folded into
the matrices.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOMO", "lomo", "retinex", "siltp"]

_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as rgb2gray


def _blur_matrix(size: int, sigma: float, device, dtype) -> Tensor:
    """(size, size) matrix ``A`` with ``A @ x`` the Gaussian blur of ``x`` (replicated border).

    The kernel is truncated at ``ceil(3 * sigma)`` and normalised to sum 1.
    """
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, device=device)
    kernel = torch.exp(-(offsets.to(dtype) ** 2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    columns = (torch.arange(size, device=device)[:, None] + offsets).clamp(0, size - 1)
    matrix = torch.zeros(size, size, device=device, dtype=dtype)
    return matrix.scatter_add_(1, columns, kernel.expand(size, -1).contiguous())


def retinex(
    images: Tensor,
    scales: tuple[float, ...] = (5.0, 20.0),
    alpha: float = 125.0,
    beta: float = 46.0,
    clip: float = 0.01,
) -> Tensor:
    """Multi-scale Retinex with colour restoration, then simplest colour balance per channel.

    ``MSR_c = mean_s [log I_c - log(G_s * I_c)]`` with ``I = image + 1``; the output is
    ``beta * log(alpha * I_c / sum_c I_c) * MSR_c`` stretched per channel so that its ``clip``
    lower and upper tails saturate at 0 and 1 (gain and offset of the original would be undone by
    that stretch, so they are left out).

    Args:
        images: (N, 3, H, W) float RGB in [0, 255].
        scales: standard deviations of the Gaussian surrounds, in pixels.
        alpha: colour restoration's ``alpha``.
        beta: colour restoration's ``beta``.
        clip: fraction of each channel's pixels saturated at either end.

    Returns:
        (N, 3, H, W) float in [0, 1].

    Reference:
        Jobson, Rahman and Woodell, "A Multiscale Retinex for Bridging the Gap Between Color Images
        and the Human Observation of Scenes", IEEE TIP 1997.
    """
    n, c, h, w = images.shape
    x = images + 1.0
    log_x = x.log()
    msr = torch.zeros_like(x)
    for sigma in scales:
        rows = _blur_matrix(h, sigma, x.device, x.dtype)
        cols = _blur_matrix(w, sigma, x.device, x.dtype)
        msr += log_x - (rows @ x @ cols.T).log()
    msr /= len(scales)
    restoration = beta * (math.log(alpha) + log_x - x.sum(1, keepdim=True).log())
    out = (restoration * msr).flatten(2)
    ordered = out.sort(dim=-1).values
    last = h * w - 1
    low = ordered[..., int(math.floor(clip * last)), None]
    high = ordered[..., int(math.ceil((1 - clip) * last)), None]
    out = ((out - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return out.view(n, c, h, w)


def _hsv_codes(rgb: Tensor, bins: tuple[int, int, int]) -> Tensor:
    """Quantised HSV of (N, 3, H, W) RGB in [0, 1]: (N, 3, H, W) float levels in [0, bins)."""
    value, brightest = rgb.max(dim=1)
    delta = value - rgb.amin(dim=1)
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), 0.0)
    r, g, b = rgb.unbind(1)
    safe = delta.clamp_min(1e-12)
    hue = torch.where(
        brightest == 0,
        ((g - b) / safe) % 6,
        torch.where(brightest == 1, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, 0.0)
    levels = torch.tensor(bins, device=rgb.device, dtype=rgb.dtype)
    hsv = torch.stack([hue, saturation, value], dim=1)
    return torch.minimum((hsv * levels.view(1, 3, 1, 1)).floor(), levels.view(1, 3, 1, 1) - 1)


def siltp(grey: Tensor, radius: int, tau: float) -> Tensor:
    """Scale Invariant Local Ternary Pattern with 4 neighbours at distance ``radius``.

    Each neighbour ``I_k`` of pixel ``I`` gives a digit: 1 if ``I_k < (1 - tau) I``, 2 if
    ``I_k > (1 + tau) I``, else 0; the code is ``sum_k digit_k 3^k`` over the right, up, left and
    down neighbours (k = 0..3). The border is replicated.

    Args:
        grey: (N, H, W) grey levels.
        radius: distance of the neighbours, in pixels.
        tau: relative tolerance.

    Returns:
        (N, H, W) long codes in [0, 81).

    Reference:
        Liao et al., "Modeling Pixel Process with Scale Invariant Local Patterns for Background
        Subtraction in Complex Scenes", CVPR 2010.
    """
    h, w = grey.shape[-2:]
    p = F.pad(grey[:, None], (radius,) * 4, mode="replicate")[:, 0]
    inner = slice(radius, radius + h), slice(radius, radius + w)
    neighbours = (
        p[:, inner[0], 2 * radius :],  # right
        p[:, :h, inner[1]],  # up
        p[:, inner[0], :w],  # left
        p[:, 2 * radius :, inner[1]],  # down
    )
    low, high = (1 - tau) * grey, (1 + tau) * grey
    codes = torch.zeros(grey.shape, dtype=torch.long, device=grey.device)
    for k, other in enumerate(neighbours):
        codes += ((other < low).long() + 2 * (other > high).long()) * 3**k
    return codes


def _row_max_histograms(codes: Tensor, num_bins: int, block_size: int, block_step: int) -> Tensor:
    """Histogram of ``codes`` in every window, maximum over the windows of each row.

    Args:
        codes: (N, H, W) long codes in [0, num_bins).
        num_bins: number of histogram bins.
        block_size: window side, a multiple of ``block_step``.
        block_step: stride between windows.

    Returns:
        (N, R, num_bins) float, ``R = (H - block_size) // block_step + 1`` window rows.
    """
    n, h, w = codes.shape
    k = block_size // block_step
    rows, cols = (h - block_size) // block_step + 1, (w - block_size) // block_step + 1
    cell_rows, cell_cols = rows + k - 1, cols + k - 1
    codes = codes[:, : cell_rows * block_step, : cell_cols * block_step]
    cell_of = (
        torch.arange(cell_rows * block_step, device=codes.device)[:, None] // block_step * cell_cols
        + torch.arange(cell_cols * block_step, device=codes.device) // block_step
    )
    image_of = torch.arange(n, device=codes.device)[:, None, None] * (cell_rows * cell_cols)
    flat = (image_of + cell_of) * num_bins + codes
    cells = torch.bincount(flat.flatten(), minlength=n * cell_rows * cell_cols * num_bins)
    cells = cells.view(n, cell_rows, cell_cols, num_bins).float()
    windows = sum(cells[:, i : i + rows, j : j + cols] for i in range(k) for j in range(k))
    return windows.amax(dim=2)


@dataclass(frozen=True)
class LOMO:
    """LOMO extractor; call it on a batch of images.

    Args:
        height: image height after resizing.
        width: image width after resizing.
        retinex_scales: Gaussian surround scales of the Retinex, in pixels.
        hsv_bins: quantisation levels of hue, saturation and value.
        siltp_radii: one SILTP feature group per radius.
        siltp_tau: SILTP's relative tolerance.
        block_size: window side in pixels.
        block_step: window stride in pixels; must divide ``block_size``.
        num_scales: pyramid levels (2x2 average pooling between levels).

    Reference:
        Liao, Hu, Zhu and Li, "Person Re-identification by Local Maximal Occurrence Representation
        and Metric Learning", CVPR 2015.
    """

    height: int = 128
    width: int = 48
    retinex_scales: tuple[float, ...] = (5.0, 20.0)
    hsv_bins: tuple[int, int, int] = (8, 8, 8)
    siltp_radii: tuple[int, ...] = (3, 5)
    siltp_tau: float = 0.3
    block_size: int = 10
    block_step: int = 5
    num_scales: int = 3

    def __post_init__(self):
        if self.block_size % self.block_step:
            raise ValueError(
                f"block_step ({self.block_step}) must divide block_size ({self.block_size})"
            )
        smallest = min(self.height, self.width) >> (self.num_scales - 1)
        if smallest < self.block_size:
            raise ValueError(
                f"{self.height}x{self.width} pooled {self.num_scales - 1} times is too small for "
                f"{self.block_size}-pixel windows"
            )

    @property
    def window_rows(self) -> int:
        """Rows of windows summed over the pyramid levels (40 for the defaults)."""
        return sum(
            ((self.height >> level) - self.block_size) // self.block_step + 1
            for level in range(self.num_scales)
        )

    @property
    def dim(self) -> int:
        """Descriptor length (26,960 for the defaults)."""
        bins = math.prod(self.hsv_bins) + len(self.siltp_radii) * 3**4
        return bins * self.window_rows

    def __call__(self, images: Tensor | np.ndarray) -> Tensor:
        """LOMO descriptors of a batch.

        Args:
            images: (N, 3, H, W) RGB, or one (H, W, 3) RGB image; uint8 or float in [0, 255]; a
                tensor (computation runs on its device) or a NumPy array.

        Returns:
            (N, dim) float32 descriptors: the colour group, then one SILTP group per radius, each
            L2-normalised.

        Raises:
            ValueError: the input is not a 3-channel image or batch of images.
        """
        x = _as_batch(images)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(
                x, size=(self.height, self.width), mode="bilinear", antialias=True
            ).clamp(0, 255)
        groups = [self._colour(x)]
        grey = torch.einsum("nchw,c->nhw", x, x.new_tensor(_GREY_WEIGHTS)) / 255
        groups += [self._texture(grey, radius) for radius in self.siltp_radii]
        return torch.cat([F.normalize(g.log1p(), dim=1) for g in groups], dim=1)

    def _colour(self, x: Tensor) -> Tensor:
        """(N, 512 * rows) joint HSV histograms of the Retinex image, all levels."""
        hsv = _hsv_codes(retinex(x, self.retinex_scales), self.hsv_bins)
        h_bins, s_bins, v_bins = self.hsv_bins
        features = []
        for level in range(self.num_scales):
            if level:  # pool the quantised levels, as Liao's reference does
                hsv = F.avg_pool2d(hsv, 2).floor()
            h, s, v = hsv.long().unbind(1)
            codes = (v * s_bins + s) * h_bins + h
            features.append(self._histograms(codes, h_bins * s_bins * v_bins))
        return torch.cat(features, dim=1)

    def _texture(self, grey: Tensor, radius: int) -> Tensor:
        """(N, 81 * rows) SILTP histograms of one radius, all levels."""
        features = []
        for level in range(self.num_scales):
            if level:
                grey = F.avg_pool2d(grey[:, None], 2)[:, 0]
            features.append(self._histograms(siltp(grey, radius, self.siltp_tau), 3**4))
        return torch.cat(features, dim=1)

    def _histograms(self, codes: Tensor, num_bins: int) -> Tensor:
        hist = _row_max_histograms(codes, num_bins, self.block_size, self.block_step)
        return hist.flatten(1)


def _as_batch(images: Tensor | np.ndarray) -> Tensor:
    """(N, 3, H, W) float32 tensor from a batch or a single (H, W, 3) image."""
    x = torch.as_tensor(images)
    if x.ndim == 3 and x.shape[-1] == 3:
        x = x.permute(2, 0, 1)[None]
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(
            f"LOMO expects RGB images as an N x 3 x H x W batch or one H x W x 3 image; got shape "
            f"{tuple(x.shape)}"
        )
    return x.float()


def lomo(images: Tensor | np.ndarray) -> Tensor:
    """LOMO descriptors with Liao et al.'s settings: ``LOMO()(images)``.

    Args:
        images: (N, 3, H, W) RGB, or one (H, W, 3) RGB image, uint8 or float in [0, 255].

    Returns:
        (N, 26960) float32 descriptors on the input's device.

    Reference:
        Liao, Hu, Zhu and Li, "Person Re-identification by Local Maximal Occurrence Representation
        and Metric Learning", CVPR 2015.
    """
    return LOMO()(images)
