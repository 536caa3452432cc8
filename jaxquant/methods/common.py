"""Pieces that several methods share: the student's augmented forward pass, the
classification loss, feature taps and teachers (frozen FP or EMA)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections
from flax import traverse_util

from jaxquant.data.augment import random_crop_flip
from jaxquant.methods.base import Method
from jaxquant.models import forward, split_variables
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.objectives.ema import ema_update, horizon_decay, warmup_decay


def augment(ctx, rng: jax.Array, images: jax.Array) -> jax.Array:
    """The configured training augmentation (``data.crop_padding``, ``data.flip``); the crop
    border is the normalised black of the training data (``ctx.pad_value``)."""
    data = ctx.config.data
    return random_crop_flip(rng, images, data.crop_padding, data.flip, ctx.pad_value)


def student_forward(ctx, params, state, images: jax.Array, rng: jax.Array, taps: bool = False):
    """Augment ``images`` and run the student in training mode (``rng`` feeds both the
    augmentation and the ``'noise'`` stream). Returns ``(images, logits, model_state, taps)``."""
    aug_rng, noise_rng = jax.random.split(rng)
    images = augment(ctx, aug_rng, images)
    logits, model_state, intermediates = forward(
        ctx.model, params, state.model_state, images, train=True, rng=noise_rng, taps=taps
    )
    return images, logits, model_state, intermediates


def supervised_loss_fn(ctx):
    """``CE(model(aug(x)), y)``: plain supervised training of the (quantized) model.

    Every method's ``aux['loss_terms']`` holds the weighted terms of its loss (they sum to
    it, ``ce`` among them); the train loop logs each and its gradient-norm ratio to CE."""

    def loss_fn(params, state, batch, rng):
        _, logits, model_state, _ = student_forward(ctx, params, state, batch["image"], rng)
        ce = cross_entropy(logits, batch["label"])
        metrics = {"ce": ce, "accuracy": accuracy(logits, batch["label"])}
        return ce, {"model_state": model_state, "metrics": metrics, "loss_terms": {"ce": ce}}

    return loss_fn


def conv_outputs(intermediates) -> list[jax.Array]:
    """The ``conv_out`` tap of every ``QConv``, ordered by module path (same order for a
    student and a teacher of the same architecture)."""
    flat = traverse_util.flatten_dict(intermediates)
    return [flat[path][0] for path in sorted(flat) if path[-1] == "conv_out"]


def penultimate_features(intermediates) -> jax.Array:
    """The ``features`` tap of the model: the input of its classifier."""
    return intermediates["features"][0]


def teacher_forward(model: nn.Module, variables: dict[str, Any], images: jax.Array, taps: bool = False):
    """A frozen teacher: eval mode (BatchNorm running statistics, no quantizer calibration,
    no perturbation), outputs under stop-gradient. Returns ``(logits, intermediates)``."""
    params, state = split_variables(variables)
    logits, _, intermediates = forward(model, params, state, images, train=False, taps=taps)
    return jax.lax.stop_gradient((logits, intermediates))


def ema_teacher_init(variables: dict[str, Any]) -> dict[str, Any]:
    """An EMA teacher starts as a copy of the (calibrated) student's variables."""
    return jax.tree_util.tree_map(jax.numpy.array, dict(variables))


def ema_teacher_update(teacher: dict[str, Any], params, model_state: dict[str, Any], decay: float):
    """``θ_T ← α·θ_T + (1 − α)·θ_S`` over the teacher's params (weights and quantizer steps)
    and BatchNorm statistics; fixed quantizer state (zero points) is copied."""
    student = {"params": {k: params[k] for k in teacher["params"]}}
    if "batch_stats" in teacher:
        student["batch_stats"] = model_state["batch_stats"]
    updated = ema_update({k: teacher[k] for k in student}, student, decay)
    return {**teacher, **updated}


EMA_FIELDS = {
    # [design] the EMA teacher's time constant 1/(1 − α) as a fraction of the run's steps;
    # 0: the fixed decay ``ema_decay`` instead
    "ema_horizon_fraction": 0.1,
    # [design] ... and at least this many steps: a teacher that tracks the student faster than
    # BatchNorm's running statistics (momentum 0.9: 10 steps) is evaluated on stale statistics
    # and feeds the student its own drift (seen on 12-step digits runs: KL 1.0 → 3.4)
    "ema_min_horizon": 10,
    "ema_decay": 0.999,
    "ema_warmup": True,  # Mean-Teacher warm-up α_t = min(1 − 1/(t + 1), α)
}


def check_ema_fields(opts) -> None:
    """One-line errors for the :data:`EMA_FIELDS` of a method's options."""
    if not 0.0 <= opts.ema_decay <= 1.0:
        raise ValueError(f"method.ema_decay={opts.ema_decay!r}: allowed values 0..1")
    if not opts.ema_min_horizon >= 1:
        raise ValueError(f"method.ema_min_horizon={opts.ema_min_horizon!r}: allowed numbers >= 1 (steps)")
    if not 0.0 <= opts.ema_horizon_fraction <= 1.0:
        raise ValueError(
            f"method.ema_horizon_fraction={opts.ema_horizon_fraction!r}: allowed values 0..1 "
            "(0: use method.ema_decay)"
        )


class TeacherMethod(Method):
    """A method with a teacher in ``TrainState.extra['teacher']``: the frozen FP model of
    ``config.init_from`` (never updated), or, where :meth:`ema_teacher` says so, an EMA of
    the student updated after every step with decay :meth:`ema_decay_at` (fields
    :data:`EMA_FIELDS`)."""

    needs_teacher = True

    def ema_decay(self, ctx) -> float:
        """The EMA's target decay ``α``: from ``ema_horizon_fraction`` of ``ctx.total_steps``
        and ``ema_min_horizon`` (:func:`~jaxquant.objectives.ema.horizon_decay`), or ``ema_decay``
        when the fraction is 0."""
        opts = self.options(ctx.config)
        if opts.ema_horizon_fraction > 0:
            return horizon_decay(ctx.total_steps, opts.ema_horizon_fraction, opts.ema_min_horizon)
        return float(opts.ema_decay)

    def ema_decay_at(self, ctx, step: jax.Array) -> jax.Array:
        """``α_t`` after optimiser step ``step``: the warm-up of
        :func:`~jaxquant.objectives.ema.warmup_decay` when ``ema_warmup``, else ``α``."""
        decay = self.ema_decay(ctx)
        if self.options(ctx.config).ema_warmup:
            return warmup_decay(step, decay)
        return jax.numpy.asarray(decay, jax.numpy.float32)

    def ema_teacher(self, config: ml_collections.ConfigDict) -> bool:
        return False

    def uses_teacher(self, config):
        return not self.ema_teacher(config)

    def teacher_model(self, ctx) -> nn.Module:
        """The student's (quantized) model for an EMA teacher, else the FP model."""
        return ctx.model if self.ema_teacher(ctx.config) else ctx.teacher_model

    def init_extra(self, ctx, variables, teacher_variables):
        if self.ema_teacher(ctx.config):
            return {"teacher": ema_teacher_init(variables)}
        return {"teacher": teacher_variables}

    def update_extra(self, ctx, state):
        if not self.ema_teacher(ctx.config):
            return state.extra
        decay = self.ema_decay_at(ctx, state.step)
        teacher = ema_teacher_update(state.extra["teacher"], state.params, state.model_state, decay)
        return {**state.extra, "teacher": teacher}
