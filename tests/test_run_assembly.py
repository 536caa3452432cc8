"""Run assembly: a finished run is self-contained (analyse and PTQ work after its FP
``init_from`` is moved away), a resumed run restores onto an abstract template without
reading ``init_from``, and a method's block holds that method's fields only."""

import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.methods import get_method
from jaxquant.modes import run_mode
from jaxquant.train import setup
from jaxquant.train.checkpoint import Checkpointer
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.setup import abstract_train_state, build_run, create_train_state, initial_state, load_run


@pytest.fixture(scope="module")
def moved_qat_run(fp_digits_run, tmp_path_factory):
    """A short KD run (it keeps its FP teacher in the checkpoint) whose FP ``init_from`` has
    been moved away after training."""
    root = tmp_path_factory.mktemp("moved")
    fp_copy = str(root / "fp")
    shutil.copytree(fp_digits_run, fp_copy)
    workdir = str(root / "kd")
    config = tiny_config(
        method__name="kd", init_from=fp_copy, train__num_steps=4, train__bn_reestimate_images=64
    )
    train_and_evaluate(config, workdir)
    shutil.move(fp_copy, str(root / "fp_moved_away"))
    return workdir


def test_a_finished_run_loads_without_its_init_from(moved_qat_run):
    loaded = load_run(moved_qat_run)
    assert not os.path.exists(loaded.config.init_from)
    assert loaded.step == 4 and loaded.quantized and loaded.config.method.name == "kd"
    assert "teacher" in loaded.extra  # the FP teacher travels in the checkpoint
    assert loaded.summary["steps"] == 4
    assert load_run(os.path.join(moved_qat_run, "checkpoints")).workdir == loaded.workdir


def test_analyse_and_ptq_work_after_init_from_moved_away(moved_qat_run, tmp_path):
    config = tiny_config(mode="analyse", checkpoints=moved_qat_run)
    config.curvature.update(
        num_probes=2, batch_size=32, lanczos_iterations=4, top_k=2, density_runs=1, density_grid_points=16
    )
    config.curvature.update(landscape_points=3, landscape_2d_points=3)
    summary = run_mode(config, str(tmp_path / "analysis"))
    (row,) = summary["runs"]
    assert row["method"] == "kd" and np.isfinite(float(row["trace"].split(" ± ")[0]))
    ptq = tiny_config(mode="ptq", init_from=moved_qat_run, ptq__bits="8", train__bn_reestimate_images=64)
    assert np.isfinite(run_mode(ptq, str(tmp_path / "ptq"))["rows"][0]["test_accuracy"])


def test_resume_restores_onto_an_abstract_template_without_reading_init_from(
    fp_digits_run, tmp_path, monkeypatch
):
    config = tiny_config(method__name="lsq", init_from=fp_digits_run, train__bn_reestimate_images=64)
    run = build_run(config)
    state = create_train_state(run)
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    checkpointer.save(0, state)
    template = abstract_train_state(run)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree_util.tree_leaves(template))

    def no_reading(*args, **kwargs):
        raise AssertionError("a resumed run read init_from or built a fresh state")

    monkeypatch.setattr(setup, "load_raw", no_reading)
    monkeypatch.setattr(setup, "create_train_state", no_reading)
    restored, resumed = initial_state(run, checkpointer)
    checkpointer.close()
    assert resumed
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_method_block_with_another_method_s_field_is_a_one_line_error():
    config = tiny_config(method__name="fp")
    config.method.target_bits = 4  # a DNQ field in an FP run's block
    with pytest.raises(ValueError) as error:
        build_run(config)
    message = str(error.value)
    assert "\n" not in message and "method.target_bits is not a field of method 'fp'" in message
    config = tiny_config(method__name="fpq")
    config.method.csd_wieght = 1.0
    with pytest.raises(
        ValueError, match=r"csd_wieght is not a field of method 'fpq' \(did you mean 'csd_weight'\?\)"
    ):
        build_run(config)


def test_a_pipeline_stage_of_another_method_gets_that_method_s_block_only(tmp_path):
    from jaxquant.pipeline import stage_config

    config = tiny_config(mode="pipeline")
    config.method = get_method("dnq").default_config()
    config.stages = {"fp": {"method": {"name": "fp"}}, "dnq": {"method": {"name": "dnq", "p": 0.25}}}
    assert set(stage_config(config, "fp", str(tmp_path)).method) == {"name"}
    dnq = stage_config(config, "dnq", str(tmp_path)).method
    assert dnq.p == 0.25 and "target_bits" in dnq


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", 0.0, "optim.learning_rate=0.0 must be > 0"),
        ("learning_rate", -0.1, "optim.learning_rate=-0.1 must be > 0"),
        ("momentum", 1.0, "optim.momentum=1.0 is out of range: allowed [0, 1)"),
        ("momentum", -0.5, "optim.momentum=-0.5 is out of range"),
        ("weight_decay", -1e-4, "optim.weight_decay=-0.0001 is negative"),
    ],
)
def test_values_that_cannot_train_are_refused_at_start(field, value, message):
    config = tiny_config()
    config.optim[field] = value
    with pytest.raises(ValueError) as error:
        build_run(config)
    assert message in str(error.value) and "\n" not in str(error.value)
