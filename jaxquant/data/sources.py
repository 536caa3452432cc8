"""Data sources: each yields a :class:`Split` with random access to normalised batches.

* ``local/digits``: scikit-learn's 1,797 real 8×8 digits (inside the wheel, zero set-up);
  a fixed stratified 80/20 split (seed 0).
* ``local/fashion_mnist``: the original Fashion-MNIST IDX ``.gz`` files from ``data_dir``
  (default ``/usr/share/datasets/fashion-mnist``, ``apt-get install dataset-fashion-mnist``).
* ``tfds/<name>``: any prepared TFDS dataset under an explicit ``data_dir``, read through
  ``tfds.data_source`` (array_record, no TensorFlow needed) and never downloaded.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import os
import struct
from collections.abc import Callable

import numpy as np

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk; the message says how to prepare it."""


@dataclasses.dataclass
class Split:
    """One split with random access: ``batch(indices) -> {'image', 'label'}``.

    ``image`` is float32 NHWC, normalised with the dataset's ``mean``/``std``.
    """

    name: str
    size: int
    image_shape: tuple[int, int, int]
    num_classes: int
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    mean: float = 0.0
    std: float = 1.0

    def __len__(self) -> int:
        return self.size

    @property
    def pad_value(self) -> float:
        """The normalised value of a raw zero (black) pixel, ``(0 − mean)/std``: what crop
        padding fills the border with."""
        return (0.0 - self.mean) / self.std

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        images, labels = self.read(np.asarray(indices))
        images = (images.astype(np.float32) - self.mean) / self.std
        return {"image": images, "label": labels.astype(np.int32)}


def array_split(name, images, labels, num_classes, scale, mean, std) -> Split:
    """A :class:`Split` over in-memory arrays; pixel values are divided by ``scale``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    labels = np.asarray(labels)

    def read(indices):
        return images[indices].astype(np.float32) / scale, labels[indices]

    return Split(name, len(labels), tuple(images.shape[1:]), num_classes, read, mean, std)


def load_digits_splits(test_fraction: float = 0.2) -> tuple[Split, Split]:
    """scikit-learn digits, 8×8×1 in [0, 1], stratified split with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=0, stratify=digits.target
    )
    stats = dict(num_classes=10, scale=16.0, mean=0.3, std=0.4)
    return (
        array_split("digits/train", x_train, y_train, **stats),
        array_split("digits/test", x_test, y_test, **stats),
    )


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic, dims (big-endian uint32), uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4]!r})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, got {array.size}")
    return array.reshape(dims)


FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load_fashion_mnist_splits(data_dir: str = "") -> tuple[Split, Split]:
    """Fashion-MNIST from the four original IDX files in ``data_dir``, 28×28×1 in [0, 1]."""
    data_dir = data_dir or DEFAULT_FASHION_MNIST_DIR
    splits = []
    for split, (image_file, label_file) in FASHION_FILES.items():
        paths = [os.path.join(data_dir, f) for f in (image_file, label_file)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise DatasetNotFoundError(
                f"Fashion-MNIST not found: missing {missing}. Install it with "
                "`apt-get install -y dataset-fashion-mnist` (as root) or set "
                "--config.data.data_dir to a folder with the four IDX .gz files."
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        splits.append(array_split(f"fashion_mnist/{split}", images, labels, 10, 255.0, 0.286, 0.353))
    return splits[0], splits[1]


def load_tfds_split(name: str, split: str, data_dir: str) -> Split:
    """A prepared TFDS dataset, read with ``tfds.data_source`` (random access, no download)."""
    if not data_dir:
        raise DatasetNotFoundError(
            f"data.source='tfds' needs an explicit --config.data.data_dir for {name!r}"
        )
    dataset_dir = os.path.join(data_dir, name.split(":")[0])  # "<name>[/<config>][:<version>]"
    if not glob.glob(os.path.join(dataset_dir, "**", "*.array_record*"), recursive=True):
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared (as array_record) under {data_dir!r}. "
            "On a machine with "
            f"network run `tfds build {name} --data_dir={data_dir} --file_format=array_record` "
            '(or python -c "import tensorflow_datasets as tfds; '
            f"tfds.builder('{name}', data_dir='{data_dir}', file_format='array_record')"
            '.download_and_prepare()") and copy the folder here.'
        )
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        builder_info = tfds.builder(name, data_dir=data_dir, try_gcs=False).info
    except Exception as error:  # noqa: BLE001 - re-raised with the fix
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} split {split!r} under {data_dir!r} could not be read "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}); it must be prepared as "
            "array_record."
        ) from error
    num_classes = builder_info.features["label"].num_classes
    image_shape = tuple(builder_info.features["image"].shape)

    def read(indices):
        records = source.__getitems__([int(i) for i in indices])
        images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32) / 255.0
        labels = np.asarray([r["label"] for r in records])
        return images, labels

    return Split(f"{name}/{split}", len(source), image_shape, num_classes, read, 0.45, 0.25)


VALIDATION_SEED = 0  # the held-out images are the same for every run, seed and method


def subset(split: Split, indices: np.ndarray, name: str) -> Split:
    """The examples ``indices`` of ``split`` as a split of their own (same statistics)."""
    indices = np.asarray(indices)

    def read(positions):
        return split.read(indices[np.asarray(positions)])

    return dataclasses.replace(split, name=name, size=len(indices), read=read)


def hold_out_validation(train: Split, num_images: int) -> tuple[Split, Split]:
    """``(train', validation)``: ``num_images`` training examples drawn once without
    replacement (seed :data:`VALIDATION_SEED`, independent of the run's seed) become the
    validation split, the rest stay training; every [design] choice is made on validation
    so that the test split is read once per run, for the final numbers."""
    if not isinstance(num_images, int) or isinstance(num_images, bool) or not 0 < num_images < len(train):
        raise ValueError(
            f"data.validation_images={num_images!r} must be an integer in [1, {len(train) - 1}] "
            f"(the training split has {len(train)} images), or 0 for no validation split"
        )
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(train))
    held_out, kept = np.sort(order[:num_images]), np.sort(order[num_images:])
    validation = subset(train, held_out, f"{train.name}[validation]")
    return subset(train, kept, f"{train.name}-minus-validation"), validation


def load_splits(source: str, name: str, data_dir: str = "") -> tuple[Split, Split]:
    """``(train, test)`` splits of dataset ``name`` from ``source`` (``local`` or ``tfds``)."""
    if source == "local":
        loaders = {"digits": load_digits_splits, "fashion_mnist": load_fashion_mnist_splits}
        if name not in loaders:
            raise ValueError(
                f"data.name={name!r} is not a local dataset: allowed {sorted(loaders)} "
                "(or set data.source='tfds')"
            )
        return loaders[name]() if name == "digits" else loaders[name](data_dir)
    if source == "tfds":
        return load_tfds_split(name, "train", data_dir), load_tfds_split(name, "test", data_dir)
    raise ValueError(f"data.source={source!r} is not allowed: choose one of ['local', 'tfds']")
