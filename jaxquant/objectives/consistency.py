"""CR's consistency terms and their ramped weight (docs/methods.md §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.objectives.distillation import channel_standardize, kd_loss


def consistency_kl(student_logits_view1: jax.Array, teacher_logits_view2: jax.Array, temperature=1.0):
    """``τ²·KL(softmax(T(A2 x)/τ) ‖ softmax(S(A1 x)/τ))``: :func:`kd_loss` between the student
    on view 1 and the teacher on view 2 (teacher under ``sg``)."""
    return kd_loss(student_logits_view1, teacher_logits_view2, temperature)


def feature_consistency(student_features: jax.Array, teacher_features: jax.Array, eps: float = 1e-5):
    """``mean((Norm(f_T) − Norm(f_S))²)``: MSE of penultimate features, each standardized per
    feature over the batch (:func:`channel_standardize`), teacher under ``sg``."""
    target = channel_standardize(jax.lax.stop_gradient(teacher_features), eps)
    return jnp.mean((target - channel_standardize(student_features, eps)) ** 2)


def ramp_weight(step: jax.Array, max_weight: float, ramp_steps: int) -> jax.Array:
    """``λ(t) = λ_max·exp(−5(1 − t/T)²)`` for ``t < T``, then ``λ_max`` (``T = ramp_steps``;
    ``T = 0`` means no ramp)."""
    if ramp_steps <= 0:
        return jnp.asarray(max_weight, jnp.float32)
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / ramp_steps, 0.0, 1.0)
    return max_weight * jnp.exp(-5.0 * (1.0 - progress) ** 2)
