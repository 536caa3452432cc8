"""Classification loss and accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy ``−log softmax(z)_y`` over (unmasked) samples."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mask is None:
        return jnp.mean(losses)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of samples whose arg-max logit is the label."""
    return jnp.mean(jnp.argmax(logits, -1) == labels)
