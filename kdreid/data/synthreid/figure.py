"""The SynthReID pedestrian: a figure drawn from an identity's factors in one pose.

The figure is drawn as a map of part labels at twice the output resolution (one `cv2.fillPoly` or
`cv2.ellipse` per body part), coloured through a look-up table, textured with separable stripe
masks, and reduced to 128x64 with area averaging, which anti-aliases its edges.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from kdreid.data.synthreid.factors import LOGO_SHAPES, TEXTURES, CameraStyle, Identity

HEIGHT, WIDTH = 128, 64
_SUPER = 2  # supersampling factor of the label map
_SHIFT = 3  # fractional bits of the fixed-point coordinates given to OpenCV

PARTS = ("background", "skin", "hair", "upper", "lower", "shoes", "bag", "logo")  # label = index
_SKIN, _HAIR, _UPPER, _LOWER, _SHOES, _BAG, _LOGO = range(1, len(PARTS))
_INK = len(PARTS)  # colour index of the texture's ink on the upper garment


@dataclass(frozen=True)
class Pose:
    """Where and how a figure stands in one image (in output pixels).

    Attributes:
        top: y of the top of the head.
        height: figure height from the top of the head to the soles.
        center: x of the body's centre line.
        phase: walking phase in [-1, 1]: stride of the legs and swing of the arms.
        front: facing the camera (face and logo visible) or walking away from it.
    """

    top: float
    height: float
    center: float
    phase: float
    front: bool


def sample_pose(identity: Identity, camera: CameraStyle, rng: np.random.Generator) -> Pose:
    """Draws the per-image placement: scale, vertical misalignment, horizontal shift, stride."""
    height = HEIGHT * identity.height * camera.scale * rng.uniform(0.94, 1.06)
    return Pose(
        top=(HEIGHT - height) / 2 + rng.uniform(-0.06, 0.06) * HEIGHT,
        height=height,
        center=WIDTH / 2 + rng.uniform(-0.06, 0.06) * WIDTH,
        phase=rng.uniform(-1.0, 1.0),
        front=bool(rng.random() < 0.7),
    )


def _fixed(points: np.ndarray) -> np.ndarray:
    """Output-pixel coordinates to the fixed-point label-map coordinates OpenCV draws with."""
    return np.round(np.asarray(points) * (_SUPER << _SHIFT)).astype(np.int32)


def _poly(labels: np.ndarray, points: list, label: int) -> None:
    cv2.fillPoly(labels, [_fixed(points)], label, cv2.LINE_8, _SHIFT)


def _rect(labels: np.ndarray, x0: float, y0: float, x1: float, y1: float, label: int) -> None:
    _poly(labels, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], label)


def _ellipse(labels: np.ndarray, center: tuple, axes: tuple, label: int) -> None:
    center, axes = _fixed(center).tolist(), _fixed(axes).tolist()
    cv2.ellipse(labels, center, axes, 0, 0, 360, label, -1, cv2.LINE_8, _SHIFT)


@dataclass(frozen=True)
class _Body:
    """Key coordinates of a figure, derived from its identity and pose (output pixels)."""

    center: float
    head_y: float
    head_h: float
    shoulder_y: float
    shoulder_w: float
    waist_y: float
    hip_w: float
    crotch_y: float
    ankle_y: float
    foot_y: float
    arm_w: float


def _body(identity: Identity, pose: Pose) -> _Body:
    """Lays out head, torso and legs along the figure's height by the identity's proportions."""
    h = pose.height
    head_h = 0.135 * h
    shoulder_y = pose.top + head_h + 0.02 * h
    foot_y = pose.top + h
    ankle_y = foot_y - 0.035 * h
    torso = (ankle_y - shoulder_y) / (1.0 + identity.leg_ratio)
    waist_y = shoulder_y + torso
    shoulder_w = identity.width * h
    return _Body(
        center=pose.center,
        head_y=pose.top + head_h / 2,
        head_h=head_h,
        shoulder_y=shoulder_y,
        shoulder_w=shoulder_w,
        waist_y=waist_y,
        hip_w=0.85 * shoulder_w,
        crotch_y=waist_y + 0.12 * (ankle_y - waist_y),
        ankle_y=ankle_y,
        foot_y=foot_y,
        arm_w=0.2 * shoulder_w,
    )


def _draw_legs(labels: np.ndarray, body: _Body, pose: Pose, shorts: bool) -> None:
    """Hips, two legs (bare below the knee under shorts) and shoes, mid-stride by `pose.phase`."""
    c, hw = body.center, body.hip_w
    stride = 0.1 * (body.ankle_y - body.waist_y) * abs(pose.phase)  # feet apart mid-stride
    shoe_h = body.foot_y - body.ankle_y
    for side in (-1, 1):
        foot_x = c + side * (0.27 * hw + stride)
        hip = np.array(
            [(c + side * 0.5 * hw, body.crotch_y), (c + side * 0.02 * hw, body.crotch_y)]
        )
        ankle = np.array(
            [(foot_x - side * 0.15 * hw, body.ankle_y), (foot_x + side * 0.15 * hw, body.ankle_y)]
        )
        leg = [*hip, *ankle]  # outer hip, inner hip, inner ankle, outer ankle
        _poly(labels, leg, _SKIN if shorts else _LOWER)
        if shorts:
            knee = (hip[::-1] + ankle) / 2  # inner knee, outer knee
            _poly(labels, [*hip, *knee], _LOWER)
        shoe = (foot_x + side * 0.04 * hw, body.ankle_y + 0.5 * shoe_h)
        _ellipse(labels, shoe, (0.2 * hw, 0.6 * shoe_h), _SHOES)
    _rect(labels, c - hw / 2, body.waist_y, c + hw / 2, body.crotch_y + 1, _LOWER)


def _draw_arms(labels: np.ndarray, body: _Body, pose: Pose, long_sleeves: bool) -> None:
    """Two arms hanging beside the torso, swinging against the stride; sleeves to wrist or elbow."""
    length = 1.05 * (body.waist_y - body.shoulder_y) + 0.05 * pose.height
    for side in (-1, 1):
        swing = -side * 0.12 * length * pose.phase
        shoulder = np.array(
            [
                body.center + side * (body.shoulder_w / 2 - 0.3 * body.arm_w),
                body.shoulder_y + 0.4 * body.arm_w,
            ]
        )
        hand = np.array(
            [
                body.center + side * (body.hip_w / 2 + 0.55 * body.arm_w) + swing,
                body.shoulder_y + length,
            ]
        )
        normal = np.array([1.0, 0.0]) * body.arm_w / 2
        sleeve_end = shoulder + (1.0 if long_sleeves else 0.45) * (hand - shoulder)
        _poly(
            labels,
            [shoulder - normal, shoulder + normal, hand + 0.8 * normal, hand - 0.8 * normal],
            _SKIN,
        )
        _poly(
            labels,
            [
                shoulder - normal,
                shoulder + normal,
                sleeve_end + 0.9 * normal,
                sleeve_end - 0.9 * normal,
            ],
            _UPPER,
        )
        _ellipse(
            labels,
            tuple(hand + [0, 0.3 * body.arm_w]),
            (0.45 * body.arm_w, 0.55 * body.arm_w),
            _SKIN,
        )


def _draw_torso_and_head(labels: np.ndarray, body: _Body, pose: Pose) -> None:
    """Neck, torso (tapering from shoulders to hips) and head: a face, or hair from behind."""
    c, sw, hw = body.center, body.shoulder_w, body.hip_w
    _rect(labels, c - 0.09 * sw, body.head_y, c + 0.09 * sw, body.shoulder_y + 1, _SKIN)
    _poly(
        labels,
        [
            (c - 0.32 * sw, body.shoulder_y),
            (c + 0.32 * sw, body.shoulder_y),
            (c + 0.5 * sw, body.shoulder_y + 0.1 * sw),
            (c + 0.5 * hw, body.waist_y),
            (c - 0.5 * hw, body.waist_y),
            (c - 0.5 * sw, body.shoulder_y + 0.1 * sw),
        ],
        _UPPER,
    )
    head_w = 0.78 * body.head_h
    _ellipse(labels, (c, body.head_y), (head_w / 2, body.head_h / 2), _HAIR)
    if pose.front:
        _ellipse(
            labels, (c, body.head_y + 0.1 * body.head_h), (0.42 * head_w, 0.4 * body.head_h), _SKIN
        )


def _draw_logo(labels: np.ndarray, identity: Identity, body: _Body) -> None:
    """The chest logo: the identity's shape, position and size, relative to the torso."""
    x = body.center + identity.logo_x * body.shoulder_w
    y = body.shoulder_y + identity.logo_y * (body.waist_y - body.shoulder_y)
    r = identity.logo_size * body.shoulder_w / 2
    shape = LOGO_SHAPES[identity.logo_shape]
    if shape == "circle":
        _ellipse(labels, (x, y), (r, r), _LOGO)
        return
    corners = {
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, -1.1), (1.1, 0.9), (-1.1, 0.9)],
        "diamond": [(0, -1.3), (1, 0), (0, 1.3), (-1, 0)],
        "bar": [(-1.4, -0.5), (1.4, -0.5), (1.4, 0.5), (-1.4, 0.5)],
    }[shape]
    _poly(labels, [(x + r * dx, y + r * dy) for dx, dy in corners], _LOGO)


