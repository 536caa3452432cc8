"""Flatness measurements: pure functions of ``(loss_fn, params, data)``.

* :mod:`~jaxquant.curvature.hvp`: Hessian-vector products (forward-over-reverse), parameter
  selection (whole model, layers, quantizer steps), the eval-mode loss of a trained model;
* :mod:`~jaxquant.curvature.hutchinson`: Hessian trace, global and per layer;
* :mod:`~jaxquant.curvature.eigen`: top eigenvalues (Lanczos);
* :mod:`~jaxquant.curvature.density`: spectral density (stochastic Lanczos quadrature);
* :mod:`~jaxquant.curvature.landscape`: 1D/2D loss slices, checkpoint interpolation.
"""

from jaxquant.curvature.density import SpectralDensity, spectral_density
from jaxquant.curvature.eigen import Eigenvalues, top_eigenvalues
from jaxquant.curvature.hutchinson import TraceEstimate, hutchinson_trace, rademacher_like
from jaxquant.curvature.hvp import (
    hvp,
    jitted_hvp,
    layer_name,
    model_loss,
    model_objective,
    partition,
    selection_predicate,
)
from jaxquant.curvature.landscape import (
    checkpoint_line,
    filter_normalized_direction,
    interpolate,
    slice_1d,
    slice_2d,
)

__all__ = [
    "Eigenvalues",
    "SpectralDensity",
    "TraceEstimate",
    "checkpoint_line",
    "filter_normalized_direction",
    "hutchinson_trace",
    "hvp",
    "interpolate",
    "jitted_hvp",
    "layer_name",
    "model_loss",
    "model_objective",
    "partition",
    "rademacher_like",
    "selection_predicate",
    "slice_1d",
    "slice_2d",
    "spectral_density",
    "top_eigenvalues",
]
