"""The checking kit (smoothnorm.testing): the package's own layers and probes pass it, and broken copies of them fail
with the right check named."""

import numpy as np
import pytest

from smoothnorm import nn
from smoothnorm.nn import models
from smoothnorm.nn.norms import NORM_LAYERS
from smoothnorm.testing import CheckFailed, check_layer, check_probe
from smoothnorm.train.probes.base import Probe
from smoothnorm.train.probes.paper import GradNormProbe, ICSProbe, LandscapeProbe

IMAGE = (4, 5, 5)
FLAT = (6,)
# Options that keep every group larger than one value on these shapes (GroupNorm's default is 32 groups).
NORM_OPTIONS = {"group": {"groups": 2}}


def population_batch_norm():
    layer = nn.BatchNorm(4, statistics="population")
    layer.set_population_statistics(np.linspace(-0.5, 0.5, 4), np.linspace(0.5, 2.0, 4), count=150)
    return layer


def norm_layer(name, shape):
    return lambda: NORM_LAYERS[name](shape[0], **NORM_OPTIONS.get(name, {}))


LAYER_CASES = [
    *((f"{name}-{len(shape)}d", norm_layer(name, shape), shape)
      for name in NORM_LAYERS for shape in (IMAGE, FLAT) if not (name == "instance" and shape == FLAT)),
    ("noisy_batch-before_affine", lambda: nn.NoisyBatchNorm(4, placement="before_affine"), IMAGE),
    ("batch-population", population_batch_norm, IMAGE),
    ("linear", lambda: nn.Linear(6, 5), FLAT),
    ("conv2d", lambda: nn.Conv2d(4, 3), IMAGE),
    ("relu", nn.ReLU, IMAGE),
    ("maxpool2d", nn.MaxPool2d, IMAGE),
    ("sigmoid", nn.Sigmoid, IMAGE),
    ("tanh", nn.Tanh, FLAT),
    ("identity", nn.Identity, FLAT),
    ("flatten", nn.Flatten, IMAGE),
]


@pytest.mark.parametrize("make,input_shape", [case[1:] for case in LAYER_CASES], ids=[case[0] for case in LAYER_CASES])
def test_package_layers_pass(make, input_shape):
    report = check_layer(make(), input_shape)
    assert [c.name for c in report.checks] == ["shapes", "backward", "r_pass", "probe_mode", "eval_mode", "dtypes"]
    assert all(c.status == "passed" for c in report.checks), str(report)
    assert report["backward"].worst_relative_error < 1e-8  # far inside the tolerance: the check has room
    assert report["dtypes"].worst_relative_error < 1e-5


def test_every_norm_layer_is_covered():
    assert {case[0].split("-")[0] for case in LAYER_CASES} >= set(NORM_LAYERS)


def test_float32_network_and_caller_layer_untouched():
    layer = nn.BatchNorm(4)
    report = check_layer(layer, IMAGE, dtype=np.float32, seed=3)
    assert report.passed and "float32" in report.subject
    assert layer.name == "" and layer.params == {} and layer.running_mean is None  # the kit worked on copies


# ---------------------------------------------------------------------------------------------------------------
# Broken layers are caught, with the check named


class GradientTooLarge(nn.BatchNorm):
    def backward(self, dy, need_dx=True):
        return 1.1 * super().backward(dy, need_dx)


class RForwardOff(nn.BatchNorm):
    def forward_r(self, rx, rparams):
        return 1.01 * super().forward_r(rx, rparams)


class ProbeUpdatesRunningMean(nn.BatchNorm):
    def forward(self, x, mode):
        y = super().forward(x, mode)
        if mode == "probe":
            self.running_mean += 0.1 * (x.mean(axis=(0, 2, 3)) - self.running_mean)
        return y


class WeightGradientLostWithoutDx(nn.Linear):
    """Right gradients, except that backward(need_dx=False), a network's first layer, forgets the weight's."""

    def backward(self, dy, need_dx=True):
        dx = super().backward(dy, need_dx)
        if not need_dx:
            self.grads["weight"][...] = 0
        return dx


class BiasGradientUnwritten(nn.Linear):
    def backward(self, dy, need_dx=True):
        bias = self.grads["bias"].copy()
        dx = super().backward(dy, need_dx)
        self.grads["bias"][...] = bias
        return dx


