"""DNQ's quantizer-matched Gaussian noise as a layer perturbation (docs/methods.md §5).

:class:`GaussianQuantNoise` plugs into ``LayerQuant.perturbation``: a ``QConv``/``QDense``
calls ``perturb_weight`` and ``perturb_input`` on its (full-precision) kernel and input.
Only in training (``train=True``) does it add noise, so evaluation and checkpoints see the
clean weights:

* weights ``W + N(0, c²·s_W²/12)``, ``s_W = sg(step)`` of the min/max quantizer of the
  *current* weights described by ``weight`` (per output channel by default);
* inputs ``x + N(0, c²·s_x²/12)`` with probability ``p`` (one draw per layer and step),
  ``s_x`` the step of the ``input`` quantizer for the running min/max of that input.

The running range lives in the ``noise_stats`` collection (``noise_stats/<layer>/input_range``),
updated in training like BatchNorm's statistics (``methods.common.forward`` makes it mutable
when ``train``) and checkpointed with the model state. A model built without the noise has
no such collection, so loading a DNQ checkpoint for PTQ simply leaves it out.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.objectives.noise import add_gaussian_rounding_noise, running_range_update, with_probability
from jaxquant.quant.layers import calibrated_step_and_zero_point
from jaxquant.quant.observers import minmax_observer
from jaxquant.quant.policy import QuantizerSpec
from jaxquant.quant.quantizers import minmax_step_and_zero_point

NOISE_STATS = "noise_stats"


class RunningRange(nn.Module):
    """Running min/max of a tensor (EMA of batch extremes, see
    :func:`~jaxquant.objectives.noise.running_range_update`); updated only when ``update``."""

    channel_axis: int | None = None
    momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, update: bool) -> tuple[jax.Array, jax.Array]:
        shape = () if self.channel_axis is None else (x.shape[self.channel_axis],)
        low = self.variable(NOISE_STATS, "min", jnp.zeros, shape, jnp.float32)
        high = self.variable(NOISE_STATS, "max", jnp.zeros, shape, jnp.float32)
        updates = self.variable(NOISE_STATS, "updates", jnp.zeros, (), jnp.int32)
        if update and not self.is_initializing():
            batch_min, batch_max = minmax_observer(jax.lax.stop_gradient(x), self.channel_axis)
            low.value, high.value = running_range_update(
                low.value, high.value, batch_min, batch_max, self.momentum, updates.value > 0
            )
            updates.value = updates.value + 1
        return low.value, high.value


@dataclasses.dataclass(frozen=True)
class GaussianQuantNoise:
    """Noise matched to the quantizers that PTQ will use on this layer.

    ``weight`` / ``input``: the target quantizers (``None``: that tensor gets no noise);
    ``p``: probability of input noise per layer and step; ``noise_scale``: the ``c`` above;
    ``momentum``: of the running input range.
    """

    weight: QuantizerSpec | None = None
    input: QuantizerSpec | None = None
    p: float = 0.5
    noise_scale: float = 1.0
    momentum: float = 0.9

    def perturb_weight(self, module: nn.Module, w: jax.Array, train: bool) -> jax.Array:
        if self.weight is None or not train:
            return w
        step, _ = calibrated_step_and_zero_point(self.weight, jax.lax.stop_gradient(w))
        return add_gaussian_rounding_noise(module.make_rng("noise"), w, step, self.noise_scale)

    def perturb_input(self, module: nn.Module, x: jax.Array, step, train: bool) -> jax.Array:
        """``step`` (of an input quantizer, if the layer has one) is not used: the noise
        always follows the PTQ target's step for the running range."""
        del step
        if self.input is None:
            return x
        spec = self.input
        channel_axis = None if spec.channel_axis is None else spec.channel_axis % x.ndim
        low, high = RunningRange(channel_axis, self.momentum, name="input_range")(x, update=train)
        if not train:
            return x
        input_step, _ = minmax_step_and_zero_point(low, high, spec.bits, spec.signed, spec.symmetric)
        noisy = add_gaussian_rounding_noise(module.make_rng("noise"), x, input_step, self.noise_scale)
        return with_probability(module.make_rng("noise"), self.p, noisy, x)
