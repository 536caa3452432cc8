"""Shared test fixtures: tiny configs and one FP digits checkpoint for the whole session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Set before jax is imported; CLI subprocesses inherit them. A per-session persistent
# compilation cache lets identical train steps (a run and its resume, the two halves of a
# killed CLI run) compile once.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxquant_tests_jit_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import pytest  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

from jaxquant.defaults import get_config  # noqa: E402


def read_events(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's view of the event files in ``workdir`` (after its orphan purge):
    ``{tag: [(step, value), ...]}``."""
    events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tiny_config(**overrides):
    """The base config shrunk for tests: small CNN on digits, a few steps, quiet logging.

    ``overrides`` use ``__`` for nesting: ``tiny_config(method__name="lsq")``.
    """
    config = get_config()
    config.name = "test"
    config.model.kwargs = {"widths": (16, 32)}
    config.data.batch_size = 32
    config.data.eval_batch_size = 128
    config.quant.calibration_images = 64
    config.optim.learning_rate = 0.1
    config.train.num_steps = 20
    config.train.log_every = 10
    config.train.checkpoint_every = 10
    for key, value in overrides.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def fp_digits_run(tmp_path_factory):
    """Workdir of a short FP run on digits (~90% test accuracy); QAT tests start from it."""
    from jaxquant.train.loop import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("fp_digits"))
    config = tiny_config(method__name="fp", train__num_steps=200, train__checkpoint_every=200)
    summary = train_and_evaluate(config, workdir)
    assert summary["test_accuracy"] > 0.8, summary
    return workdir
