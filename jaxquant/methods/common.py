"""Pieces that several methods share: the forward pass and the classification loss."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import ml_collections

from jaxquant.data.augment import random_crop_flip
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.quant.gaussian_noise import NOISE_STATS


def forward(
    model: nn.Module,
    params,
    model_state: dict[str, Any],
    images: jax.Array,
    train: bool,
    rng: jax.Array | None = None,
    taps: bool = False,
):
    """Apply ``model``; return ``(logits, new_model_state, intermediates)``.

    In training mode BatchNorm uses and updates batch statistics, and perturbations update
    their running statistics (``noise_stats``); ``taps=True`` collects the sown feature taps
    (``conv_out`` per conv, ``features`` before the head).
    """
    variables = {"params": params, **model_state}
    mutable = ["batch_stats", NOISE_STATS] if train else []
    if taps:
        mutable.append("intermediates")
    rngs = {"noise": rng} if rng is not None else {}
    logits, updates = model.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
    updates = dict(updates)
    intermediates = updates.pop("intermediates", {})
    return logits, {**model_state, **updates}, intermediates


def augment(config: ml_collections.ConfigDict, rng: jax.Array, images: jax.Array) -> jax.Array:
    """The configured training augmentation (``data.crop_padding``, ``data.flip``)."""
    return random_crop_flip(rng, images, config.data.crop_padding, config.data.flip)


def supervised_loss_fn(ctx):
    """``CE(model(aug(x)), y)``: plain supervised training of the (quantized) model."""

    def loss_fn(params, state, batch, rng):
        aug_rng, noise_rng = jax.random.split(rng)
        images = augment(ctx.config, aug_rng, batch["image"])
        logits, model_state, _ = forward(
            ctx.model, params, state.model_state, images, train=True, rng=noise_rng
        )
        ce = cross_entropy(logits, batch["label"])
        metrics = {"ce": ce, "accuracy": accuracy(logits, batch["label"])}
        return ce, {"model_state": model_state, "metrics": metrics}

    return loss_fn
