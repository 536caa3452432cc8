"""On-device augmentation: random pad-and-crop and horizontal flip, per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop_flip(
    rng: jax.Array,
    images: jax.Array,
    crop_padding: int = 0,
    flip: bool = False,
    pad_value: float = 0.0,
) -> jax.Array:
    """Pad each NHWC image by ``crop_padding`` pixels of ``pad_value``, crop back at a random
    offset, and flip left-right with probability 1/2 when ``flip``. Identity when both are off.

    ``images`` are already normalised, so the border that stands for black must be the
    normalised value of a raw zero pixel, ``(0 − mean)/std`` (:attr:`Split.pad_value
    <jaxquant.data.sources.Split.pad_value>`), not 0.0 (which is the mean pixel: a grey band
    that no test image has).
    """
    if crop_padding == 0 and not flip:
        return images
    batch, height, width, _ = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=pad_value)
        offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * p + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_rng, 0.5, (batch, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    return images


def random_cutout(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zero one ``size × size`` square per NHWC image at a uniformly random centre (clipped at
    the borders; DeVries & Taylor 2017). Identity when ``size`` is 0."""
    if size <= 0:
        return images
    batch, height, width, _ = images.shape
    centre_rng_y, centre_rng_x = jax.random.split(rng)
    top = jax.random.randint(centre_rng_y, (batch, 1, 1, 1), 0, height) - size // 2
    left = jax.random.randint(centre_rng_x, (batch, 1, 1, 1), 0, width) - size // 2
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside, 0.0, images)
