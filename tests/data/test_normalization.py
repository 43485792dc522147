"""Input normalization (training statistics only), raw pixel scale, badly scaled regression features."""

import numpy as np
import pytest

from smoothnorm.data import InputNormalizer, gaussian_regression, load_cifar10, normalize_inputs, synthetic_images


def _reference_standardize(x_train, x, axes):
    """(x - mean) / std with float64 statistics of x_train over `axes`, written out."""
    xt = np.asarray(x_train, dtype=np.float64)
    mean = xt.mean(axis=axes, keepdims=True)
    std = np.sqrt(((xt - mean) ** 2).mean(axis=axes, keepdims=True))
    std[std == 0] = 1.0
    return (np.asarray(x, dtype=np.float64) - mean) / std


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("kind", "axes"), [("standardize", (0,)), ("per_channel", (0, 2, 3))])
def test_image_normalization_matches_reference(rng, dtype, kind, axes):
    x_train = (rng.standard_normal((30, 3, 5, 4)) * [[[3.0]], [[0.1]], [[50.0]]] + 7).astype(dtype)
    x_test = (rng.standard_normal((11, 3, 5, 4)) * 4 - 2).astype(dtype)
    tr, te = normalize_inputs(kind, x_train, x_test)
    assert tr.dtype == te.dtype == dtype and te.shape == x_test.shape
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(tr, _reference_standardize(x_train, x_train, axes), rtol=tol, atol=tol)
    np.testing.assert_allclose(te, _reference_standardize(x_train, x_test, axes), rtol=tol, atol=tol)
    np.testing.assert_allclose(tr.astype(np.float64).mean(axis=axes), 0.0, atol=10 * tol)


def test_test_split_statistics_do_not_leak(rng):
    """The normalized training set is the same whatever the test set is, and a shifted test set stays shifted."""
    x_train = rng.standard_normal((40, 6)) * np.logspace(-2, 2, 6) + 5
    x_test = rng.standard_normal((25, 6)) * np.logspace(-2, 2, 6) + 5
    shifted = x_test + 100 * np.logspace(-2, 2, 6)
    tr_a, te_a = normalize_inputs("standardize", x_train, x_test)
    tr_b, te_b = normalize_inputs("standardize", x_train, shifted)
    np.testing.assert_array_equal(tr_a, tr_b)
    expected = np.broadcast_to(100 * np.logspace(-2, 2, 6) / x_train.std(axis=0), te_a.shape)
    np.testing.assert_allclose(te_b - te_a, expected, rtol=1e-10)
    # Statistics fitted on the test split (the leak) would centre it: ours leaves a visible offset.
    assert np.all(np.abs(te_b.mean(axis=0)) > 10)


def test_none_is_the_identity_and_constant_features_are_only_centred(rng):
    x = rng.standard_normal((10, 4))
    assert normalize_inputs("none", x)[0] is x
    x[:, 2] = 3.0
    (out,) = normalize_inputs("standardize", x)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    assert np.all(np.isfinite(out))


def test_bad_arguments_are_named(rng):
    with pytest.raises(ValueError, match=r"input_norm: expected one of \('none', 'standardize', 'per_channel'\), "
                                         r"got 'zscore'"):
        normalize_inputs("zscore", np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"x_train: expected a float32 or float64 array, got dtype int64"):
        InputNormalizer.fit(np.ones((3, 2), dtype=np.int64), "standardize")
    with pytest.raises(ValueError, match=r"x_train: expected at least 2 samples"):
        InputNormalizer.fit(np.ones((1, 2)), "standardize")
    fitted = InputNormalizer.fit(rng.standard_normal((5, 3, 4, 4)), "per_channel")
    with pytest.raises(ValueError, match=r"x: expected 3 channels on axis 1"):
        fitted(np.ones((2, 4, 4, 4)))
    with pytest.raises(ValueError, match=r"x: expected samples of shape \(3,\)"):
        InputNormalizer.fit(rng.standard_normal((5, 3)), "standardize")(np.ones((2, 4)))


def test_synthetic_images_raw_scale():
    (unit, _), _ = synthetic_images(40, 0, seed=3, scale="unit")
    (raw, _), _ = synthetic_images(40, 0, seed=3, scale="raw")
    (old, _), _ = synthetic_images(40, 0, seed=3, normalize=False)
    np.testing.assert_array_equal(unit, old)
    np.testing.assert_allclose(raw, unit * 255, rtol=1e-6)
    assert raw.mean() > 50
    with pytest.raises(ValueError, match=r"scale: expected one of \('normalized', 'unit', 'raw'\), got 'bytes'"):
        synthetic_images(4, 0, scale="bytes")


def test_cifar10_raw_scale(fake_cifar):
    fake_cifar.write_folder()
    x, _ = load_cifar10(fake_cifar.root, train=False, scale="raw", dtype=np.float64)
    raw, _ = fake_cifar.raw_split(False)
    np.testing.assert_array_equal(x, raw.reshape(-1, 3, 32, 32).astype(np.float64))


def test_badly_scaled_regression():
    x0, y0, a0 = gaussian_regression(200, 6, seed=1, return_matrix=True)
    x, y, a = gaussian_regression(200, 6, seed=1, return_matrix=True, feature_scale_range=1000.0)
    np.testing.assert_array_equal(y, y0)  # the targets do not change, only how the features are measured
    scales = 1000.0 ** np.linspace(-0.5, 0.5, 6)
    np.testing.assert_allclose(x, x0 * scales, rtol=1e-15)
    np.testing.assert_allclose(x @ a.T, y, rtol=1e-10, atol=1e-10)
    ratio = np.linalg.cond(x.T @ x) / np.linalg.cond(x0.T @ x0)
    assert 1e5 < ratio < 1e7  # about range**2
    (xs,) = normalize_inputs("standardize", x)
    assert np.linalg.cond(xs.T @ xs) < 3 * np.linalg.cond(x0.T @ x0)
    for bad in (0.5, np.inf, True, "10"):
        with pytest.raises(ValueError, match=r"feature_scale_range: expected a finite number >= 1"):
            gaussian_regression(10, 3, feature_scale_range=bad)