class RebindsWeight(nn.Linear):
    def init_params(self, rng, init):
        super().init_params(rng, init)
        self.params["weight"] = self.params["weight"].copy()  # no longer a view of the network's vector


class EvalDrawsNoise(nn.Tanh):
    def forward(self, x, mode):
        y = super().forward(x, mode)
        return y + np.random.default_rng().normal(0, 1e-3, y.shape) if mode == "eval" else y


@pytest.mark.parametrize("layer,input_shape,failed,message", [
    (GradientTooLarge(4), IMAGE, "backward",
     r"^backward: dx wrong by \S+ relative at \d+ of \d+ comparisons \(worst at index \(\d+, \d+, \d+, \d+\)\)"),
    (WeightGradientLostWithoutDx(6, 5), FLAT, "backward", r"^backward: grads with need_dx=False wrong by 1\.0e\+00"),
    (RForwardOff(4), IMAGE, "r_pass", r"^r_pass: forward_r wrong by 9\.9e-03 relative"),
    (ProbeUpdatesRunningMean(4), IMAGE, "probe_mode",
     r"^probe_mode: forward in 'probe' mode changed buffer 'running_mean'"),
    (EvalDrawsNoise(), FLAT, "eval_mode", r"^eval_mode: two forwards in 'eval' mode on one batch gave different"),
    (BiasGradientUnwritten(6, 5), FLAT, "shapes", r"^shapes: backward left grads\['bias'\] unwritten"),
    (RebindsWeight(6, 5), FLAT, "shapes", r"^shapes: params\['weight'\] is not the network's view"),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Layer) else None)
def test_broken_layer_fails_the_named_check(layer, input_shape, failed, message):
    with pytest.raises(AssertionError, match=message) as excinfo:
        check_layer(layer, input_shape)
    report = excinfo.value.report
    assert isinstance(excinfo.value, CheckFailed) and report.failures()[0].name == failed
    assert str(report) in str(excinfo.value)  # the message carries the whole report
    assert report["shapes"].passed or failed == "shapes"


class Zigzag(nn.Layer):
    """y = x + |(1000 x mod 2) - 1| / 2000: slopes 1/2 and 3/2 with a kink every 0.001, so finite differences
    cross kinks often."""

    slope_error = 1.0

    def _slope(self):
        one = self._x.dtype.type(1)
        return np.where((self._x * 1000) % 2 < 1, one / 2, 3 * one / 2).astype(self._x.dtype) * self.slope_error

    def forward(self, x, mode):
        self._x = x
        return x + np.abs((x * 1000) % 2 - 1) / x.dtype.type(2000)

    def backward(self, dy, need_dx=True):
        return dy * self._slope()

    def forward_r(self, rx, rparams):
        return None if rx is None else rx * self._slope()

    def backward_r(self, dy, rdy, rgrads, need_dx=True):
        return (dy * self._slope(), rdy * self._slope()) if need_dx else (None, None)


class ZigzagSlopeOff(Zigzag):
    slope_error = 1.0 + 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_kinks_are_skipped_and_reported_but_wrong_slopes_are_not(seed):
    report = check_layer(Zigzag(), IMAGE, seed=seed)
    assert "kink" in report["backward"].detail and "kink" in report["r_pass"].detail
    with pytest.raises(AssertionError, match=r"^backward: dx wrong by \S+ relative") as excinfo:
        check_layer(ZigzagSlopeOff(), IMAGE, seed=seed)
    assert excinfo.value.report["backward"].worst_relative_error > 2e-6


