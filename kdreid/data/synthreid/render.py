"""Image formation of SynthReID: a figure seen by a camera, on its background, saved as JPEG.

A camera has a fixed background panorama (each image sees a random crop of it) and adds, per
image, occlusion, a horizontal flip, resolution loss, blur, illumination, colour cast and noise.
"""

import cv2
import numpy as np

from kdreid.data.synthreid.factors import CameraStyle, Identity
from kdreid.data.synthreid.figure import HEIGHT, WIDTH, paint_figure, sample_pose

_PANORAMA_WIDTH = 3 * WIDTH  # a camera's background; each image sees a random crop of it


def render_background(camera: CameraStyle) -> np.ndarray:
    """Renders a camera's background panorama: wall, floor, clutter and low-frequency stains.

    Returns:
        float32 (128, 192, 3) BGR image in [0, 1].
    """
    rng = np.random.default_rng(camera.background_seed)
    horizon = int(camera.horizon * HEIGHT)
    rows = np.linspace(0.9, 1.1, HEIGHT, dtype=np.float32)[:, None, None]
    pano = np.empty((HEIGHT, _PANORAMA_WIDTH, 3), np.float32)
    pano[:horizon] = camera.wall
    pano[horizon:] = camera.floor
    pano *= rows
    for _ in range(camera.clutter):
        x, y = int(rng.integers(0, _PANORAMA_WIDTH)), int(rng.integers(0, horizon + 1))
        w, h = (
            (int(rng.integers(2, 6)), int(rng.integers(30, HEIGHT)))
            if rng.random() < 0.3
            else (int(rng.integers(6, 40)), int(rng.integers(6, 40)))
        )
        tint = np.clip(np.add(camera.wall, rng.normal(0, camera.clutter_contrast, 3)), 0, 1)
        cv2.rectangle(pano, (x, y), (x + w, y + h), tuple(float(t) for t in tint), -1)
    for y in range(horizon + 6, HEIGHT, int(rng.integers(6, 16))):
        cv2.line(pano, (0, y), (_PANORAMA_WIDTH, y), tuple(0.85 * np.array(camera.floor)), 1)
    stains = rng.normal(0, 0.2 * camera.clutter_contrast, (HEIGHT // 16, _PANORAMA_WIDTH // 16))
    stains = stains.astype(np.float32)
    pano += cv2.resize(stains, (_PANORAMA_WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)[..., None]
    return np.clip(pano, 0, 1)


def _occlude(image: np.ndarray, rng: np.random.Generator) -> None:
    """Covers the bottom or one side of `image` in place with a shaded rectangle."""
    where = rng.integers(3)
    if where == 0:
        h = int(rng.uniform(0.15, 0.35) * HEIGHT)
        x0, x1, y0 = int(rng.uniform(0, 0.4) * WIDTH), WIDTH, HEIGHT - h
    else:
        w = int(rng.uniform(0.2, 0.4) * WIDTH)
        x0, x1 = (0, w) if where == 1 else (WIDTH - w, WIDTH)
        y0 = int(rng.uniform(0.1, 0.6) * HEIGHT)
    color = rng.uniform(0.05, 0.95, 3).astype(np.float32)
    ramp = np.linspace(1.1, 0.8, HEIGHT - y0, dtype=np.float32)[:, None, None]
    image[y0:, x0:x1] = color * ramp


def _apply_camera(image: np.ndarray, camera: CameraStyle, rng: np.random.Generator) -> np.ndarray:
    """Flip, resolution loss, blur, illumination, cast and sensor noise; returns uint8 BGR."""
    if rng.random() < 0.5:
        image = cv2.flip(image, 1)
    if camera.resolution < 1.0:
        low = (round(WIDTH * camera.resolution), round(HEIGHT * camera.resolution))
        image = cv2.resize(
            cv2.resize(image, low, interpolation=cv2.INTER_AREA),
            (WIDTH, HEIGHT),
            interpolation=cv2.INTER_LINEAR,
        )
    sigma = camera.blur * rng.uniform(0.7, 1.3)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    gain = np.float32(camera.gain * rng.uniform(0.9, 1.1)) * np.asarray(camera.cast, np.float32)
    image = np.power(np.clip(image, 0.0, 1.0), np.float32(camera.gamma)) * gain
    if camera.noise > 0:  # uniform, zero-mean, standard deviation `camera.noise`
        image += (rng.random(image.shape, np.float32) - 0.5) * np.float32(camera.noise * 12**0.5)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_image(
    identity: Identity, camera: CameraStyle, background: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Renders one image of `identity` seen by `camera`.

    Args:
        identity: who is in the image.
        camera: the camera's fixed style.
        background: the camera's panorama from `render_background`, float32 (128, 192, 3).
        rng: this image's random generator (pose, crop, occlusion, flip, noise).

    Returns:
        uint8 BGR image of shape (128, 64, 3).
    """
    color, alpha = paint_figure(identity, sample_pose(identity, camera, rng))
    x0 = int(rng.integers(0, background.shape[1] - WIDTH + 1))
    image = background[:, x0 : x0 + WIDTH] * (1.0 - alpha[..., None]) + color
    if rng.random() < camera.occlusion:
        _occlude(image, rng)
    return _apply_camera(image, camera, rng)


def encode_jpeg(image: np.ndarray, camera: CameraStyle, rng: np.random.Generator) -> bytes:
    """JPEG-encodes `image` at a quality drawn from the camera's range."""
    quality = int(rng.integers(camera.jpeg_quality[0], camera.jpeg_quality[1] + 1))
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG image")
    return buffer.tobytes()
