"""Measurements of a network on one batch: landscape probes, internal covariate shift, activation distributions,
Hessian spectra and the paper's theory, each a function of (network, batch).

Every measurement runs in "probe" mode (batch statistics; running statistics, optimizer state and layer noise
untouched) and leaves the network bit-identical (params, grads, buffers). Choices the paper leaves open are
explained in docs/PROTOCOL.md ("Measurements").
"""

from smoothnorm.measure.conditioning import DENSE_MAX_PARAMS, HessianConditioning, hessian_condition_number
from smoothnorm.measure.distributions import (
    DEFAULT_QUANTILES,
    ActivationSampler,
    layer_output_shapes,
    moment_series,
    sample_units,
    stack_records,
)
from smoothnorm.measure.gradient_explosion import (
    GrowthFit,
    fit_log_growth,
    init_gradient_norms,
    large_batch_rate,
    weight_gradient_norms,
)
from smoothnorm.measure.hessian import (
    HessianOperator,
    dense_hessian,
    float64_copy,
    hessian_min_eigenvalue,
    hessian_operator,
    hessian_spectral_density,
    hessian_top_eigenvalues,
    hessian_trace,
    hessian_vector_product,
)
from smoothnorm.measure.ics import gradient_change, internal_covariate_shift, weight_layer_names
from smoothnorm.measure.landscape import (
    BETA_NORMALIZATIONS,
    INFERRED_STEP_MULTIPLIERS,
    PAPER_STEP_RANGES,
    DirectionProbe,
    probe_direction,
    probe_gradient_direction,
    probe_random_direction,
    probe_update_direction,
    random_direction,
    step_grid,
    update_direction,
)
from smoothnorm.measure.linalg import (
    SpectralDensity,
    TraceEstimate,
    hutchinson_trace,
    lanczos_tridiagonal,
    power_iteration,
    spectral_density,
    top_eigenvalues,
)
from smoothnorm.measure.loss_surface import (
    NORM_PARAM_POLICIES,
    LossSurface1D,
    LossSurface2D,
    filter_normalized_direction,
    grid_curvature,
    loss_surface_1d,
    loss_surface_2d,
    surface_directions,
)
from smoothnorm.measure.spectrum import HessianSpectrum, gradient_share, hessian_spectrum, top_eigenpairs
from smoothnorm.measure.stability import (
    GradientStatistics,
    OneStepLoss,
    excess_kurtosis,
    gradient_statistics,
    one_step_relative_loss,
)
from smoothnorm.measure.theory import (
    Theorem41,
    Theorem42,
    lemma_4_5_toy,
    theorem_4_1,
    theorem_4_1_network,
    theorem_4_2,
    theorem_4_2_toy,
)

__all__ = [
    # landscape
    "PAPER_STEP_RANGES", "INFERRED_STEP_MULTIPLIERS", "BETA_NORMALIZATIONS", "NORM_PARAM_POLICIES",
    "DirectionProbe", "LossSurface1D", "LossSurface2D", "step_grid", "probe_gradient_direction", "probe_direction",
    "probe_random_direction", "probe_update_direction", "update_direction", "random_direction",
    "filter_normalized_direction", "loss_surface_1d",
    "loss_surface_2d", "surface_directions", "grid_curvature",
    # ics
    "internal_covariate_shift", "weight_layer_names", "gradient_change",
    # distributions
    "DEFAULT_QUANTILES", "ActivationSampler", "layer_output_shapes", "sample_units", "stack_records",
    "moment_series",
    # hessian
    "HessianOperator", "hessian_operator", "hessian_vector_product", "dense_hessian", "float64_copy",
    "hessian_top_eigenvalues", "hessian_min_eigenvalue", "hessian_trace", "hessian_spectral_density",
    "top_eigenvalues", "power_iteration", "lanczos_tridiagonal", "hutchinson_trace", "spectral_density",
    "TraceEstimate", "SpectralDensity",
    # conditioning
    "DENSE_MAX_PARAMS", "HessianConditioning", "hessian_condition_number",
    # spectrum (Hessian outliers)
    "HessianSpectrum", "hessian_spectrum", "top_eigenpairs", "gradient_share",
    # stability (largest stable learning rate)
    "GradientStatistics", "OneStepLoss", "gradient_statistics", "one_step_relative_loss", "excess_kurtosis",
    # gradient explosion at initialization (Yang et al. 2019)
    "GrowthFit", "weight_gradient_norms", "fit_log_growth", "init_gradient_norms", "large_batch_rate",
    # theory
    "Theorem41", "Theorem42", "theorem_4_1", "theorem_4_1_network", "theorem_4_2", "theorem_4_2_toy",
    "lemma_4_5_toy",
]
