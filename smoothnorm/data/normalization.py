"""Input normalization fitted on the training split only and applied to every split.

Standardizing the input features (mean 0, variance 1) is the textbook way to make the loss surface of a linear model
round instead of a long valley (LeCun et al. 1998, "Efficient BackProp", section 4.3). The statistics come from the
training split alone: computing them on the test split (or on train and test together) leaks test information.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_NORMS = ("none", "standardize", "per_channel")

# How pixel values become floats: "normalized" ((pixel / 255 - MEAN) / STD, the default), "unit" (pixel / 255, in
# [0, 1]) or "raw" (the pixel values 0..255 themselves: the badly scaled input of the input-normalization study).
IMAGE_SCALES = ("normalized", "unit", "raw")


def image_scale(scale: str | None, normalize: bool) -> str:
    """The effective scale: `scale` when given (checked), else "normalized" or "unit" from the older `normalize`."""
    if scale is None:
        return "normalized" if normalize else "unit"
    if scale not in IMAGE_SCALES:
        raise ValueError(f"scale: expected one of {IMAGE_SCALES}, got {scale!r}")
    return scale


def _check_kind(kind: str) -> str:
    if kind not in INPUT_NORMS:
        raise ValueError(f"input_norm: expected one of {INPUT_NORMS}, got {kind!r}")
    return kind


def _float_inputs(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{name}: expected a float32 or float64 array, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected shape (N, features...) with ndim >= 2, got shape {x.shape}")
    return x


@dataclass(frozen=True)
class InputNormalizer:
    """A fitted affine input map x -> (x - mean) / std; `mean` and `std` broadcast against one sample.

    kind: "none" (identity), "standardize" (every input coordinate: each feature, or each (channel, row, column)
    of an image), "per_channel" (axis 1 of (N, C, ...) inputs, pooled over the other axes; on (N, D) features the
    same as "standardize"). Statistics in float64; a coordinate with zero variance is only centered.
    """

    kind: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, x_train: np.ndarray, kind: str) -> InputNormalizer:
        """Statistics of the training inputs x_train (N, ...) for `kind` (see the class docstring)."""
        kind = _check_kind(kind)
        x_train = _float_inputs("x_train", x_train)
        if kind == "none":
            return cls(kind)
        if len(x_train) < 2:
            raise ValueError(f"x_train: expected at least 2 samples to estimate a variance, got {len(x_train)}")
        axes = (0,) if kind == "standardize" else (0, *range(2, x_train.ndim))
        mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=True)[0]
        std = x_train.std(axis=axes, dtype=np.float64, keepdims=True)[0]
        std = np.where(std > 0, std, 1.0)
        return cls(kind, mean, std)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The normalized copy of x (N, ...) in x's dtype (x itself for kind "none")."""
        x = _float_inputs("x", x)
        if self.kind == "none":
            return x
        if x.shape[1:] != self.mean.shape and self.kind == "standardize":
            raise ValueError(f"x: expected samples of shape {self.mean.shape} (as in x_train), got {x.shape[1:]}")
        if self.kind == "per_channel" and (x.ndim != self.mean.ndim + 1 or x.shape[1] != self.mean.shape[0]):
            raise ValueError(f"x: expected {self.mean.shape[0]} channels on axis 1 (as in x_train), got {x.shape}")
        return ((x - self.mean) / self.std).astype(x.dtype)


def normalize_inputs(kind: str, x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Fit `kind` on x_train alone and apply it to x_train and to every other split: (x_train', *others')."""
    normalizer = InputNormalizer.fit(x_train, kind)
    return tuple(normalizer(x) for x in (x_train, *others))
