"""Perturbation objects for the layer hook of :class:`~jaxquant.quant.policy.LayerQuant`.

A perturbation has ``perturb_input(module, x, step, train)`` and
``perturb_weight(module, w, train)``; ``QConv``/``QDense`` call them after (or, for
``position='before_quant'``, before) fake-quantizing. The maths is in
:mod:`jaxquant.objectives.feature_noise`.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxquant.checks import check_choice
from jaxquant.objectives.feature_noise import NOISE_GRANULARITIES, uniform_feature_noise
from jaxquant.quant.layers import QConv

NOISE_POSITIONS = ("after_quant", "before_quant")


@dataclasses.dataclass(frozen=True)
class FeatureNoise:
    """FPQ's SFP: with probability ``p``, add ``U[−s/2, s/2]`` to the input of each conv
    (``s`` the step of that input's quantizer), in training only; weights untouched.

    ``position='after_quant'`` perturbs the fake-quantized input, ``'before_quant'`` the
    input before its quantizer. Draws come from the ``'noise'`` rng stream.
    """

    p: float = 0.1
    granularity: str = "layer"
    position: str = "after_quant"

    def __post_init__(self):
        check_choice(self.granularity, NOISE_GRANULARITIES, "method.granularity")
        check_choice(self.position, NOISE_POSITIONS, "method.position")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"method.p={self.p!r} is a probability: allowed values 0..1")

    def perturb_input(self, module, x: jax.Array, step: jax.Array | None, train: bool) -> jax.Array:
        if not train or step is None or not isinstance(module, QConv):
            return x
        return uniform_feature_noise(module.make_rng("noise"), x, step, self.p, self.granularity)

    def perturb_weight(self, module, w: jax.Array, train: bool) -> jax.Array:
        return w
