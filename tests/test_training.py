"""Training: real steps lower the loss, exact resume, init_from, NaN handling, kill and resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import read_events, tiny_config

from jaxquant.data.pipeline import TrainBatches
from jaxquant.models import forward
from jaxquant.objectives.classification import cross_entropy
from jaxquant.train.checkpoint import Checkpointer, load_raw
from jaxquant.train.loop import NonFiniteLossError, all_finite, make_train_step, train_and_evaluate
from jaxquant.train.metrics import read_metrics
from jaxquant.train.setup import build_run, create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_CONFIG = os.path.join(REPO, "tests", "cli_config.py")


def leaves_by_path(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("method", ["fp", "lsq"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(method):
    steps = 40
    config = tiny_config(
        method__name=method, train__num_steps=steps, optim__learning_rate=0.3, optim__schedule="constant"
    )
    run = build_run(config)
    state = create_train_state(run)
    fixed = run.train_split.batch(np.arange(256))

    @jax.jit
    def fixed_loss(params, model_state):
        logits, _, _ = forward(run.ctx.model, params, model_state, fixed["image"], train=True)
        return cross_entropy(logits, fixed["label"])

    before = float(fixed_loss(state.params, state.model_state))
    params_before = leaves_by_path(state.params)
    train_step = make_train_step(run)
    batches = TrainBatches(run.train_split, run.config.data.batch_size, run.config.seed)
    for step in range(steps):
        state, _ = train_step(state, batches[step])
    after = float(fixed_loss(state.params, state.model_state))
    assert after < 0.75 * before, (before, after)
    assert int(state.step) == steps
    if method == "lsq":  # the step sizes are learned, not only the weights
        steps_after = {k: v for k, v in leaves_by_path(state.params).items() if k.endswith("['step']")}
        assert steps_after and all(not np.array_equal(v, params_before[k]) for k, v in steps_after.items())


def logged_points(workdir: str) -> tuple[list, dict]:
    """The records of ``metrics.jsonl`` without their wall time and rate, and TensorBoard's view
    of the workdir's event files: ``{tag: [(step, value), ...]}`` after its orphan purge."""
    timed = ("time", "steps_per_sec")
    records = [
        {k: v for k, v in r.items() if k not in timed} for r in read_metrics(f"{workdir}/metrics.jsonl")
    ]
    scalars = {tag: points for tag, points in read_events(workdir).items() if tag != "train/steps_per_sec"}
    return records, scalars


