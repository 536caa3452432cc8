"""Deterministic, resumable batching with grain.

Training batch ``k`` is a pure function of ``(seed, k)``: a grain ``MapDataset`` shuffles the
example indices per epoch and batches them, so a resumed run reads exactly the batches it
would have read. Each process reads only its own slice of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import jax
import numpy as np

from jaxquant.data.sources import Split


def check_divisible(batch_size: int, divisor: int, what: str) -> None:
    """Raise a one-line error if ``batch_size`` does not split into ``divisor`` parts."""
    if batch_size % divisor:
        raise ValueError(
            f"{what}={batch_size} does not divide evenly over {divisor} "
            "(devices or processes); choose a multiple"
        )


class TrainBatches:
    """Random access to shuffled training batches: ``batches[step]``."""

    def __init__(self, split: Split, batch_size: int, seed: int):
        if batch_size > len(split):
            raise ValueError(f"data.batch_size={batch_size} is larger than the training set ({len(split)})")
        self.split = split
        self.batch_size = batch_size
        self.steps_per_epoch = len(split) // batch_size
        self._indices = (
            grain.MapDataset.range(len(split))
            .shuffle(seed=seed)
            .repeat(None)
            .batch(batch_size, drop_remainder=True)
        )

    def indices(self, step: int) -> np.ndarray:
        return np.asarray(self._indices[step])

    def __getitem__(self, step: int) -> dict[str, np.ndarray]:
        """This process's part of global batch ``step``, with each example's ``index`` in the
        training set (methods that hide labels of a fixed subset select it by index)."""
        indices = self.indices(step)
        process_count = jax.process_count()
        check_divisible(self.batch_size, process_count, "data.batch_size")
        local = np.split(indices, process_count)[jax.process_index()]
        return {**self.split.batch(local), "index": local.astype(np.int32)}

    def iterate(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            yield self[step]
            step += 1


def eval_batches(split: Split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Sequential batches covering ``split`` once; the last is padded, with ``mask`` 0 there."""
    for start in range(0, len(split), batch_size):
        indices = np.arange(start, min(start + batch_size, len(split)))
        mask = np.ones(batch_size, np.float32)
        mask[len(indices) :] = 0.0
        padded = np.concatenate([indices, np.zeros(batch_size - len(indices), np.int64)])
        batch = split.batch(padded)
        batch["mask"] = mask
        yield batch


def calibration_images(split: Split, num_images: int, seed: int) -> np.ndarray:
    """``num_images`` random training images (the group's calibration set, default 100)."""
    rng = np.random.default_rng(seed)
    indices = rng.choice(len(split), size=min(num_images, len(split)), replace=False)
    return split.batch(np.sort(indices))["image"]


def fixed_batches(split: Split, batch_size: int, num_batches: int, seed: int) -> dict[str, np.ndarray]:
    """``num_batches`` batches of distinct images drawn once with ``seed``, stacked on a leading
    axis (``image`` ``[K, B, H, W, C]``): the fixed data of curvature measurements."""
    total = batch_size * num_batches
    if batch_size < 1 or num_batches < 1 or total > len(split):
        raise ValueError(
            f"curvature.batch_size={batch_size} × curvature.num_batches={num_batches} must be "
            f"positive and at most the {len(split)} images of {split.name}"
        )
    indices = np.sort(np.random.default_rng(seed).choice(len(split), size=total, replace=False))
    batch = split.batch(indices)
    return {k: v.reshape(num_batches, batch_size, *v.shape[1:]) for k, v in batch.items()}
