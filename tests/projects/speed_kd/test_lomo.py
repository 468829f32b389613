"""LOMO: dimensionality, vectorised parts against loop references, flip and illumination, errors."""

import colorsys
import glob
import os

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from kdreid.data.synthreid import generate_synthreid
from speed_kd.lomo import LOMO, _blur_matrix, _hsv_codes, _row_max_histograms, lomo, siltp

COLOUR = slice(0, 512 * 40)  # the joint HSV group, then one SILTP group of 81 * 40 per radius
TEXTURE = slice(512 * 40, 26960)


@pytest.fixture(scope="module")
def person_images(datasets_root):
    """(24, 3, 128, 64) uint8 SynthReID-tiny query and gallery images, and their pids."""
    folder = generate_synthreid(datasets_root, "tiny")
    paths = sorted(glob.glob(os.path.join(folder, "query", "*.jpg")))[:24]
    images = np.stack([cv2.imread(p)[:, :, ::-1] for p in paths])
    pids = [int(os.path.basename(p)[:4]) for p in paths]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), np.array(pids)


def _cosine(a, b):
    """Row-wise cosine similarity of (N, D) tensors."""
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


def test_dimension_is_liaos():
    """(8*8*8 + 2 * 3^4) bins x (24 + 11 + 5) window rows of 128x48, 64x24, 32x12 = 26,960."""
    assert LOMO().window_rows == 24 + 11 + 5
    assert LOMO().dim == 674 * 40 == 26960
    features = lomo(torch.randint(0, 256, (2, 3, 160, 64), dtype=torch.uint8))
    assert features.shape == (2, 26960) and features.dtype == torch.float32
    groups = [COLOUR, slice(20480, 23720), slice(23720, 26960)]
    for group in groups:  # each group L2-normalised on its own
        torch.testing.assert_close(features[:, group].norm(dim=1), torch.ones(2))


@pytest.mark.parametrize(
    "block_size, block_step, shape", [(10, 5, (2, 27, 23)), (6, 2, (1, 13, 9))]
)
def test_row_max_histograms_match_a_loop_over_windows(block_size, block_step, shape):
    codes = torch.randint(0, 7, shape, generator=torch.Generator().manual_seed(0))
    fast = _row_max_histograms(codes, 7, block_size, block_step).numpy()
    n, h, w = shape
    tops = range(0, h - block_size + 1, block_step)
    lefts = range(0, w - block_size + 1, block_step)
    slow = np.zeros((n, len(tops), 7))
    for i in range(n):
        for r, top in enumerate(tops):
            for left in lefts:
                window = codes[i, top : top + block_size, left : left + block_size].numpy()
                slow[i, r] = np.maximum(slow[i, r], np.bincount(window.ravel(), minlength=7))
    np.testing.assert_array_equal(fast, slow)


# One colour inside each hue sextant (60 degrees each: red-yellow, yellow-green, green-cyan,
# cyan-blue, blue-magenta, magenta-red), the primaries and secondaries, two unsaturated colours,
# grey, black and white, with their bins worked out by hand (8 levels each): hue
# floor(8 * H / 360 deg), saturation floor(8 * S), value floor(8 * V), where S = (max - min) / max
# and V = max; a saturation or value of 1 falls in the top bin, 7.
HAND_PICKED = [  # (R, G, B), (hue, saturation, value) bins
    ((255, 128, 0), (0, 7, 7)),  # H = 60 * 128/255 = 30.1 deg: 0.67
    ((128, 255, 0), (1, 7, 7)),  # 120 - 30.1 = 89.9 deg: 1.998
    ((0, 255, 128), (3, 7, 7)),  # 120 + 30.1 = 150.1 deg: 3.34
    ((0, 128, 255), (4, 7, 7)),  # 240 - 30.1 = 209.9 deg: 4.66
    ((128, 0, 255), (6, 7, 7)),  # 240 + 30.1 = 270.1 deg: 6.003
    ((255, 0, 128), (7, 7, 7)),  # 360 - 30.1 = 329.9 deg: 7.33
    ((255, 0, 1), (7, 7, 7)),  # 360 - 0.24 deg: 7.995 (G < B: the red sextant wraps, mod 6)
    ((255, 0, 0), (0, 7, 7)),  # 0 deg
    ((255, 255, 0), (1, 7, 7)),  # 60 deg: 1.33
    ((0, 255, 0), (2, 7, 7)),  # 120 deg: 2.67
    ((0, 255, 255), (4, 7, 7)),  # 180 deg: 4
    ((0, 0, 255), (5, 7, 7)),  # 240 deg: 5.33
    ((255, 0, 255), (6, 7, 7)),  # 300 deg: 6.67
    ((100, 50, 50), (0, 4, 3)),  # S = 50/100, V = 100/255: 3.14
    ((50, 100, 75), (3, 4, 3)),  # 120 + 60 * 25/50 = 150 deg: 3.33
    ((0, 0, 0), (0, 0, 0)),  # black: no hue, no saturation
    ((128, 128, 128), (0, 0, 4)),  # grey: no hue, no saturation, V = 0.502: 4.02
    ((255, 255, 255), (0, 0, 7)),  # white
]


