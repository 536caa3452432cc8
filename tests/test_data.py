"""Data: IDX reader, Fashion-MNIST source, deterministic shuffling, augmentation, eval padding."""

import gzip
import os
import struct

import jax
import numpy as np
import pytest

from jaxquant.data.augment import random_crop_flip
from jaxquant.data.pipeline import TrainBatches, calibration_images, eval_batches
from jaxquant.data.sources import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_FILES,
    DatasetNotFoundError,
    array_split,
    load_fashion_mnist_splits,
    load_splits,
    read_idx,
)


def write_idx(path, array):
    """Write ``array`` (uint8) as an IDX file: 0x0000, type 0x08, ndim, big-endian dims, data."""
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_fake_fashion_mnist(directory, train=12, test=5):
    """The four Fashion-MNIST IDX .gz files, with ``train``/``test`` random 28×28 images."""
    rng = np.random.default_rng(0)
    for split, size in (("train", train), ("test", test)):
        image_file, label_file = FASHION_FILES[split]
        write_idx(os.path.join(directory, image_file), rng.integers(0, 256, (size, 28, 28)))
        write_idx(os.path.join(directory, label_file), np.arange(size) % 10)
    return directory


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trips(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5))
    path = str(tmp_path / f"x.idx{suffix}")
    write_idx(path, array)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(str(bad))
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 2) + struct.pack(">II", 3, 4) + b"\1" * 7)
    with pytest.raises(ValueError, match="truncated: expected 12 values, got 7"):
        read_idx(str(short))


def test_fashion_mnist_from_a_directory_of_idx_files(tmp_path):
    train, test = load_fashion_mnist_splits(write_fake_fashion_mnist(str(tmp_path)))
    assert (len(train), len(test), train.image_shape, train.num_classes) == (12, 5, (28, 28, 1), 10)
    raw = read_idx(str(tmp_path / FASHION_FILES["train"][0]))
    batch = train.batch(np.array([3, 0]))
    np.testing.assert_allclose(
        batch["image"][..., 0], (raw[[3, 0]] / 255.0 - train.mean) / train.std, atol=1e-6
    )
    np.testing.assert_array_equal(batch["label"], [3, 0])


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist_splits(str(tmp_path))


@pytest.mark.skipif(
    not os.path.exists(os.path.join(DEFAULT_FASHION_MNIST_DIR, FASHION_FILES["test"][0])),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist():
    train, test = load_splits("local", "fashion_mnist")
    assert (len(train), len(test), train.image_shape) == (60000, 10000, (28, 28, 1))
    labels = test.batch(np.arange(len(test)))["label"]
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    images = train.batch(np.arange(2000))["image"]
    assert abs(images.mean()) < 0.1 and 0.8 < images.std() < 1.2  # normalised with mean/std


def test_digits_split_is_fixed_and_stratified():
    train, test = load_splits("local", "digits")
    again, _ = load_splits("local", "digits")
    assert (len(train), len(test), train.image_shape) == (1437, 360, (8, 8, 1))
    np.testing.assert_array_equal(train.batch(np.arange(50))["image"], again.batch(np.arange(50))["image"])
    assert np.bincount(test.batch(np.arange(len(test)))["label"]).min() >= 35


def test_unknown_source_and_local_name_are_one_line_errors():
    with pytest.raises(
        ValueError, match=r"data.source='hf' is not allowed: choose one of \['local', 'tfds'\]"
    ):
        load_splits("hf", "digits")
    with pytest.raises(ValueError, match=r"data.name='cifar10' is not a local dataset: allowed"):
        load_splits("local", "cifar10")


def toy_split(size=50):
    images = np.arange(size, dtype=np.float32).reshape(size, 1, 1, 1) * np.ones((1, 4, 4, 1), np.float32)
    return array_split("toy", images, np.arange(size) % 10, num_classes=10, scale=1.0, mean=0.0, std=1.0)


def test_shuffling_is_a_pure_function_of_seed_and_step():
    split = toy_split()
    a, b, other = (
        TrainBatches(split, 8, seed=3),
        TrainBatches(split, 8, seed=3),
        TrainBatches(split, 8, seed=4),
    )
    steps = range(0, 3 * a.steps_per_epoch)
    first = np.stack([a.indices(s) for s in steps])
    np.testing.assert_array_equal(first, np.stack([b.indices(s) for s in steps]))
    assert not np.array_equal(first, np.stack([other.indices(s) for s in steps]))
    # random access and iteration from a later step agree (what a resumed run reads)
    resumed = a.iterate(5)
    for step in range(5, 9):
        np.testing.assert_array_equal(next(resumed)["label"], a[step]["label"])


def test_an_epoch_visits_distinct_examples_and_epochs_differ():
    batches = TrainBatches(toy_split(), 8, seed=0)
    per_epoch = batches.steps_per_epoch
    assert per_epoch == 50 // 8
    epoch0 = np.concatenate([batches.indices(s) for s in range(per_epoch)])
    epoch1 = np.concatenate([batches.indices(s) for s in range(per_epoch, 2 * per_epoch)])
    assert len(set(epoch0)) == len(epoch0) == per_epoch * 8
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, np.sort(epoch0))


def test_batch_larger_than_the_dataset_is_an_error():
    with pytest.raises(ValueError, match="data.batch_size=64 is larger than the training set"):
        TrainBatches(toy_split(50), 64, seed=0)


