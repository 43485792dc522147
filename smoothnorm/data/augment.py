"""Per-batch image augmentation (random crop with padding, horizontal flip), off by default as in the paper."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def augment_batch(
    x: np.ndarray,
    rng: np.random.Generator,
    crop_padding: int = 4,
    flip: bool = True,
    fill: float | ArrayLike = 0.0,
) -> np.ndarray:
    """Randomly crop (after padding) and horizontally flip each image of a batch; returns a new array.

    x: (N, C, H, W) floating images. rng: draws, in this order, N row offsets and N column offsets in
        [0, 2 * crop_padding], then (if `flip`) N fair coin flips; so a seeded generator repeats exactly.
    crop_padding: pixels of padding on every side before cropping back to (H, W); 0 disables cropping.
    fill: padding value, a scalar or one value per channel. 0 pads with the mean colour when `x` is
        normalized; to pad with black as torchvision's RandomCrop on raw images does, pass
        `fill=-MEAN / STD` (see smoothnorm.data.cifar10).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise ValueError(f"x must be a floating array of shape (N, C, H, W), got {x.dtype} {x.shape}")
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, (int, np.integer)) or crop_padding < 0:
        raise ValueError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
    n, channels, height, width = x.shape
    fill = np.asarray(fill, dtype=x.dtype)
    if fill.ndim > 1 or (fill.ndim == 1 and fill.shape[0] != channels):
        raise ValueError(f"fill must be a scalar or have one value per channel ({channels}), got shape {fill.shape}")
    p = int(crop_padding)
    offset_rows = rng.integers(0, 2 * p + 1, size=n)
    offset_cols = rng.integers(0, 2 * p + 1, size=n)
    flipped = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)

    padded = np.empty((n, channels, height + 2 * p, width + 2 * p), dtype=x.dtype)
    padded[...] = fill.reshape(-1, 1, 1) if fill.ndim == 1 else fill
    padded[:, :, p : p + height, p : p + width] = x
    rows = offset_rows[:, None] + np.arange(height)
    cols = offset_cols[:, None] + np.arange(width)
    cols[flipped] = cols[flipped, ::-1]
    # One gather does crop and flip: out[i, c, r, s] = padded[i, c, rows[i, r], cols[i, s]].
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(channels)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