def _hsv_reference(rgb: np.ndarray, bins=(8, 8, 8)) -> np.ndarray:
    """(N, 3, H, W) quantised HSV of (N, 3, H, W) RGB in [0, 1], one ``colorsys`` call a pixel.

    ``colorsys.rgb_to_hsv`` (the standard library's hexcone model, written independently of
    LOMO's vectorised one) gives H, S, V in [0, 1] (H a fraction of the full turn, 0 for greys);
    each is quantised as ``_hsv_codes`` documents: ``floor(x * levels)``, a 1 falling in the top
    level ``levels - 1``.
    """
    codes = np.zeros(rgb.shape, dtype=np.float64)
    for i, y, x in np.ndindex(rgb.shape[0], *rgb.shape[2:]):
        hsv = colorsys.rgb_to_hsv(*rgb[i, :, y, x])
        codes[i, :, y, x] = [min(int(c * n), n - 1) for c, n in zip(hsv, bins)]
    return codes


def test_hsv_codes_of_hand_picked_colours():
    """Every hue sextant, the primaries and secondaries, greys, black and white give the bins
    worked out by hand above (and ``colorsys`` agrees, which checks the reference)."""
    rgb = torch.tensor([c for c, _ in HAND_PICKED], dtype=torch.float64).T[None, :, None] / 255
    expected = np.array([b for _, b in HAND_PICKED], dtype=np.float64).T[None, :, None]
    np.testing.assert_array_equal(_hsv_reference(rgb.numpy()), expected)
    np.testing.assert_array_equal(_hsv_codes(rgb, (8, 8, 8)).numpy(), expected)


@pytest.mark.parametrize("bins", [(8, 8, 8), (16, 4, 6)])
def test_hsv_codes_match_colorsys_pixel_by_pixel(bins):
    """The hue, saturation and value levels of every pixel equal ``colorsys``'s, quantised alike.

    Compared exactly, level by level, for the default 8x8x8 bins and an uneven 16x4x6. Images:
    uniform random RGB in [0, 1] (every sextant), uint8-like images (multiples of 1/255, where a
    few pixels have two channels tied), and the hand-picked colours (tied maxima: yellow, cyan,
    magenta, grey, white).
    In float64, where the two computations (which order their operations differently) differ by
    about 1e-16, too little to move any of these values across a bin boundary.
    """
    g = torch.Generator().manual_seed(4)
    uniform = torch.rand(2, 3, 16, 12, generator=g, dtype=torch.float64)
    levels = torch.randint(0, 256, (2, 3, 16, 12), generator=g).double() / 255
    hand = torch.tensor([c for c, _ in HAND_PICKED], dtype=torch.float64).T / 255
    for rgb in (uniform, levels, hand[None, :, None]):
        np.testing.assert_array_equal(
            _hsv_codes(rgb, bins).numpy(), _hsv_reference(rgb.numpy(), bins)
        )


