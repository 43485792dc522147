"""Synthetic data sets that need no network: Gaussian regression for the DLN and a 10-class image task."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import DTypeLike

from .normalization import image_scale

# The ten image classes, in label order (see synthetic_images).
IMAGE_CLASSES = (
    "grating_0",
    "grating_45",
    "grating_90",
    "grating_135",
    "disk",
    "square",
    "ring",
    "cross",
    "checkerboard",
    "concentric",
)

_CHUNK = 1024  # images rendered at once: keeps the float32 temporaries to a few MB
_BLOBS = 2  # clutter blobs per image  # images rendered at once: bounds the float32 temporaries to a few tens of MB


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")


def gaussian_regression(
    n: int = 1000,
    dim: int = 10,
    seed: int = 0,
    dtype: DTypeLike = np.float64,
    *,
    out_dim: int | None = None,
    return_matrix: bool = False,
    feature_scale_range: float = 1.0,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regression data `y = A x` with `x ~ N(0, I)` and `A` i.i.d. N(0, 1), the DLN task (paper App. A.1).

    n: samples; dim: input dimension; out_dim: output dimension (default `dim`, A square as in the paper).
    A is drawn first, then x, both in float64 and rounded to `dtype`; `y = x @ A.T` is computed in `dtype`,
    so it holds exactly for the returned arrays. A does not depend on `n`.
    feature_scale_range: ratio of the largest to the smallest feature scale (>= 1). Above 1 the features are badly
        scaled: feature j is multiplied by s_j, log-spaced from range**-0.5 to range**0.5 (geometric mean 1), while
        y stays A z of the unscaled z. Standardizing x then undoes the scaling; the Hessian of a linear least-squares
        fit on raw x has a condition number about range**2 times larger. The returned matrix is then A diag(1/s),
        with y = x @ matrix.T up to rounding.
    Returns x (n, dim), y (n, out_dim), and A (out_dim, dim) too when `return_matrix`.
    """
    n = _check_int("n", n, 1)
    dim = _check_int("dim", dim, 1)
    out_dim = dim if out_dim is None else _check_int("out_dim", out_dim, 1)
    _check_seed(seed)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if isinstance(feature_scale_range, bool) or not isinstance(feature_scale_range, (int, float, np.floating)) or not (
        1.0 <= feature_scale_range < np.inf
    ):
        raise ValueError(f"feature_scale_range: expected a finite number >= 1, got {feature_scale_range!r}")
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((out_dim, dim)).astype(dtype)
    x = rng.standard_normal((n, dim)).astype(dtype)
    y = x @ matrix.T
    if feature_scale_range > 1.0:
        scales = float(feature_scale_range) ** np.linspace(-0.5, 0.5, dim)
        x = (x * scales).astype(dtype)
        matrix = (matrix / scales).astype(dtype)
    return (x, y, matrix) if return_matrix else (x, y)


def _draw_parameters(rng: np.random.Generator, n: int, size: int, channels: int) -> dict:
    """Per-image nuisance parameters, drawn in a fixed order so a seed fixes every image."""
    f32 = np.float32
    params = {
        "center": (size / 2 - 0.5 + rng.uniform(-0.15, 0.15, (n, 2)) * size).astype(f32),
        "radius": (rng.uniform(0.22, 0.38, n) * size).astype(f32),
        "angle": rng.uniform(-12, 12, n) * (math.pi / 180),
        "period": (rng.uniform(0.14, 0.22, n) * size).astype(f32),
        "phase": rng.uniform(0, 2 * math.pi, (n, 2)).astype(f32),
        "background": rng.uniform(0.15, 0.85, (n, channels)).astype(f32),
        # Foreground = background + contrast * colour: the colour varies per channel, and the contrast is
        # brighter-than-background for 80% of images; the symmetric part hides the class from linear models.
        "contrast": (rng.uniform(0.25, 0.55, n) * np.where(rng.random(n) < 0.8, 1.0, -1.0)).astype(f32),
        "colour": rng.uniform(0.4, 1.0, (n, channels)).astype(f32),
        "shading": (rng.uniform(-0.15, 0.15, (n, 2)) / size).astype(f32),  # a random linear illumination ramp
        # Clutter: soft blobs of random colour anywhere in the image, unrelated to the class.
        "blob_center": (rng.uniform(0, 1, (n, _BLOBS, 2)) * size).astype(f32),
        "blob_width": (rng.uniform(0.06, 0.15, (n, _BLOBS)) * size).astype(f32),
        "blob_colour": rng.uniform(-0.25, 0.25, (n, _BLOBS, channels)).astype(f32),
        "noise": rng.uniform(0.06, 0.18, n).astype(f32),
    }
    return params


