"""Datasets (local offline sources and TFDS), resumable batching, augmentation."""

from jaxquant.data.augment import random_crop_flip
from jaxquant.data.pipeline import TrainBatches, calibration_images, eval_batches, fixed_batches
from jaxquant.data.sources import DatasetNotFoundError, Split, hold_out_validation, load_splits

__all__ = [
    "DatasetNotFoundError",
    "Split",
    "TrainBatches",
    "calibration_images",
    "eval_batches",
    "fixed_batches",
    "hold_out_validation",
    "load_splits",
    "random_crop_flip",
]
