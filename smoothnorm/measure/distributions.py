"""Distributions of sampled activations over training (Figs 1c, 2, 6, 8, 9).

"We sample random activations from any given layer ... plot its distribution over the batch dimension for fully
connected layers, and over the batch, height, width dimension for convolutional layers" (App. A.2.1). A unit is a
channel of a layer's output: its values over the batch (and H, W) form one distribution per step. The units are
drawn once, so every step looks at the same ones. Outputs are taken in probe mode (nothing in the network changes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_QUANTILES",
    "layer_output_shapes",
    "sample_units",
    "ActivationSampler",
    "stack_records",
    "moment_series",
]

DEFAULT_QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def layer_output_shapes(net) -> dict[str, tuple[int, ...]]:
    """Per-sample output shape of every layer, by name: (C,) for fully connected outputs, (C, H, W) for conv."""
    shapes = {}
    shape = net.input_shape
    for layer in net.layers:
        shape = layer.output_shape(shape)
        shapes[layer.name] = tuple(shape)
    return shapes


def sample_units(
    net, layers: Sequence[str], units_per_layer: int | Mapping[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Draw, without replacement, the channels (units) to follow in each layer's output: {name: sorted indices}.

    units_per_layer: one count for all layers or {name: count}; a layer with fewer channels gives all of them.
    Layers are drawn in the order given, so the same rng state gives the same units.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(layers, str):
        layers = [layers]
    shapes = layer_output_shapes(net)
    unknown = [name for name in layers if name not in shapes]
    if unknown:
        raise ValueError(f"layers: unknown layer names {unknown}; expected names from {list(shapes)}")
    units = {}
    for name in layers:
        count = units_per_layer[name] if isinstance(units_per_layer, Mapping) else units_per_layer
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"units_per_layer: expected a positive integer for {name!r}, got {count!r}")
        channels = shapes[name][0]
        units[name] = np.sort(rng.choice(channels, size=min(int(count), channels), replace=False)).astype(np.int64)
    return units


class ActivationSampler:
    """Follows a fixed random sample of units in chosen layers and summarizes their distributions at each call.

    net: the network; layers: names of layers whose outputs are sampled (any layer: a conv, its BatchNorm, the ReLU
    after it); units_per_layer: int or {name: int}; rng: draws the units once, here.
    quantiles: levels in [0, 1]. bins: histogram bins. bin_range: None (each unit's finite min..max at that step)
        or (low, high) for every unit and step (comparable histograms across steps).
    keep_values: also return every value of every sampled unit (float32; large for conv layers).
    """

    def __init__(
        self,
        net,
        layers: Sequence[str],
        units_per_layer: int | Mapping[str, int],
        rng: np.random.Generator,
        *,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        bins: int = 50,
        bin_range: tuple[float, float] | None = None,
        keep_values: bool = False,
    ) -> None:
        self.net = net
        self.units = sample_units(net, layers, units_per_layer, rng)
        self.layers = list(self.units)
        levels = np.asarray(quantiles, dtype=np.float64)
        if levels.ndim != 1 or not ((levels >= 0) & (levels <= 1)).all():
            raise ValueError(f"quantiles: expected a 1-D sequence of levels in [0, 1], got {quantiles!r}")
        self.quantile_levels = levels
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins: expected a positive integer, got {bins!r}")
        self.bins = int(bins)
        if bin_range is not None:
            low, high = (float(v) for v in bin_range)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"bin_range: expected finite (low, high) with low < high, got {bin_range!r}")
            bin_range = (low, high)
        self.bin_range = bin_range
        self.keep_values = bool(keep_values)

    def unit_values(self, x) -> dict[str, np.ndarray]:
        """{layer: (units, values)} float64: each sampled unit's values over the batch (and H, W) on batch x."""
        self.net.forward(x, mode="probe", capture=self.layers)
        values = {}
        for name, units in self.units.items():
            out = self.net.captured[name]
            picked = out[:, units]  # (N, k) or (N, k, H, W)
            values[name] = np.moveaxis(picked, 1, 0).reshape(units.size, -1).astype(np.float64)
        return values

    def record(self, x) -> dict[str, dict[str, np.ndarray]]:
        """Summaries of each sampled unit on batch x (probe mode): {layer: {key: array}} with keys

        units (k,), mean (k,), var (k,) (biased, over the batch and H, W), quantile_levels (q,), quantiles (k, q),
        counts (k, bins) int64 and edges (k, bins + 1) of the histogram of finite values, nonfinite (k,) counts of
        NaN/Inf values, and values (k, m) float32 when keep_values. NaN/Inf propagate into mean, var, quantiles.
        """
        summaries = {}
        with np.errstate(all="ignore"):
            for name, values in self.unit_values(x).items():
                summaries[name] = self._summarize(self.units[name], values)
        return summaries

    def _summarize(self, units: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
        k = units.size
        counts = np.zeros((k, self.bins), dtype=np.int64)
        edges = np.empty((k, self.bins + 1))
        nonfinite = np.zeros(k, dtype=np.int64)
        for u in range(k):
            row = values[u]
            finite = row[np.isfinite(row)]
            nonfinite[u] = row.size - finite.size
            span = self.bin_range
            if span is None:
                span = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
                if span[0] == span[1]:
                    span = (span[0] - 0.5, span[1] + 0.5)
            counts[u], edges[u] = np.histogram(finite, bins=self.bins, range=span)
        summary = {
            "units": units.copy(),
            "mean": values.mean(axis=1),
            "var": values.var(axis=1),
            "quantile_levels": self.quantile_levels.copy(),
            "quantiles": np.quantile(values, self.quantile_levels, axis=1).T.copy(),
            "counts": counts,
            "edges": edges,
            "nonfinite": nonfinite,
        }
        if self.keep_values:
            summary["values"] = values.astype(np.float32)
        return summary


def stack_records(records: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Stack per-step `ActivationSampler.record` outputs along a new first axis: {layer: {key: (steps, ...)}}.

    `units` and `quantile_levels`, the same at every step, are kept once.
    """
    if not records:
        raise ValueError("records: expected at least one record")
    stacked: dict[str, dict[str, np.ndarray]] = {}
    for name in records[0]:
        stacked[name] = {}
        for key in records[0][name]:
            if key in ("units", "quantile_levels"):
                stacked[name][key] = np.asarray(records[0][name][key]).copy()
            else:
                stacked[name][key] = np.stack([np.asarray(r[name][key]) for r in records])
    return stacked


def moment_series(means, variances) -> dict[str, np.ndarray]:
    """Fig 8's series from per-step means and variances of sampled units (App. A.2.1, Fig 8a, 8b).

    means, variances: (steps, units), rows in step order (e.g. `stack_records(...)[layer]["mean"]`).
    Returns abs_mean_change |mu_{t+1} - mu_t| and abs_var_change |var_{t+1} - var_t| of shape (steps - 1, units),
    and mean_drift mu_t - mu_0 and var_drift var_t - var_0 of shape (steps, units), all float64.
    """
    mu = np.asarray(means, dtype=np.float64)
    var = np.asarray(variances, dtype=np.float64)
    if mu.ndim == 1:
        mu = mu[:, None]
    if var.ndim == 1:
        var = var[:, None]
    if mu.ndim != 2 or mu.shape != var.shape or mu.shape[0] < 1:
        raise ValueError(
            f"means, variances: expected two (steps, units) arrays of one shape, got {np.shape(means)} and "
            f"{np.shape(variances)}"
        )
    with np.errstate(all="ignore"):
        return {
            "abs_mean_change": np.abs(np.diff(mu, axis=0)),
            "abs_var_change": np.abs(np.diff(var, axis=0)),
            "mean_drift": mu - mu[0],
            "var_drift": var - var[0],
        }
