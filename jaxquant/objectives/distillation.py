"""Distillation terms: logit KD (Hinton et al.) and FPQ's channel-standardized distillation.

The teacher side of every term is under stop-gradient: only the student is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxquant.checks import check_choice


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``, averaged over the batch, ``t`` under ``sg``.

    ``KL(p ‖ q) = Σ_c p_c (log p_c − log q_c)`` over the classes; ``τ²`` keeps the gradient
    scale independent of the temperature (Hinton et al. 2015).
    """
    teacher = jax.lax.stop_gradient(teacher_logits) / temperature
    log_p_teacher = jax.nn.log_softmax(teacher, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return temperature**2 * jnp.mean(kl)


def channel_standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """``Norm(z) = (z − μ)/sqrt(σ² + ε)`` per channel (last axis).

    ``μ`` and ``σ²`` (biased variance) are taken over every other axis: (batch, H, W) for a
    conv output, the batch for a feature vector.
    """
    axes = tuple(range(z.ndim - 1))
    mean = jnp.mean(z, axis=axes, keepdims=True)
    var = jnp.var(z, axis=axes, keepdims=True)
    return (z - mean) / jnp.sqrt(var + eps)


CSD_REDUCTIONS = ("batch", "elements")


def csd_loss(
    student_maps: Sequence[jax.Array],
    teacher_maps: Sequence[jax.Array],
    eps: float = 1e-5,
    reduction: str = "elements",
):
    """FPQ's channel-wise standardization distillation (docs/methods.md §2):

    ``L_CSD = Σ_l (1/D_l) Σ_c ‖Norm(z_t^l)_c − Norm(z_s^l)_c‖²``

    over the conv outputs ``z^l`` (NHWC) of student and teacher, layer by layer, with
    :func:`channel_standardize`; ``‖.‖²`` sums over (batch, H, W) and the teacher side is
    under ``sg``. ``reduction='elements'``: ``D_l = B·H_l·W_l``, a per-element mean that does
    not grow with the feature-map size; ``'batch'``: ``D_l = B``, the batch size (the
    reading of docs/methods.md §2 as the paper states it, whose gradients are ``H·W`` times larger).
    """
    check_choice(reduction, CSD_REDUCTIONS, "method.csd_reduction")
    if len(student_maps) != len(teacher_maps):
        raise ValueError(
            f"CSD needs one teacher map per student map: got {len(student_maps)} and {len(teacher_maps)}"
        )
    total = jnp.zeros(())
    for student, teacher in zip(student_maps, teacher_maps, strict=True):
        target = channel_standardize(jax.lax.stop_gradient(teacher), eps)
        per_sample = jnp.sum((target - channel_standardize(student, eps)) ** 2) / student.shape[0]
        total = total + (per_sample if reduction == "batch" else per_sample / math.prod(student.shape[1:-1]))
    return total
