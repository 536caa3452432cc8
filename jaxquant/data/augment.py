"""On-device augmentation: random pad-and-crop and horizontal flip, per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(
    rng: jax.Array, images: jax.Array, crop_padding: int = 0, flip: bool = False
) -> jax.Array:
    """Zero-pad each NHWC image by ``crop_padding``, crop back at a random offset, and flip
    left-right with probability 1/2 when ``flip``. Identity when both are off."""
    if crop_padding == 0 and not flip:
        return images
    batch, height, width, _ = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * p + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_rng, 0.5, (batch, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    return images