def test_resume_from_a_checkpoint_gives_exactly_the_uninterrupted_run(tmp_path):
    """Training 8 steps in one go equals training 4, stopping, and resuming to 8, bit for bit:
    batches, augmentation and noise are pure functions of (seed, step). The resumed run's
    metrics hold each step once, as the uninterrupted run's do, in the JSON lines and in
    TensorBoard (whose older event file still holds the first step 8)."""
    config = tiny_config(
        method__name="lsq",
        train__num_steps=8,
        train__checkpoint_every=4,
        train__log_every=4,
        data__crop_padding=1,
        data__flip=True,
    )
    workdir = str(tmp_path)
    train_and_evaluate(config, workdir)
    step, uninterrupted = load_raw(workdir)
    assert step == 8
    records, scalars = logged_points(workdir)
    assert {r["step"] for r in records} == {4, 8}
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))  # as if killed between 4 and 8
    time.sleep(1)  # the event file's name holds the second it was made in
    summary = train_and_evaluate(config, workdir)
    step, resumed = load_raw(workdir)
    assert step == summary["steps"] == 8
    assert len([f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]) == 2
    assert logged_points(workdir) == (records, scalars)
    expected, got = leaves_by_path(uninterrupted), leaves_by_path(resumed)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_qat_from_init_from_copies_the_fp_weights_then_calibrates(fp_digits_run):
    """With ``train.bn_reestimate='never'`` the FP statistics are copied as they are (the
    default re-estimates them: tests/test_signal.py)."""
    run = build_run(tiny_config(method__name="lsq", init_from=fp_digits_run, train__bn_reestimate="never"))
    state = create_train_state(run)
    _, saved = load_raw(fp_digits_run)
    fp_params, qat_params = leaves_by_path(saved["params"]), leaves_by_path(state.params)
    for key, value in fp_params.items():
        np.testing.assert_array_equal(qat_params[key], value, err_msg=key)
    fp_stats = leaves_by_path(saved["model_state"]["batch_stats"])
    for key, value in leaves_by_path(state.model_state["batch_stats"]).items():
        np.testing.assert_array_equal(value, fp_stats[key], err_msg=key)
    assert sorted(set(qat_params) - set(fp_params)) == sorted(k for k in qat_params if k.endswith("['step']"))
    # the weight quantizer was calibrated on the copied FP kernel: s = (max − min)/(2^b − 1)
    kernel = fp_params["['conv1']['kernel']"]
    lo, hi = np.minimum(kernel.min((0, 1, 2)), 0), np.maximum(kernel.max((0, 1, 2)), 0)
    np.testing.assert_allclose(
        qat_params["['conv1']['weight_quant']['step']"].ravel(), (hi - lo) / 15, rtol=1e-5
    )


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """From step 7 on the images are NaN: the run stops with NonFiniteLossError; the checkpoint
    of step 6 stays the latest and is finite."""
    clean = TrainBatches.__getitem__

    def poisoned(self, step):
        batch = clean(self, step)
        if step >= 7:
            batch["image"] = np.full_like(batch["image"], np.nan)
        return batch

    monkeypatch.setattr(TrainBatches, "__getitem__", poisoned)
    config = tiny_config(
        method__name="fp", train__num_steps=12, train__checkpoint_every=3, train__log_every=1
    )
    with pytest.raises(
        NonFiniteLossError, match=r"(loss|grad_norm) is nan at step 8: training stopped.*\(step 6\)"
    ):
        train_and_evaluate(config, str(tmp_path))
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    assert checkpointer.latest_step() == 6
    _, saved = load_raw(str(tmp_path))
    assert all_finite(saved["params"]) and int(saved["step"]) == 6
    checkpointer.close()


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    """A huge learning rate: the run stops before any checkpoint holds NaN or inf."""
    config = tiny_config(
        method__name="fp", optim__learning_rate=1e30, train__log_every=1000, train__checkpoint_every=1
    )
    with pytest.raises(NonFiniteLossError, match="at step"):
        train_and_evaluate(config, str(tmp_path))
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    if checkpointer.latest_step() is not None:
        assert all_finite(load_raw(str(tmp_path))[1]["params"])
    checkpointer.close()


def finished_checkpoints(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return (
        sorted(int(name) for name in os.listdir(directory) if name.isdigit())
        if os.path.isdir(directory)
        else []
    )


def test_cli_killed_during_qat_resumes_when_rerun(fp_digits_run, tmp_path):
    """Kill ``python -m jaxquant.main`` (LSQ QAT from an FP run) once its first checkpoint is
    written; the same command then resumes from that checkpoint and finishes."""
    workdir = str(tmp_path / "qat")
    total, every = 120, 20
    command = [
        sys.executable,
        "-m",
        "jaxquant.main",
        f"--config={CLI_CONFIG}",
        f"--workdir={workdir}",
        "--config.method.name=lsq",
        f"--config.init_from={fp_digits_run}",
        f"--config.train.num_steps={total}",
        f"--config.train.checkpoint_every={every}",
        "--config.train.log_every=100",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not finished_checkpoints(workdir) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    output = first.communicate()[0]
    killed_at = finished_checkpoints(workdir)
    assert killed_at and max(killed_at) < total, output
    assert not os.path.exists(os.path.join(workdir, "summary.json"))

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    resumed_from = int(second.stdout.split("resumed from step ")[1].split()[0])
    assert resumed_from >= max(killed_at) and resumed_from % every == 0
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["steps"] == total and summary["method"] == "lsq"
    assert load_raw(workdir)[0] == total
    assert f"step {total}/{total}" in second.stdout and f"step {every}/{total}" not in second.stdout
