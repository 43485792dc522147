"""The checking kit offered to users: `check_layer` for a layer they write, `check_probe` for a probe.

`check_layer(layer, input_shape)` runs six named checks on a layer inside a network of its own (shapes, backward
against finite differences, the R-pass against finite differences, probe and eval modes leave the network alone,
float32 against float64); `check_probe(probe)` runs a probe inside a short training and checks that it leaves the
training bit for bit as it found it. Both return a report, or raise AssertionError naming the first failed check.
`layer_checks` and `probe_checks` hold them, `report` the reports; this package hands on their public names.
Modules here import from smoothnorm.train, smoothnorm.nn, smoothnorm.optim, smoothnorm.kernels and
smoothnorm._validate (the kit sits on the training loop's floor); nothing else in the package imports it.
"""

from smoothnorm.testing.layer_checks import check_layer
from smoothnorm.testing.probe_checks import check_probe
from smoothnorm.testing.report import Check, CheckFailed, LayerReport, ProbeReport

__all__ = ["check_layer", "check_probe", "Check", "CheckFailed", "LayerReport", "ProbeReport"]