def test_siltp_matches_a_loop_over_pixels():
    grey = torch.rand(2, 9, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    radius, tau = 2, 0.3
    fast = siltp(grey, radius, tau).numpy()
    g = grey.numpy()
    _, h, w = g.shape
    slow = np.zeros(g.shape, dtype=np.int64)
    for i, y, x in np.ndindex(g.shape):
        # right, up, left, down; the border replicated
        neighbours = [(y, x + radius), (y - radius, x), (y, x - radius), (y + radius, x)]
        for k, (ny, nx) in enumerate(neighbours):
            other = g[i, min(max(ny, 0), h - 1), min(max(nx, 0), w - 1)]
            digit = (
                1 if other < (1 - tau) * g[i, y, x] else 2 if other > (1 + tau) * g[i, y, x] else 0
            )
            slow[i, y, x] += digit * 3**k
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("sigma", [5.0, 20.0])
def test_blur_matrix_is_a_gaussian_blur_with_replicated_border(sigma):
    signal = torch.rand(48, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    blurred = _blur_matrix(48, sigma, "cpu", torch.float64) @ signal
    expected = gaussian_filter1d(signal.numpy(), sigma, axis=0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(blurred.numpy(), expected, atol=1e-12)


def _swap_left_right(texture):
    """SILTP bins of the mirrored image: digit 0 (right neighbour) swaps with digit 2 (left)."""
    codes = np.arange(81)
    digits = [codes // 3**k % 3 for k in range(4)]
    mirrored = digits[2] + 3 * digits[1] + 9 * digits[0] + 27 * digits[3]
    rows = texture.view(len(texture), -1, 81)
    return rows[:, :, mirrored].flatten(1)


def test_flip_permutes_siltp_bins_and_keeps_colour_when_windows_tile_the_width(person_images):
    """At width 40 the windows of every level (40, 20, 10 wide) tile it: a mirror maps windows to
    windows, so the colour group is unchanged and the SILTP bins are permuted (left <-> right)."""
    images, _ = person_images
    images = images[:8, :, :, 12:52]
    extractor = LOMO(width=40)
    bins = 512 * extractor.window_rows
    features, flipped = extractor(images), extractor(images.flip(-1))
    assert _cosine(features[:, :bins], flipped[:, :bins]).min() > 0.999
    torch.testing.assert_close(_swap_left_right(flipped[:, bins:]), features[:, bins:])
    assert _cosine(features[:, bins:], flipped[:, bins:]).max() < 0.99  # the swap is needed


def test_flip_changes_the_descriptor_much_less_than_another_person(person_images):
    images, pids = person_images
    features, flipped = lomo(images), lomo(images.flip(-1))
    flip_similarity = _cosine(features, flipped)
    others = torch.nn.functional.normalize(features, dim=1)
    similarity = others @ others.T
    different = torch.from_numpy(pids[:, None] != pids[None, :])
    assert flip_similarity.min() > 0.8
    assert flip_similarity.mean() > similarity[different].mean() + 0.25
    assert (flip_similarity > similarity.masked_fill(~different, -1).amax(dim=1)).all()


def test_retinex_and_siltp_make_it_invariant_to_a_global_illumination_scale(
    person_images, monkeypatch
):
    """SILTP compares ratios: unchanged. Retinex removes a global gain except where a channel is
    near 0 (it adds 1 before the logarithm); measured colour cosines: median 0.98, 21 of the 24
    images above 0.95, one at 0.62 (a saturated green bar, red = 0). Without Retinex the value
    channel moves by 40% and the colour histograms change much more."""
    images, pids = person_images
    features = lomo(images)
    darker = lomo(images.float() * 0.6)
    torch.testing.assert_close(darker[:, TEXTURE], features[:, TEXTURE], atol=1e-5, rtol=0)
    colour = _cosine(features[:, COLOUR], darker[:, COLOUR])
    assert colour.median() > 0.97 and (colour > 0.95).float().mean() > 0.8
    others = _cosine(features[:-1, COLOUR], features[1:, COLOUR])
    assert others[pids[:-1] != pids[1:]].max() < 0.9

    monkeypatch.setattr("speed_kd.lomo.retinex", lambda x, scales: x / 255)
    plain = _cosine(lomo(images)[:, COLOUR], lomo(images.float() * 0.6)[:, COLOUR])
    assert plain.median() < colour.median() - 0.2


def test_one_hwc_image_equals_a_batch_of_one(person_images):
    images, _ = person_images
    single = lomo(images[0].permute(1, 2, 0).numpy())
    torch.testing.assert_close(single, lomo(images[:1]))


@pytest.mark.parametrize("shape", [(2, 1, 128, 48), (128, 48), (1, 2, 3, 128, 48), (4, 128, 48)])
def test_not_a_three_channel_image_is_an_error_naming_the_shape(shape):
    with pytest.raises(ValueError, match=r"N x 3 x H x W .* H x W x 3.*" + str(shape)[1:-1]):
        lomo(torch.zeros(shape))


def test_settings_that_cannot_work_are_rejected():
    with pytest.raises(ValueError, match="must divide block_size"):
        LOMO(block_step=3)
    with pytest.raises(ValueError, match="too small"):
        LOMO(height=64, width=24)
