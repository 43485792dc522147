"""augment_batch: random crop with padding and horizontal flip, against a per-image loop."""

import numpy as np
import pytest

from smoothnorm.data import augment_batch


def _reference_augment(x, seed, crop_padding, flip, fill):
    """Per-image loop with np.pad and slicing, drawing the same numbers in the documented order."""
    rng = np.random.default_rng(seed)
    n, channels, height, width = x.shape
    p = crop_padding
    rows = rng.integers(0, 2 * p + 1, size=n)
    cols = rng.integers(0, 2 * p + 1, size=n)
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
    fill = np.broadcast_to(np.asarray(fill, dtype=x.dtype), (channels,))
    out = np.empty_like(x)
    for i in range(n):
        for c in range(channels):
            padded = np.pad(x[i, c], p, constant_values=fill[c])
            crop = padded[rows[i] : rows[i] + height, cols[i] : cols[i] + width]
            out[i, c] = crop[:, ::-1] if flips[i] else crop
    return out


@pytest.mark.parametrize("shape", [(7, 3, 8, 8), (16, 1, 5, 9), (1, 2, 32, 32)])
@pytest.mark.parametrize("crop_padding", [0, 1, 4])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(rng, shape, crop_padding, flip, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    before = x.copy()
    fill = rng.standard_normal(shape[1]) if shape[1] > 1 else 0.5
    out = augment_batch(x, np.random.default_rng(5), crop_padding, flip, fill=fill)
    assert out.shape == x.shape and out.dtype == dtype
    np.testing.assert_array_equal(out, _reference_augment(x, 5, crop_padding, flip, fill))
    np.testing.assert_array_equal(x, before)  # input untouched


def test_identity_without_crop_or_flip(rng):
    x = rng.standard_normal((4, 3, 6, 6))
    np.testing.assert_array_equal(augment_batch(x, rng, crop_padding=0, flip=False), x)


def test_flips_and_crops_actually_happen(rng):
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    flipped = augment_batch(x, np.random.default_rng(0), crop_padding=0)
    is_same = [np.array_equal(a, b) for a, b in zip(flipped, x, strict=True)]
    is_mirror = [np.array_equal(a, b[..., ::-1]) for a, b in zip(flipped, x, strict=True)]
    assert all(s or m for s, m in zip(is_same, is_mirror, strict=True))
    assert 10 < sum(is_mirror) < 54
    cropped = augment_batch(x, np.random.default_rng(0), crop_padding=4, flip=False)
    assert np.count_nonzero(cropped == 0) > 0  # zero padding shows up in shifted images


def test_deterministic_for_a_seed(rng):
    x = rng.standard_normal((10, 3, 8, 8))
    a = augment_batch(x, np.random.default_rng(1))
    b = augment_batch(x, np.random.default_rng(1))
    c = augment_batch(x, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    with pytest.raises(ValueError, match="Generator"):
        augment_batch(x, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        augment_batch(x[0], rng)
    with pytest.raises(ValueError, match="floating"):
        augment_batch(x.astype(np.uint8), rng)
    with pytest.raises(ValueError, match="crop_padding"):
        augment_batch(x, rng, crop_padding=-1)
    with pytest.raises(ValueError, match="crop_padding"):
        augment_batch(x, rng, crop_padding=1.5)
    with pytest.raises(ValueError, match="one value per channel"):
        augment_batch(x, rng, fill=[0.0, 1.0])
