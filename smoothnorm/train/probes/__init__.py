"""Probes: measurements the training loop runs on the current training batch, and `PROBES`, their registry.

`base` holds `Probe` (the interface), `StepListProbe` and `ProbeRecord` (a probe's rows); `paper` the paper's
probes; `beyond` the follow-up papers' probes (Hessian spectra, gradient explosion, gradient distributions, one
step's loss, Li et al.'s filter-normalized loss surfaces). Probes import from smoothnorm.measure, smoothnorm.nn and
smoothnorm._validate; they know no files. A spec may also name a `Probe` subclass of the user's own as its kind
(a plug-in, smoothnorm.runs.plugins), built with the spec's options as keywords and recorded like these.
"""

from __future__ import annotations

from smoothnorm.train.probes.base import Probe, ProbeRecord, StepListProbe
from smoothnorm.train.probes.beyond import (
    GradDistributionProbe,
    GradientExplosionProbe,
    OneStepLossProbe,
    SpectrumProbe,
    SurfaceProbe,
)
from smoothnorm.train.probes.paper import (
    BatchStatsGapProbe,
    DistributionProbe,
    GradNormProbe,
    HessianProbe,
    ICSProbe,
    LandscapeProbe,
    SaturationProbe,
)

__all__ = [
    "PROBES", "Probe", "ProbeRecord", "StepListProbe", "LandscapeProbe", "ICSProbe", "DistributionProbe",
    "HessianProbe", "SaturationProbe", "GradNormProbe", "BatchStatsGapProbe", "SpectrumProbe",
    "GradientExplosionProbe", "GradDistributionProbe", "OneStepLossProbe", "SurfaceProbe",
]

# A spec's probe `kind` -> the probe class.
PROBES: dict[str, type[Probe]] = {
    "landscape": LandscapeProbe,
    "ics": ICSProbe,
    "distributions": DistributionProbe,
    "hessian": HessianProbe,
    "saturation": SaturationProbe,
    "grad_norms": GradNormProbe,
    "bn_gap": BatchStatsGapProbe,
    "spectrum": SpectrumProbe,
    "gradient_explosion": GradientExplosionProbe,
    "grad_distribution": GradDistributionProbe,
    "one_step_loss": OneStepLossProbe,
    "surface": SurfaceProbe,
}