def _draw_bag(labels: np.ndarray, identity: Identity, body: _Body) -> None:
    """A shoulder bag at hip height on the identity's side, its strap across the torso."""
    if identity.bag_side == 0:
        return
    side, c = identity.bag_side, body.center
    x = c + side * (body.hip_w / 2 + 0.6 * body.arm_w)
    w, top = 0.36 * body.shoulder_w, body.waist_y - 0.06 * (body.ankle_y - body.shoulder_y)
    bottom = top + 0.7 * body.shoulder_w
    _rect(labels, x - w / 2, top, x + w / 2, bottom, _BAG)
    strap = [(c - side * 0.3 * body.shoulder_w, body.shoulder_y), (x, top)]
    cv2.line(
        labels,
        _fixed(strap[0]).tolist(),
        _fixed(strap[1]).tolist(),
        _BAG,
        max(1, round(0.6 * _SUPER * body.arm_w / 2.5)),
        cv2.LINE_8,
        _SHIFT,
    )


def draw_labels(identity: Identity, pose: Pose) -> np.ndarray:
    """Draws the figure's part labels at twice the output resolution.

    Returns:
        uint8 label map of shape (2 * 128, 2 * 64); label i is the part `PARTS[i]`.
    """
    labels = np.zeros((HEIGHT * _SUPER, WIDTH * _SUPER), np.uint8)
    body = _body(identity, pose)
    _draw_legs(labels, body, pose, identity.outfit.shorts)
    _draw_arms(labels, body, pose, identity.outfit.long_sleeves)
    _draw_torso_and_head(labels, body, pose)
    if pose.front:
        _draw_logo(labels, identity, body)
    _draw_bag(labels, identity, body)
    return labels


