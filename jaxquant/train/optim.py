"""Optimiser and learning-rate schedule from ``config.optim``."""

from __future__ import annotations

import jax
import ml_collections
import optax

from jaxquant.checks import check_choice

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


def check_optim(optim: ml_collections.ConfigDict) -> None:
    """Refuse, with one line naming the field, values that cannot train: a learning rate that
    is not positive, momentum outside [0, 1), negative weight decay, warm-up or clip norm."""
    check_choice(optim.name, OPTIMIZERS, "optim.name")
    if not optim.learning_rate > 0:
        raise ValueError(f"optim.learning_rate={optim.learning_rate!r} must be > 0")
    if not 0.0 <= optim.momentum < 1.0:
        raise ValueError(f"optim.momentum={optim.momentum!r} is out of range: allowed [0, 1)")
    for field in ("weight_decay", "warmup_steps", "grad_clip_norm"):
        if optim[field] < 0:
            raise ValueError(f"optim.{field}={optim[field]!r} is negative: allowed >= 0")


def create_optimizer(optim: ml_collections.ConfigDict, total_steps: int):
    """SGD with momentum (group protocol) or Adam(W), with masked weight decay."""
    check_optim(optim)
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
