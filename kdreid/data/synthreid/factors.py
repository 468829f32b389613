"""The factors of variation of SynthReID: what tells people apart and what tells cameras apart.

Identities are sampled in *families* of 2-4 members. Members of a family share one `Outfit`
(skin tone, upper and lower garment colours, the upper garment's texture, sleeve and leg length) and
differ only in local marks: the chest logo, the shoes, the bag, the hair and the body proportions.
A model that only looks at global colour confuses family members; one that looks at parts does not.

Cameras are fixed for a dataset and differ by illumination, colour cast, background, blur,
resolution, scale, occlusion rate and JPEG quality.

Colours are BGR triples in [0, 1], the channel order of OpenCV and of the images on disk.
"""

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Color = tuple[float, float, float]

TEXTURES = ("plain", "hstripes", "vstripes", "checks")
LOGO_SHAPES = ("circle", "square", "triangle", "diamond", "bar")

# Random streams: every sampler seeds its own generator from (seed, stream, key) so that the
# factors of one identity or camera do not depend on how many others were drawn before it.
_STREAM_FAMILY_SIZES = 1
_STREAM_FAMILY = 2
_STREAM_CAMERA = 3


def _bgr(r: int, g: int, b: int) -> Color:
    return (b / 255.0, g / 255.0, r / 255.0)


_LOGO_COLORS = tuple(
    _bgr(*rgb)
    for rgb in [
        (230, 30, 30),
        (250, 220, 20),
        (245, 245, 245),
        (15, 15, 15),
        (30, 170, 60),
        (30, 80, 230),
        (250, 130, 10),
        (220, 40, 200),
        (20, 210, 220),
        (140, 70, 20),
    ]
)
_SHOE_COLORS = tuple(
    _bgr(*rgb)
    for rgb in [
        (20, 20, 20),
        (240, 240, 240),
        (110, 60, 25),
        (200, 30, 30),
        (40, 70, 190),
        (130, 130, 130),
        (230, 200, 40),
        (40, 150, 70),
    ]
)
_HAIR_COLORS = tuple(
    _bgr(*rgb)
    for rgb in [
        (15, 12, 10),
        (60, 40, 25),
        (110, 75, 40),
        (210, 180, 110),
        (170, 170, 170),
        (150, 60, 25),
    ]
)
_SKIN_TONES = tuple(
    _bgr(*rgb)
    for rgb in [(255, 224, 196), (234, 192, 160), (205, 155, 115), (160, 110, 75), (100, 65, 45)]
)


@dataclass(frozen=True)
class Outfit:
    """Global appearance shared by every member of a family.

    Attributes:
        skin: skin tone.
        upper: colour of the upper garment (torso and sleeves).
        lower: colour of the trousers or shorts.
        texture: index into `TEXTURES`; the pattern printed on the upper garment.
        texture_color: colour of the pattern.
        texture_period: pattern period as a fraction of the figure's height.
        long_sleeves: sleeves reach the wrists (else they stop above the elbow).
        shorts: the lower garment stops at the knee.
    """

    skin: Color
    upper: Color
    lower: Color
    texture: int
    texture_color: Color
    texture_period: float
    long_sleeves: bool
    shorts: bool


@dataclass(frozen=True)
class Identity:
    """One person: a family outfit plus the local marks and proportions of this member.

    Attributes:
        pid: person id as written in the file names (1..1501).
        family: global family index; identities with the same family share `outfit`.
        outfit: the family's global appearance.
        hair: hair colour.
        logo_shape: index into `LOGO_SHAPES`.
        logo_color: colour of the chest logo.
        logo_x: horizontal logo centre, as a fraction of the shoulder width from the centre line.
        logo_y: vertical logo centre, as a fraction of the torso length below the shoulders.
        logo_size: logo diameter as a fraction of the shoulder width.
        shoes: shoe colour.
        bag_side: 0 for no bag, -1 or +1 for a shoulder bag on the image's left or right.
        bag_color: colour of the bag and its strap.
        height: figure height as a fraction of the image height.
        width: shoulder width as a fraction of the figure height.
        leg_ratio: leg length divided by torso length.
    """

    pid: int
    family: int
    outfit: Outfit
    hair: Color
    logo_shape: int
    logo_color: Color
    logo_x: float
    logo_y: float
    logo_size: float
    shoes: Color
    bag_side: int
    bag_color: Color
    height: float
    width: float
    leg_ratio: float


@dataclass(frozen=True)
class CameraStyle:
    """Everything fixed per camera.

    Attributes:
        gain: global illumination gain.
        gamma: exponent applied to intensities in [0, 1] (> 1 darkens mid-tones).
        cast: per-channel BGR multipliers (colour temperature).
        wall: background colour above the horizon.
        floor: background colour below the horizon.
        horizon: horizon height as a fraction of the image height.
        clutter: number of clutter objects (posters, poles, windows) in the background panorama.
        clutter_contrast: how far clutter colours stray from the wall colour.
        noise: standard deviation of the additive sensor noise (intensities in [0, 1]).
        blur: Gaussian blur sigma in pixels (0 for a sharp camera).
        resolution: the sensor's sampling rate relative to the 128x64 output (1 = full).
        scale: apparent size of pedestrians relative to their nominal height.
        occlusion: probability that an image is partially occluded.
        jpeg_quality: (low, high) range of the JPEG quality of its images.
        background_seed: seed of the camera's background panorama.
    """

    gain: float
    gamma: float
    cast: Color
    wall: Color
    floor: Color
    horizon: float
    clutter: int
    clutter_contrast: float
    noise: float
    blur: float
    resolution: float
    scale: float
    occlusion: float
    jpeg_quality: tuple[int, int]
    background_seed: int


