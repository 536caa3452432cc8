"""``dnq``: full-precision training towards a flat minimum before PTQ (docs/methods.md §5).

The network stays in full precision (no quantizers); every conv/dense layer that PTQ will
quantize is perturbed during training with noise matched to its PTQ quantizer
(:class:`~jaxquant.quant.gaussian_noise.GaussianQuantNoise`): weights ``W + N(0, c²·s_W²/12)``
(``s_W`` the per-channel min/max step of the current weights at ``target_bits``, ``sg``),
inputs ``x + N(0, c²·s_x²/12)`` with probability ``p`` (``s_x`` from the running min/max).
The loss is the plain cross-entropy of the perturbed network. Evaluation and checkpoints use
the clean weights; afterwards run ``mode = 'ptq'`` on the run's workdir.

Fields (``config.method``; missing ones take ``DNQ.defaults``):

* ``scheme``: ``weight`` | ``activation`` | ``both`` (default) — which noise; the comparisons
  ``sam`` (SAM on the FP network, ``ρ = sam_rho``, BN statistics from the clean pass) and
  ``none`` (plain FP training);
* ``noise_scale`` ``c`` (1), ``p`` (0.5), ``target_bits`` (4);
* ``perturb_first_last`` (true): the first and last layer get noise at
  ``quant.first_last_bits`` (8, as PTQ quantizes them), else none;
* ``range_momentum`` (0.9): EMA momentum of the running input range.

The target quantizers follow ``config.quant`` (granularity, scheme) with the min/max rule,
exactly as :mod:`jaxquant.ptq` will calibrate them.
"""

from __future__ import annotations

import jax
import ml_collections

from jaxquant.checks import check_choice
from jaxquant.methods.base import METHODS, Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn
from jaxquant.methods.sam import sam_gradients
from jaxquant.quant.gaussian_noise import GaussianQuantNoise
from jaxquant.quant.policy import QuantPolicy, RolePerturbations
from jaxquant.quant.quantizers import check_bits

SCHEMES = ("weight", "activation", "both", "sam", "none")


def method_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.method`` block of a DNQ run: ``name='dnq'`` and every field's default,
    then ``overrides`` (each must be a DNQ field)."""
    block = METHODS["dnq"].default_config()
    block.update(overrides)
    METHODS["dnq"].options(ml_collections.ConfigDict({"method": block}))  # unknown fields: error
    return block


def noise_for_role(config: ml_collections.ConfigDict, fields, role: str):
    """The perturbation of a layer with ``role``, or ``None`` when it gets no noise."""
    if role != "middle" and not fields["perturb_first_last"]:
        return None
    target = policy_from_config(
        config,
        w_bits=fields["target_bits"],
        a_bits=fields["target_bits"],
        init="minmax",
        observer="minmax",
    ).layer(role)
    scheme = fields["scheme"]
    return GaussianQuantNoise(
        weight=target.weight if scheme in ("weight", "both") else None,
        input=target.input if scheme in ("activation", "both") else None,
        p=float(fields["p"]),
        noise_scale=float(fields["noise_scale"]),
        momentum=float(fields["range_momentum"]),
    )


@register_method
class DNQ(Method):
    name = "dnq"
    defaults = {
        "scheme": "both",
        "noise_scale": 1.0,
        "p": 0.5,
        "target_bits": 4,
        "perturb_first_last": True,
        "range_momentum": 0.9,
        "sam_rho": 0.05,
    }

    def validate(self, config):
        fields = self.options(config)
        check_choice(fields["scheme"], SCHEMES, "method.scheme")
        check_bits(fields["target_bits"], "method.target_bits")
        if not 0.0 <= fields["p"] <= 1.0:
            raise ValueError(f"method.p={fields['p']!r} is out of range: allowed numbers in [0, 1]")
        if fields["noise_scale"] < 0:
            raise ValueError(f"method.noise_scale={fields['noise_scale']!r} is negative: allowed >= 0")
        if not 0.0 <= fields["range_momentum"] < 1.0:
            raise ValueError(
                f"method.range_momentum={fields['range_momentum']!r} is out of range: allowed [0, 1)"
            )

    def policy(self, config):
        fields = self.options(config)
        if fields["scheme"] in ("sam", "none"):
            return QuantPolicy()
        roles = {role: noise_for_role(config, fields, role) for role in ("first", "middle", "last")}
        return QuantPolicy(perturbation=RolePerturbations(**roles))

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)

    def grads(self, ctx, loss_fn, params, state, batch, rng):
        """Plain gradients, or for ``scheme='sam'`` the gradient at ``w + ρ·g/‖g‖`` with the
        loss, metrics and BN statistics of the clean pass."""
        fields = self.options(ctx.config)
        if fields.scheme != "sam":
            return jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, rng)
        return sam_gradients(loss_fn, params, state, batch, rng, fields.sam_rho)