def _texture_mask(identity: Identity, pose: Pose) -> np.ndarray | None:
    """Boolean (rows, cols) mask of the pattern's ink, or None for a plain garment."""
    texture = TEXTURES[identity.outfit.texture]
    if texture == "plain":
        return None
    period = identity.outfit.texture_period * pose.height * _SUPER
    rows = (np.arange(HEIGHT * _SUPER) - pose.top * _SUPER) // (period / 2) % 2 == 1
    cols = (np.arange(WIDTH * _SUPER) - pose.center * _SUPER) // (period / 2) % 2 == 1
    if texture == "hstripes":
        return np.broadcast_to(rows[:, None], (rows.size, cols.size))
    if texture == "vstripes":
        return np.broadcast_to(cols[None, :], (rows.size, cols.size))
    return rows[:, None] ^ cols[None, :]


def _palette(identity: Identity) -> np.ndarray:
    """Colour of each label (and of the texture's ink at `_INK`) as a (1, 256, 3) cv2.LUT table."""
    outfit = identity.outfit
    colors = [
        (0.0, 0.0, 0.0),
        outfit.skin,
        identity.hair,
        outfit.upper,
        outfit.lower,
        identity.shoes,
        identity.bag_color,
        identity.logo_color,
        outfit.texture_color,
    ]
    table = np.zeros((1, 256, 3), np.uint8)
    table[0, : len(colors)] = np.round(np.array(colors) * 255.0)
    return table


def paint_figure(identity: Identity, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Renders the figure at output resolution.

    Returns:
        color: float32 (128, 64, 3) BGR colour in [0, 1], premultiplied by alpha.
        alpha: float32 (128, 64) coverage of the figure.
    """
    labels = draw_labels(identity, pose)
    size = (WIDTH, HEIGHT)
    alpha = cv2.resize((labels > 0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    ink = _texture_mask(identity, pose)
    if ink is not None:
        labels = np.where(ink & (labels == _UPPER), np.uint8(_INK), labels)
    color = cv2.LUT(cv2.merge([labels] * 3), _palette(identity))  # black background: premultiplied
    color = cv2.resize(color, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    offset = (np.arange(WIDTH) + 0.5 - pose.center) / (0.6 * identity.width * pose.height)
    shade = (1.0 - 0.3 * np.minimum(offset**2, 1.0)) / 255.0  # rounded body: darker at its sides
    return color * shade.astype(np.float32)[None, :, None], alpha