def _soft(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased inside indicator from a signed distance in pixels (positive inside)."""
    return np.clip(distance + np.float32(0.5), 0, 1)


def _patterns(
    label: int,
    u: np.ndarray,
    v: np.ndarray,
    radius: np.ndarray,
    period: np.ndarray,
    phase: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Intensity in [0, 1] of class `label` for m images: u, v (m, S, S) pixel offsets from each centre."""
    two_pi = np.float32(2 * math.pi)
    r = radius[:, None, None]
    rho = np.sqrt(u * u + v * v)
    window = _soft(r - rho)
    if label <= 3:  # gratings at 0, 45, 90, 135 degrees (plus jitter), random phase, inside a disk
        theta = (angle + label * math.pi / 4).astype(np.float32)
        along = u * np.cos(theta)[:, None, None] + v * np.sin(theta)[:, None, None]
        wave = np.cos(two_pi * along / period[:, None, None] + phase[:, 0, None, None])
        return window * (np.float32(0.5) + np.float32(0.5) * wave)
    c, s = np.cos(angle).astype(np.float32)[:, None, None], np.sin(angle).astype(np.float32)[:, None, None]
    ur, vr = c * u + s * v, c * v - s * u
    if label == 4:  # disk
        return window
    if label == 5:  # square, slightly rotated
        return _soft(np.float32(0.85) * r - np.maximum(np.abs(ur), np.abs(vr)))
    thickness = np.maximum(np.float32(0.28) * r, np.float32(1.5))
    if label == 6:  # ring
        return _soft(thickness / 2 - np.abs(rho - np.float32(0.75) * r))
    if label == 7:  # plus-shaped cross
        bar_h = _soft(thickness / 2 - np.abs(vr)) * _soft(r - np.abs(ur))
        bar_v = _soft(thickness / 2 - np.abs(ur)) * _soft(r - np.abs(vr))
        return np.maximum(bar_h, bar_v)
    if label == 8:  # checkerboard: product of two square-ish waves
        k = two_pi / period[:, None, None]
        cells = np.cos(k * ur + phase[:, 0, None, None]) * np.cos(k * vr + phase[:, 1, None, None])
        return window * (np.float32(0.5) + np.float32(0.5) * np.tanh(np.float32(4) * cells))
    # label == 9: concentric rings
    wave = np.cos(two_pi * rho / period[:, None, None] + phase[:, 0, None, None])
    return window * (np.float32(0.5) + np.float32(0.5) * wave)


@functools.lru_cache(maxsize=16)
def class_tints(channels: int) -> np.ndarray:
    """The fixed per-class tint directions behind `class_colour`: (len(IMAGE_CLASSES), channels) float32, row c for
    class c, each row of unit root-mean-square, drawn once from a constant seed (like `_channel_stats`, not from the
    data seed), so a class's tint depends neither on the seed nor on num_classes."""
    rng = np.random.default_rng(np.random.SeedSequence(0xC0102, spawn_key=(channels,)))
    tints = rng.standard_normal((len(IMAGE_CLASSES), channels))
    tints /= np.sqrt(np.mean(tints**2, axis=1, keepdims=True))
    return tints.astype(np.float32)


def _render(rng: np.random.Generator, labels: np.ndarray, size: int, channels: int,
            class_colour: float = 0.0) -> np.ndarray:
    """Raw (unnormalized) float32 images (n, channels, size, size) for the given labels, tinted by class when
    class_colour > 0 (after every random draw, so the draws and the untinted images do not depend on it)."""
    n = len(labels)
    p = _draw_parameters(rng, n, size, channels)
    # Pixel noise: uniform with std `noise` (Gaussian draws cost 5x more here and add nothing to the task).
    images = rng.random((n, channels, size, size), dtype=np.float32)
    grid = np.arange(size, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        v = grid[None, :, None] - p["center"][sl, 0, None, None]  # rows
        u = grid[None, None, :] - p["center"][sl, 1, None, None]  # columns
        u, v = np.broadcast_to(u, (m, size, size)), np.broadcast_to(v, (m, size, size))
        pattern = np.empty((m, size, size), dtype=np.float32)
        chunk_labels = labels[sl]
        for label in np.unique(chunk_labels):
            idx = np.flatnonzero(chunk_labels == label)
            j = idx + sl.start
            pattern[idx] = _patterns(
                int(label), u[idx], v[idx], p["radius"][j], p["period"][j], p["phase"][j], p["angle"][j]
            )
        shading = p["shading"][sl, 0, None, None] * u + p["shading"][sl, 1, None, None] * v
        block = images[sl]
        block -= np.float32(0.5)
        block *= (p["noise"][sl] * np.float32(math.sqrt(12)))[:, None, None, None]
        block += p["background"][sl, :, None, None]
        block += shading[:, None]
        for b in range(_BLOBS):
            dv = grid[None, :, None] - p["blob_center"][sl, b, 0, None, None]
            du = grid[None, None, :] - p["blob_center"][sl, b, 1, None, None]
            inv = np.float32(-0.5) / p["blob_width"][sl, b, None, None] ** 2
            blob = np.exp((du * du + dv * dv) * inv)
            block += p["blob_colour"][sl, b, :, None, None] * blob[:, None]
        block += (p["contrast"][sl, None] * p["colour"][sl])[:, :, None, None] * pattern[:, None]
    if class_colour:
        images += (np.float32(class_colour) * class_tints(channels)[labels])[:, :, None, None]
    return images


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


@functools.lru_cache(maxsize=16)
def _channel_stats(num_classes: int, size: int, channels: int, class_colour: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the generator's distribution, from a fixed reference sample of 4096 images.

    The analogue of CIFAR's published training-set constants: fixed for a configuration, so the normalization
    depends neither on the seed nor on n_train, and the test set does not change when n_train does.
    """
    rng = np.random.default_rng(np.random.SeedSequence(0x5EED, spawn_key=(num_classes, size, channels)))
    raw = _render(rng, _balanced_labels(rng, 4096, num_classes), size, channels, class_colour)
    mean = raw.mean(axis=(0, 2, 3), dtype=np.float64)
    std = raw.std(axis=(0, 2, 3), dtype=np.float64)
    return mean, std


def synthetic_images(
    n_train: int,
    n_test: int,
    num_classes: int = 10,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
    *,
    normalize: bool = True,
    scale: str | None = None,
    class_colour: float = 0.0,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A CIFAR-shaped image task: ten classes of textures and shapes under random nuisances.

    Classes (`IMAGE_CLASSES`, the first `num_classes` are used): gratings whose intensity varies along
    0/45/90/135 degrees, disk, square, ring, cross, checkerboard, concentric rings. Each image has a random
    position, scale, small rotation, grating period and phase, background and foreground colours (contrast of
    random sign, 80% brighter), a linear illumination ramp, two soft clutter blobs and uniform pixel noise.
    The class lives in local orientation and shape, which convolutions pick up quickly; the random phase,
    colour and position wash it out of the class means, so a linear classifier on raw pixels does clearly
    better than chance but far from 100% (about 20% test accuracy at n_train=2000, chance 10%). Designed for
    size 32 (sizes scale the geometry; below about 16 the gratings alias).

    n_train, n_test: number of images (n_train >= 1, n_test >= 0); labels are balanced (counts differ by at
        most one) and shuffled. size >= 8; 1 <= channels; 2 <= num_classes <= 10.
    seed: the train and test sets come from independent streams of `SeedSequence(seed)`, so the test set
        does not depend on n_train. Bitwise deterministic for a seed on a given NumPy and machine.
    normalize: subtract a per-channel mean and divide by a per-channel std (fixed constants of the
        generator, measured on a reference sample, like CIFAR's published constants).
    scale: "normalized" (as normalize=True), "unit" (the rendered intensities, mostly in [0, 1], as
        normalize=False) or "raw" (those times 255, CIFAR's pixel scale; not rounded); replaces `normalize`.
    class_colour: root-mean-square (over channels) of a tint added to every pixel of an image, fixed per class
        (`class_tints`), in rendered intensity units (pixels mostly in [0, 1], per-channel std about 0.26); 0 (the
        default) adds none. A CIFAR-like cue: CIFAR's classes differ in mean colour (sky, grass, water), ours do
        not, and a colour cue is what survives the depth of a Glorot-initialized plain VGG-16 at initialization
        (docs/PROTOCOL.md, "Quick-profile fidelity"). Every random draw is unchanged by it; the normalization
        constants are measured on tinted reference images.
    Returns ((x_train, y_train), (x_test, y_test)), x float32 (N, channels, size, size), y int64 (N,).
    """
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 0)
    num_classes = _check_int("num_classes", num_classes, 2)
    if num_classes > len(IMAGE_CLASSES):
        raise ValueError(f"num_classes must be <= {len(IMAGE_CLASSES)}, got {num_classes}")
    size = _check_int("size", size, 8)
    channels = _check_int("channels", channels, 1)
    _check_seed(seed)
    scale = image_scale(scale, normalize)
    if isinstance(class_colour, bool) or not isinstance(class_colour, (int, float, np.floating)) or not (
            math.isfinite(class_colour) and class_colour >= 0):
        raise ValueError(f"class_colour must be a finite number >= 0, got {class_colour!r}")
    class_colour = float(class_colour)
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    splits = []
    for seq, n in ((train_seq, n_train), (test_seq, n_test)):
        rng = np.random.default_rng(seq)
        y = _balanced_labels(rng, n, num_classes)
        x = _render(rng, y, size, channels, class_colour)
        if scale == "normalized":
            mean, std = _channel_stats(num_classes, size, channels, class_colour)
            x -= mean.astype(np.float32)[:, None, None]
            x *= (1.0 / std).astype(np.float32)[:, None, None]
        elif scale == "raw":
            x *= np.float32(255)
        splits.append((x, y))
    return splits[0], splits[1]
