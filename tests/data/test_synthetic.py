"""Synthetic data: Gaussian regression for the DLN and the 10-class image task."""

import numpy as np
import pytest

from smoothnorm.data import IMAGE_CLASSES, gaussian_regression, synthetic_images

# --- gaussian_regression ---


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regression_targets_are_exactly_a_x(dtype):
    x, y, a = gaussian_regression(50, 7, seed=3, dtype=dtype, return_matrix=True)
    assert x.shape == (50, 7) and y.shape == (50, 7) and a.shape == (7, 7)
    assert x.dtype == y.dtype == a.dtype == dtype
    np.testing.assert_array_equal(y, x @ a.T)


def test_regression_defaults_match_the_paper():
    x, y = gaussian_regression()
    assert x.shape == (1000, 10) and y.shape == (1000, 10) and x.dtype == np.float64
    # x ~ N(0, I) and A has N(0, 1) entries: E||A x||^2 = dim^2.
    assert abs(x.mean()) < 0.1 and abs(x.std() - 1) < 0.05
    assert 50 < np.mean(np.sum(y**2, axis=1)) < 200


def test_regression_is_deterministic_and_a_does_not_depend_on_n():
    x1, y1, a1 = gaussian_regression(20, 4, seed=1, return_matrix=True)
    x2, y2, a2 = gaussian_regression(20, 4, seed=1, return_matrix=True)
    _, _, a_more = gaussian_regression(500, 4, seed=1, return_matrix=True)
    x3, _, a3 = gaussian_regression(20, 4, seed=2, return_matrix=True)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(a1, a_more)
    assert not np.array_equal(a1, a3) and not np.array_equal(x1, x3)


def test_regression_out_dim():
    x, y, a = gaussian_regression(5, 3, out_dim=2, return_matrix=True)
    assert a.shape == (2, 3) and y.shape == (5, 2)
    np.testing.assert_array_equal(y, x @ a.T)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "n must be"),
        ({"dim": 0}, "dim must be"),
        ({"n": 2.5}, "n must be"),
        ({"out_dim": 0}, "out_dim must be"),
        ({"seed": -1}, "seed must be"),
        ({"dtype": np.int32}, "float32 or float64"),
    ],
)
def test_regression_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_regression(**kwargs)


# --- synthetic_images ---


def test_images_shapes_dtypes_and_balance():
    (x, y), (xt, yt) = synthetic_images(103, 31, seed=0)
    assert x.shape == (103, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (103,) and y.dtype == np.int64
    assert xt.shape == (31, 3, 32, 32) and yt.shape == (31,)
    for labels in (y, yt):
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1 and len(counts) == 10
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(xt))
    assert not np.array_equal(y[:10], np.arange(10))  # shuffled, not in class order


@pytest.mark.parametrize("num_classes, size, channels", [(2, 8, 1), (4, 16, 3), (10, 20, 2)])
def test_images_other_configurations(num_classes, size, channels):
    (x, y), (xt, yt) = synthetic_images(40, 0, num_classes=num_classes, size=size, channels=channels, seed=1)
    assert x.shape == (40, channels, size, size) and xt.shape == (0, channels, size, size)
    assert y.min() == 0 and y.max() == num_classes - 1 and yt.shape == (0,)
    assert len(IMAGE_CLASSES) == 10


def test_images_are_bitwise_deterministic_per_seed():
    a = synthetic_images(60, 20, seed=7)
    b = synthetic_images(60, 20, seed=7)
    c = synthetic_images(60, 20, seed=8)
    for split_a, split_b in zip(a, b, strict=True):
        assert split_a[0].tobytes() == split_b[0].tobytes()
        np.testing.assert_array_equal(split_a[1], split_b[1])
    assert not np.array_equal(a[0][0], c[0][0]) and not np.array_equal(a[1][0], c[1][0])
    assert not np.array_equal(a[0][0][:20], a[1][0])  # train and test are different images


def test_test_set_does_not_depend_on_n_train():
    _, (x1, y1) = synthetic_images(10, 30, seed=2)
    _, (x2, y2) = synthetic_images(500, 30, seed=2)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_images_are_normalized_per_channel():
    (x, _), _ = synthetic_images(3000, 0, seed=4)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=0.05)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=0.05)
    (raw, _), _ = synthetic_images(50, 0, seed=4, normalize=False)
    assert 0.0 < raw.mean() < 1.0 and not np.allclose(raw.mean(), 0.0, atol=0.05)


