"""``sam``: LSQ quantization-aware training with Sharpness-Aware Minimization (Foret et al. 2021).

One train step:

1. clean pass: ``(L(w), g) = value_and_grad(L)(w)``; its BatchNorm statistics are kept;
2. ascent: ``ŵ = w + ρ·g/‖g‖`` over all trained parameters (weights, BN affine, quantizer
   steps), ``‖.‖`` the global L2 norm, ``ρ = method.rho`` (0.05);
3. the returned gradient is ``∇L(ŵ)`` on the same batch and augmentation; the optimiser
   applies it to the unperturbed ``w``. The perturbed pass' BN statistics are dropped.

Why not ``optax.contrib.sam``: in its default (transparent) mode the ascent is a separate
optimiser update, i.e. every second train step is an adversarial one whose BN statistics,
step counter, learning-rate schedule and checkpoints would all see the perturbed weights;
its opaque mode does both passes inside ``tx.update`` but needs a ``grad_fn`` passed to
``update`` (the train step would then have to know it runs SAM) and cannot return the clean
pass' BN statistics. Overriding :meth:`Method.grads` keeps one jitted step per update and a
method-agnostic train step.
"""

from __future__ import annotations

import jax

from jaxquant.methods.base import Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn
from jaxquant.objectives.noise import sam_weight_perturbation


def sam_gradients(loss_fn, params, state, batch, rng, rho: float):
    """``((L(w), aux(w)), ∇L(w + ρ·g/‖g‖))`` with ``g = ∇L(w)``; aux (BN state) from ``w``."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(params, state, batch, rng)
    perturbed = sam_weight_perturbation(params, grads, rho)
    (perturbed_loss, _), perturbed_grads = grad_fn(perturbed, state, batch, rng)
    aux = {**aux, "metrics": {**aux["metrics"], "perturbed_loss": perturbed_loss}}
    return (loss, aux), perturbed_grads


@register_method
class SAM(Method):
    name = "sam"
    defaults = {"rho": 0.05}  # radius of the weight perturbation ρ·g/‖g‖

    def validate(self, config):
        rho = self.options(config).rho
        if not rho > 0:
            raise ValueError(f"method.rho={rho!r} is not allowed: it must be > 0")

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq")

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)

    def grads(self, ctx, loss_fn, params, state, batch, rng):
        return sam_gradients(loss_fn, params, state, batch, rng, self.options(ctx.config).rho)
