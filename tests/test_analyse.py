"""Flatness analysis end to end: the training probe, ``mode=analyse`` and the notebook."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import nbformat
import pytest
from conftest import tiny_config
from nbclient import NotebookClient

from jaxquant.modes import run_mode
from jaxquant.train.checkpoint import CheckpointError
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ANALYSIS = dict(
    batch_size=32,
    num_probes=4,
    lanczos_iterations=6,
    top_k=2,
    density_runs=1,
    density_grid_points=64,
    landscape_points=5,
    landscape_2d_points=3,
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def shared_compilation_env(tmp_path_factory):
    """Environment for child processes (the CLI, the notebook kernel) that import this
    checkout and share a persistent JAX compilation cache, so the notebook reuses what the
    CLI run compiled for the same two models."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@pytest.fixture(scope="module")
def lsq_run(fp_digits_run, tmp_path_factory):
    """A short LSQ W4A4 run from the FP fixture, with the curvature probe every 10 steps."""
    workdir = str(tmp_path_factory.mktemp("lsq_probe"))
    config = tiny_config(
        method__name="lsq",
        init_from=fp_digits_run,
        curvature__every_steps=10,
        curvature__num_probes=3,
        curvature__batch_size=32,
    )
    train_and_evaluate(config, workdir)
    return workdir


def test_training_probe_logs_a_trace_trajectory(lsq_run):
    records = [r for r in read_metrics(os.path.join(lsq_run, "metrics.jsonl")) if r["kind"] == "curvature"]
    assert [r["step"] for r in records] == [10, 20]
    for record in records:
        assert record["num_probes"] == 3 and math.isfinite(record["trace"]) and record["trace_stderr"] >= 0
        assert set(record["layer_traces"]) == {"conv0", "bn0", "conv1", "bn1", "head"}
        assert sum(record["layer_traces"].values()) == pytest.approx(record["trace"], rel=1e-6)


def test_analyse_command_writes_report_plots_and_table(
    fp_digits_run, lsq_run, tmp_path, shared_compilation_env
):
    command = [
        sys.executable,
        "-m",
        "jaxquant.main",
        "--config",
        os.path.join(REPO, "configs", "analyse_digits.py"),
        "--workdir",
        str(tmp_path),
        f"--config.checkpoints={fp_digits_run},{lsq_run}",
        *[f"--config.curvature.{name}={value}" for name, value in TINY_ANALYSIS.items()],
    ]
    done = subprocess.run(command, env=shared_compilation_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.load(open(tmp_path / "analysis.json"))
    first, second = report["checkpoints"]
    assert (first["method"], second["method"]) == ("fp", "lsq")
    assert (first["w_bits"], second["w_bits"]) == (None, 4)
    for checkpoint in (first, second):
        trace = checkpoint["trace"]
        assert len(trace["probe_values"]) == trace["num_probes"] == 4
        layers = sum(layer["trace"] for layer in trace["layers"].values())
        assert layers == pytest.approx(trace["trace"], rel=1e-6)
        values = checkpoint["eigenvalues"]["values"]
        assert len(values) == 2 and values[0] >= values[1]
        assert len(checkpoint["density"]["grid"]) == len(checkpoint["density"]["density"]) == 64
        assert len(checkpoint["landscape_1d"]["losses"]) == 5
        assert len(checkpoint["landscape_2d"]["losses"]) == 3
        assert checkpoint["landscape_1d"]["losses"][2] == pytest.approx(checkpoint["loss"], rel=1e-4)
    (line,) = report["interpolations"]
    assert line["losses"][line["alphas"].index(1.0)] == pytest.approx(second["loss"], rel=1e-4)
    names = ["density", "eigenvalues", "landscape_1d", "landscape_2d", "layer_traces", "interpolation"]
    for name in names:
        with open(tmp_path / f"{name}.png", "rb") as f:
            assert f.read(8) == PNG_MAGIC
    assert "hutchinson: probe 4/4, running estimate" in done.stdout
    header = next(line for line in done.stdout.splitlines() if line.startswith("run "))
    assert header.split() == [
        "run",
        "method",
        "w_bits",
        "a_bits",
        "test_accuracy",
        "loss",
        "trace",
        "probes",
        "lambda_max",
        "params",
    ]
    rows = done.stdout.split(header)[1].splitlines()[2:4]
    assert [row.split()[1] for row in rows] == ["fp", "lsq"] and all("±" in row for row in rows)


def test_analyse_errors_are_clear(fp_digits_run, tmp_path):
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(CheckpointError, match="no_such_run' does not exist"):
        run_mode(tiny_config(mode="analyse", checkpoints=f"{fp_digits_run},{missing}"), str(tmp_path))
    with pytest.raises(CheckpointError, match="has no config.json"):
        run_mode(tiny_config(mode="analyse", checkpoints=str(tmp_path)), str(tmp_path))
    with pytest.raises(ValueError, match="needs --config.checkpoints"):
        run_mode(tiny_config(mode="analyse"), str(tmp_path))
    config = tiny_config(mode="analyse", checkpoints=fp_digits_run, curvature__params="steps")
    with pytest.raises(ValueError, match="curvature.params='steps' selects no parameters"):
        run_mode(config, str(tmp_path))


def test_flatness_notebook_runs_top_to_bottom(
    fp_digits_run, lsq_run, tmp_path, monkeypatch, shared_compilation_env
):
    parameters = {
        "FLATNESS_METHOD_A": "fp",
        "FLATNESS_RUN_A": fp_digits_run,
        "FLATNESS_METHOD_B": "lsq",
        "FLATNESS_RUN_B": lsq_run,
        "FLATNESS_NUM_PROBES": "3",
        "FLATNESS_LANCZOS_ITERATIONS": "5",
        "FLATNESS_DENSITY_RUNS": "1",
        "FLATNESS_LANDSCAPE_POINTS": "5",
        "FLATNESS_BATCH_SIZE": "32",
    }
    for name, value in {**shared_compilation_env, **parameters}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(os.path.join(REPO, "notebooks", "flatness.ipynb"), as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "FP FP32" in text and "LSQ W4A4" in text and "lambda_max" in text
    assert "step sizes" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 5
