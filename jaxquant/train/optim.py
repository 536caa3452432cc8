"""Optimiser and learning-rate schedule from ``config.optim``."""

from __future__ import annotations

import jax
import ml_collections
import optax

from jaxquant.quant.policy import check_choice

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up for ``warmup_steps``, then cosine decay to 0 (or constant)."""
    check_choice(optim.schedule, SCHEDULES, "optim.schedule")
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    if optim.schedule == "constant":
        main = optax.constant_schedule(optim.learning_rate)
    else:
        main = optax.cosine_decay_schedule(optim.learning_rate, max(total_steps - warmup, 1))
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(0.0, optim.learning_rate, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def decay_mask(params):
    """Weight decay applies to conv/dense ``kernel`` leaves only (not BN, biases, steps)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
    """SGD with momentum (group protocol) or Adam(W), with masked weight decay."""
    check_choice(optim.name, OPTIMIZERS, "optim.name")
    schedule = learning_rate_schedule(optim, total_steps)
    if optim.name == "sgd":
        base = optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov)
    elif optim.name == "adam":
        base = optax.adam(schedule)
    else:
        base = optax.adamw(schedule, weight_decay=0.0)
    parts = []
    if optim.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.weight_decay:
        parts.append(optax.add_decayed_weights(optim.weight_decay, mask=decay_mask))
    return optax.chain(*parts, base), schedule