def test_eval_batches_cover_the_split_once_and_mask_the_padding():
    split = toy_split(10)
    batches = list(eval_batches(split, 4))
    assert [b["image"].shape[0] for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    seen = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(seen, np.arange(10) % 10)
    assert sum(b["mask"].sum() for b in batches) == len(split)


def test_calibration_images_are_a_fixed_random_subset():
    split = toy_split(50)
    images = calibration_images(split, 20, seed=1)
    values = images[:, 0, 0, 0]
    assert images.shape == (20, 4, 4, 1) and len(set(values)) == 20
    np.testing.assert_array_equal(values, calibration_images(split, 20, seed=1)[:, 0, 0, 0])
    assert not np.array_equal(values, calibration_images(split, 20, seed=2)[:, 0, 0, 0])
    assert calibration_images(split, 500, seed=0).shape[0] == 50


def numbered_images(batch=64, size=6):
    """Images whose pixels are all distinct, so any crop or flip can be recognised."""
    return np.arange(batch * size * size * 2, dtype=np.float32).reshape(batch, size, size, 2) + 1.0


def test_augmentation_off_is_identity():
    images = numbered_images()
    np.testing.assert_array_equal(random_crop_flip(jax.random.PRNGKey(0), images), images)


def test_flip_mirrors_about_half_of_the_images():
    images = numbered_images()
    out = np.asarray(random_crop_flip(jax.random.PRNGKey(0), images, flip=True))
    assert out.shape == images.shape
    same = np.all(out == images, axis=(1, 2, 3))
    mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    assert 10 < mirrored.sum() < 54


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
    images, pad = numbered_images(), 2
    out = np.asarray(random_crop_flip(jax.random.PRNGKey(1), images, crop_padding=pad))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    height, width = images.shape[1:3]
    offsets = set()
    for image, window in zip(out, padded, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.array_equal(image, window[dy : dy + height, dx : dx + width])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary per sample


def test_augmentation_depends_on_the_key():
    images = numbered_images()
    a = random_crop_flip(jax.random.PRNGKey(0), images, crop_padding=2, flip=True)
    b = random_crop_flip(jax.random.PRNGKey(0), images, crop_padding=2, flip=True)
    c = random_crop_flip(jax.random.PRNGKey(1), images, crop_padding=2, flip=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    """A 3-class TFDS dataset of random 8×8×3 images, prepared as array_record (no network,
    no TensorFlow); returns ``(data_dir, train images, train labels)``."""
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
        "test": rng.integers(0, 256, (9, 8, 8, 3), dtype=np.uint8),
    }

    class JaxquantTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in images}

        def _generate_examples(self, split):
            for i, image in enumerate(images[split]):
                yield i, {"image": image, "label": i % 3}

    JaxquantTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir, images["train"], np.arange(40) % 3


def test_tfds_dataset_is_read_through_data_source(tiny_tfds_dir):
    data_dir, images, labels = tiny_tfds_dir
    train, test = load_splits("tfds", "jaxquant_tiny_images", data_dir)
    assert (len(train), len(test), train.image_shape, train.num_classes) == (40, 9, (8, 8, 3), 3)
    batch = train.batch(np.arange(len(train)))
    pixels = np.rint(batch["image"] * train.std * 255.0 + train.mean * 255.0).astype(np.uint8)
    # TFDS shuffles records on disk: match each one to the example it was written from
    written = [int(np.flatnonzero((images == p).all(axis=(1, 2, 3)))[0]) for p in pixels]
    assert sorted(written) == list(range(40))
    np.testing.assert_array_equal(batch["label"], labels[written])


def test_tfds_dataset_feeds_the_training_pipeline(tiny_tfds_dir):
    """build_run on a TFDS config, then grain batches and calibration images from it."""
    from conftest import tiny_config

    from jaxquant.train.setup import build_run

    config = tiny_config(
        data__source="tfds",
        data__name="jaxquant_tiny_images",
        data__data_dir=tiny_tfds_dir[0],
        method__name="lsq",
    )
    run = build_run(config)
    batches = TrainBatches(run.train_split, 8, seed=0)
    assert batches.steps_per_epoch == 5
    batch = batches[3]
    assert batch["image"].shape == (8, 8, 8, 3) and batch["image"].dtype == np.float32
    assert set(batch["label"]) <= {0, 1, 2}
    epoch = np.concatenate([batches.indices(s) for s in range(5)])
    assert sorted(epoch) == list(range(40))
    assert calibration_images(run.train_split, 16, seed=0).shape == (16, 8, 8, 3)


@pytest.mark.parametrize("prepare", ["missing", "empty_folder"])
def test_unprepared_tfds_dataset_fails_at_once_with_how_to_prepare(tmp_path, prepare):
    if prepare == "empty_folder":
        (tmp_path / "cifar10" / "3.0.2").mkdir(parents=True)
    data_dir = str(tmp_path if prepare == "empty_folder" else tmp_path / "nowhere")
    with pytest.raises(
        DatasetNotFoundError, match=r"TFDS dataset 'cifar10' is not prepared.*tfds build cifar10"
    ):
        load_splits("tfds", "cifar10", data_dir)
    with pytest.raises(DatasetNotFoundError, match="needs an explicit --config.data.data_dir"):
        load_splits("tfds", "cifar10", "")