def _ridge_accuracies(x_train, y_train, x_test, y_test, penalties):
    """Test accuracy of least squares to one-hot targets with an L2 penalty, per penalty (dual form)."""
    features = lambda x: np.hstack([x.reshape(len(x), -1).astype(np.float64), np.ones((len(x), 1))])
    a, b = features(x_train), features(x_test)
    gram, cross, targets = a @ a.T, b @ a.T, np.eye(10)[y_train]
    accuracies = []
    for lam in penalties:
        scores = cross @ np.linalg.solve(gram + lam * np.eye(len(a)), targets)
        accuracies.append(float(np.mean(scores.argmax(axis=1) == y_test)))
    return accuracies


def test_difficulty_linear_classifier_is_above_chance_but_far_from_perfect():
    (x, y), (xt, yt) = synthetic_images(2000, 1000, seed=0)
    accuracies = _ridge_accuracies(x, y, xt, yt, (1e2, 1e3, 1e4, 1e5))
    best = max(accuracies)  # the penalty chosen on the test set: an optimistic linear model
    assert 0.15 < best < 0.45, accuracies


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": 0}, "n_train must be"),
        ({"n_test": -1}, "n_test must be"),
        ({"size": 7}, "size must be"),
        ({"channels": 0}, "channels must be"),
        ({"num_classes": 1}, "num_classes must be"),
        ({"num_classes": 11}, "num_classes must be <= 10"),
        ({"seed": -3}, "seed must be"),
        ({"n_train": 10.0}, "n_train must be"),
    ],
)
def test_images_bad_arguments(kwargs, match):
    args = {"n_train": 10, "n_test": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        synthetic_images(**args)


# ---- class_colour: a CIFAR-like per-class tint (the quick profile's lever for the plain VGG-16's plateau) ----
def test_class_colour_adds_exactly_the_class_tint_and_changes_no_draw():
    from smoothnorm.data.synthetic import class_tints

    (plain, y), (plain_t, yt) = synthetic_images(60, 20, seed=5, scale="unit")
    (tinted, y2), (tinted_t, yt2) = synthetic_images(60, 20, seed=5, scale="unit", class_colour=0.3)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(yt, yt2)
    tints = class_tints(3)
    np.testing.assert_allclose(tinted - plain, np.broadcast_to(0.3 * tints[y][:, :, None, None], plain.shape),
                               atol=1e-6)
    np.testing.assert_allclose(tinted_t - plain_t, np.broadcast_to(0.3 * tints[yt][:, :, None, None],
                                                                   plain_t.shape), atol=1e-6)
    # zero is the default, bit for bit; the tints are unit-RMS per class and differ between classes
    np.testing.assert_array_equal(synthetic_images(30, 0, seed=5, class_colour=0.0)[0][0],
                                  synthetic_images(30, 0, seed=5)[0][0])
    np.testing.assert_allclose(np.sqrt(np.mean(tints**2, axis=1)), 1.0, rtol=1e-6)
    assert np.min(np.linalg.norm(tints[:, None] - tints[None], axis=2) + np.eye(len(tints))) > 0.1


def test_class_colour_is_normalized_away_per_channel_and_makes_mean_colour_predictive():
    (x, _), _ = synthetic_images(3000, 0, seed=4, class_colour=0.13)
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=0.05)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1.0, atol=0.05)

    def nearest_mean_colour_accuracy(colour):
        (a, ya), (b, yb) = synthetic_images(2000, 1000, seed=0, class_colour=colour)
        fa, fb = a.mean(axis=(2, 3)), b.mean(axis=(2, 3))
        centres = np.stack([fa[ya == c].mean(axis=0) for c in range(10)])
        guess = np.argmin(((fb[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
        return float(np.mean(guess == yb))

    without, tinted = nearest_mean_colour_accuracy(0.0), nearest_mean_colour_accuracy(0.13)
    assert without < 0.2 < tinted, (without, tinted)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_class_colour_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="class_colour must be a finite number >= 0"):
        synthetic_images(4, 0, class_colour=bad)