def test_layer_without_r_pass_skips_that_check():
    class NoRPass(nn.Layer):
        def forward(self, x, mode):
            return 2 * x

        def backward(self, dy, need_dx=True):
            return 2 * dy

    report = check_layer(NoRPass(), FLAT)
    assert report["r_pass"].status == "skipped" and report.passed
    assert "r_pass" in str(report) and "skipped" in str(report)


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="layer: expected a smoothnorm.nn.Layer, got str"):
        check_layer("relu", FLAT)
    with pytest.raises(TypeError, match="input_shape: expected a tuple"):
        check_layer(nn.ReLU(), 6)
    with pytest.raises(ValueError, match="input_shape: expected a non-empty tuple of positive ints"):
        check_layer(nn.ReLU(), (4, 0))
    with pytest.raises(ValueError, match="input_shape: expected a non-empty tuple of positive ints"):
        check_layer(nn.ReLU(), (4.0,))
    with pytest.raises(ValueError, match=r"input_shape: Linear rejects \(7,\)"):
        check_layer(nn.Linear(6, 5), (7,))
    with pytest.raises(ValueError, match="dtype"):
        check_layer(nn.ReLU(), FLAT, dtype=np.int32)
    with pytest.raises(ValueError, match="rtol"):
        check_layer(nn.ReLU(), FLAT, rtol=0)
    with pytest.raises(TypeError, match="probe: expected a smoothnorm.train.probes.base.Probe, got str"):
        check_probe("landscape")
    with pytest.raises(ValueError, match="steps: expected an integer >= 2"):
        check_probe(GradNormProbe("grad_norms", 1), steps=1)
    with pytest.raises(TypeError, match="net: expected a smoothnorm Network"):
        check_probe(GradNormProbe("grad_norms", 1), net=object())


# ---------------------------------------------------------------------------------------------------------------
# Probes


@pytest.mark.parametrize("probe,net", [
    (LandscapeProbe("landscape", 1, preset="dln"), None),
    (LandscapeProbe("landscape", 1, preset="dln"), models.dln(3, 4, in_dim=3, out_dim=2, norm="batch")),
    (ICSProbe("ics", 1), None),
    (GradNormProbe("grad_norms", 1), None),
], ids=["landscape-mlp", "landscape-dln", "ics", "grad_norms"])
def test_paper_probes_pass(probe, net):
    report = check_probe(probe, net=net, steps=2)
    assert report.passed, str(report)
    assert [c.name for c in report.checks] == ["runs", "params", "grads", "buffers", "optimizer", "rows",
                                               "same_training"]
    assert "[0, 1]" in report["runs"].detail


class PerturbsParams(Probe):
    def measure(self, trainer, x, y, grad, loss):
        trainer.net.params += trainer.net.params.dtype.type(1e-3)
        return {"loss": np.float64(loss)}


class ScalesGradArgument(Probe):
    def measure(self, trainer, x, y, grad, loss):
        grad *= 2
        return {"grad_norm": np.float64(np.linalg.norm(grad))}


class GrowingRows(Probe):
    def measure(self, trainer, x, y, grad, loss):
        return {"history": np.zeros(trainer.step + 1)}


class ReturnsAView(Probe):
    def measure(self, trainer, x, y, grad, loss):
        return {"first_weights": trainer.net.params[:3]}


@pytest.mark.parametrize("probe,failed,message", [
    (PerturbsParams("perturbs", 1), "params", r"^params: measure changed net.params \(first at step 0"),
    (ScalesGradArgument("scales", 1), "grads", r"^grads: measure changed the grad argument"),
    (GrowingRows("growing", 1), "rows", r"^rows: row\['history'\] is float64 \(2,\) at step 1 but float64 \(1,\)"),
    (ReturnsAView("view", 1), "rows", r"^rows: row\['first_weights'\] of step 0 changed after measure returned"),
], ids=["params", "grads", "rows-shape", "rows-view"])
def test_broken_probe_fails_the_named_check(probe, failed, message):
    with pytest.raises(AssertionError, match=message) as excinfo:
        check_probe(probe)
    assert excinfo.value.report.failures()[0].name == failed


def test_probe_that_raises_fails_runs():
    class Raises(Probe):
        def measure(self, trainer, x, y, grad, loss):
            raise RuntimeError("no such layer")

    class SetupRaises(Probe):
        def setup(self, trainer):
            raise ValueError("needs a deeper network")

    with pytest.raises(AssertionError, match=r"^runs: at step 0: raised RuntimeError: no such layer") as excinfo:
        check_probe(Raises("raises", 1))
    assert excinfo.value.report["same_training"].status == "skipped"
    with pytest.raises(AssertionError, match=r"^runs: at setup: raised ValueError: needs a deeper network"):
        check_probe(SetupRaises("setup_raises", 1))
