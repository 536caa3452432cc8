"""The validation split (``data.validation_images``): held out of training, the same for every
run, read by evaluations during training; the test split is read once, at the end."""

import json
import os

import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.data.sources import hold_out_validation, load_digits_splits
from jaxquant.ptq import calibration_seed
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.setup import build_run


def image_rows(split) -> set[bytes]:
    return {row.tobytes() for row in split.batch(np.arange(len(split)))["image"]}


def test_validation_is_held_out_of_training_and_fixed_for_every_seed():
    train, _ = load_digits_splits()
    kept, validation = hold_out_validation(train, 200)
    assert (len(kept), len(validation)) == (len(train) - 200, 200)
    assert image_rows(kept).isdisjoint(image_rows(validation))
    assert image_rows(kept) | image_rows(validation) == image_rows(train)
    _, again = hold_out_validation(train, 200)
    first = np.arange(200)
    np.testing.assert_array_equal(again.batch(first)["image"], validation.batch(first)["image"])
    labels = validation.batch(np.arange(200))["label"]
    assert len(np.unique(labels)) == 10  # a random draw, not one class's block
    for seed in (0, 7):
        run = build_run(tiny_config(seed=seed, data__validation_images=200))
        assert run.validation_split is not None and run.eval_split is run.validation_split
        assert len(run.train_split) == len(train) - 200
        assert image_rows(run.validation_split) == image_rows(validation)


@pytest.mark.parametrize("count", [-1, 10**6])
def test_a_validation_size_that_cannot_work_is_refused(count):
    with pytest.raises(ValueError, match="data.validation_images"):
        build_run(tiny_config(data__validation_images=count))


def test_evaluations_during_training_read_validation_and_test_is_read_once(tmp_path):
    config = tiny_config(
        method__name="lsq", data__validation_images=300, train__num_steps=20, train__eval_every=10
    )
    summary = train_and_evaluate(config, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    validation = [r for r in rows if r["kind"] == "validation"]
    tests = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in validation] == [10, 20]
    assert [r["step"] for r in tests] == [20]
    assert validation[-1]["examples"] == 300 and tests[0]["examples"] == 360
    assert summary["validation_accuracy"] == pytest.approx(validation[-1]["accuracy"])
    assert summary["test_accuracy"] == pytest.approx(tests[0]["accuracy"])


def test_calibration_draws_are_distinct_and_draw_zero_is_the_run_seed():
    config = tiny_config(seed=3)
    assert calibration_seed(config) == 3
    seeds = set()
    for draw in (1, 2):
        config.ptq.calibration_draw = draw
        seeds.add(calibration_seed(config))
    assert len(seeds) == 2 and 3 not in seeds


def test_the_curvature_probe_can_read_validation_and_says_when_there_is_none():
    from jaxquant.curvature.monitor import curvature_split

    run = build_run(tiny_config(data__validation_images=200))
    assert curvature_split(run, "validation") is run.validation_split
    assert curvature_split(run, "train") is run.train_split and curvature_split(run, "test") is run.test_split
    with pytest.raises(ValueError, match=r"curvature.split='validation' needs data.validation_images > 0"):
        curvature_split(build_run(tiny_config()), "validation")
    with pytest.raises(ValueError, match="curvature.split='dev' is not allowed"):
        curvature_split(run, "dev")