def _clothing_color(rng: np.random.Generator) -> Color:
    """Draws a garment colour: neutrals (black, grey, white, navy) a third of the time."""
    if rng.random() < 0.33:
        value = rng.choice([0.1, 0.25, 0.45, 0.65, 0.85]) + rng.uniform(-0.05, 0.05)
        hue, sat = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.15)
    else:
        hue, sat, value = rng.uniform(0.0, 1.0), rng.uniform(0.35, 0.9), rng.uniform(0.3, 0.9)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, value)
    return (b, g, r)


def _distance(a: Color, b: Color) -> float:
    return float(np.abs(np.subtract(a, b)).sum())


def sample_outfit(rng: np.random.Generator) -> Outfit:
    """Draws one family's global appearance."""
    upper = _clothing_color(rng)
    texture = int(rng.choice(len(TEXTURES), p=[0.4, 0.2, 0.2, 0.2]))
    texture_color = _clothing_color(rng)
    while _distance(texture_color, upper) < 0.6:
        texture_color = _clothing_color(rng)
    return Outfit(
        skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))],
        upper=upper,
        lower=_clothing_color(rng),
        texture=texture,
        texture_color=texture_color,
        texture_period=float(rng.uniform(0.035, 0.07)),
        long_sleeves=bool(rng.random() < 0.6),
        shorts=bool(rng.random() < 0.25),
    )


def family_sizes(rng: np.random.Generator, num_ids: int) -> list[int]:
    """Splits `num_ids` identities into families of 2 to 4 members (1 only if num_ids is 1)."""
    sizes, remaining = [], num_ids
    while remaining > 0:
        if remaining <= 4:
            size = remaining
        elif remaining == 5:
            size = int(rng.integers(2, 4))
        else:
            size = int(rng.integers(2, 5))
        sizes.append(size)
        remaining -= size
    return sizes


def _sample_member(
    rng: np.random.Generator, pid: int, family: int, outfit: Outfit, logo: tuple[int, int]
) -> Identity:
    bag_side = int(rng.choice([0, -1, 1]))
    return Identity(
        pid=pid,
        family=family,
        outfit=outfit,
        hair=_HAIR_COLORS[rng.integers(len(_HAIR_COLORS))],
        logo_shape=logo[0],
        logo_color=_LOGO_COLORS[logo[1]],
        logo_x=float(rng.uniform(-0.22, 0.22)),
        logo_y=float(rng.uniform(0.18, 0.4)),
        logo_size=float(rng.uniform(0.24, 0.34)),
        shoes=_SHOE_COLORS[rng.integers(len(_SHOE_COLORS))],
        bag_side=bag_side,
        bag_color=_clothing_color(rng),
        height=float(rng.uniform(0.8, 0.93)),
        width=float(rng.uniform(0.2, 0.27)),
        leg_ratio=float(rng.uniform(1.0, 1.5)),
    )


def _family_logos(rng: np.random.Generator, outfit: Outfit, num_members: int) -> list[tuple]:
    """Draws a distinct (shape, colour) logo per member, in colours that stand out on the shirt."""
    colors = [
        i
        for i, c in enumerate(_LOGO_COLORS)
        if _distance(c, outfit.upper) > 0.5 and _distance(c, outfit.texture_color) > 0.3
    ]
    combos = [(shape, color) for shape in range(len(LOGO_SHAPES)) for color in colors]
    picks = rng.choice(len(combos), size=num_members, replace=False)
    return [combos[i] for i in picks]


def sample_identities(seed: int, pids: Sequence[int], first_family: int) -> list[Identity]:
    """Draws identities for consecutive `pids`, grouped into families numbered from `first_family`.

    Args:
        seed: dataset seed.
        pids: the person ids to create, in order; consecutive members form a family.
        first_family: global index of the first family (keeps families of splits apart).

    Returns:
        One `Identity` per pid, in the order of `pids`.
    """
    if not pids:
        return []
    sizes = family_sizes(np.random.default_rng([seed, _STREAM_FAMILY_SIZES, pids[0]]), len(pids))
    identities, start = [], 0
    for offset, size in enumerate(sizes):
        family = first_family + offset
        rng = np.random.default_rng([seed, _STREAM_FAMILY, family])
        outfit = sample_outfit(rng)
        logos = _family_logos(rng, outfit, size)
        for pid, logo in zip(pids[start : start + size], logos):
            identities.append(_sample_member(rng, pid, family, outfit, logo))
        start += size
    return identities


def sample_camera(seed: int, cam: int) -> CameraStyle:
    """Draws the fixed style of camera `cam` (0-based)."""
    rng = np.random.default_rng([seed, _STREAM_CAMERA, cam])
    cast = rng.uniform(0.82, 1.18, size=3)
    low = int(rng.integers(55, 85))
    return CameraStyle(
        gain=float(rng.uniform(0.7, 1.2)),
        gamma=float(rng.uniform(0.75, 1.3)),
        cast=tuple(float(c) for c in cast / cast.mean()),
        wall=_clothing_color(rng),
        floor=tuple(float(c) for c in rng.uniform(0.2, 0.6) + rng.uniform(-0.05, 0.05, 3)),
        horizon=float(rng.uniform(0.55, 0.85)),
        clutter=int(rng.integers(0, 30)),
        clutter_contrast=float(rng.uniform(0.1, 0.45)),
        noise=float(rng.uniform(0.005, 0.04)),
        blur=float(rng.choice([0.0, 0.5, 0.8, 1.1])),
        resolution=float(rng.choice([1.0, 1.0, 0.7, 0.5])),
        scale=float(rng.uniform(0.85, 1.0)),
        occlusion=float(rng.uniform(0.05, 0.35)),
        jpeg_quality=(low, low + 15),
        background_seed=int(rng.integers(2**31)),
    )
