"""Sharded training equals one-device training; multi-process runs; restore on a new mesh.

Multi-device runs happen in subprocesses (tests/parallel_worker.py) because the number of
forced CPU devices is fixed when jax is imported: ``XLA_FLAGS`` is set in their environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec
from parallel_worker import STEPS, module_exists

from jaxquant import parallel
from jaxquant.methods import METHODS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "parallel_worker.py")
PARITY_METHODS = ["lsq", "fp", "fpq", "mec", "cr"]
HUTCHINSON = "jaxquant.curvature.hutchinson"
DEFAULT = parallel.FSDP_MIN_SIZE
FSDP_SMALL = 1024  # small enough that the tiny CNN's conv1 kernel and momentum are split
RTOL, ATOL = 1e-4, 1e-5  # float32 sums in another order (and an LSQ rounding that may flip)


def worker_env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    return env


def start(command: str, spec: dict, devices: int, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(
        [sys.executable, WORKER, command, json.dumps(spec)],
        env=worker_env(devices),
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    process.log = log
    return process


def finish(processes: list[subprocess.Popen], timeout: float) -> None:
    """Wait for all; kill the ones still running after ``timeout`` s; fail with the log tails."""
    failures = []
    try:
        for process in processes:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                failures.append(f"pid {process.pid} timed out after {timeout} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.log.close()
    for process in processes:
        if process.returncode != 0:
            with open(process.log.name) as f:
                failures.append(f"exit {process.returncode}:\n" + "".join(f.readlines()[-25:]))
    assert not failures, "\n".join(failures)


def run_worker(command: str, spec: dict, devices: int, timeout: float = 900) -> None:
    finish([start(command, spec, devices, os.path.join(spec["out"], f"{command}.log"))], timeout)


def load(out: str, tag: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(out, f"{tag}.npz")) as data:
        return dict(data)


def assert_trees_close(actual: dict, expected: dict, rtol=RTOL, atol=ATOL) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def parity_run(fp_digits_run, tmp_path_factory):
    """One 8-device process: every registered parity method on a 1-device and an 8-device
    mesh, LSQ also on a 4×2 (data × model) FSDP mesh, whose state is checkpointed."""
    out = str(tmp_path_factory.mktemp("parity"))
    runs = {m: [[1, 1, DEFAULT], [8, 1, DEFAULT]] for m in PARITY_METHODS if m in METHODS}
    runs["lsq"].append([4, 2, FSDP_SMALL])
    try:
        with_hutchinson = module_exists(HUTCHINSON)
    except ImportError:  # there but broken: the worker records the error, the Hutchinson test shows it
        with_hutchinson = True
    spec = {
        "out": out,
        "init_from": fp_digits_run,
        "runs": runs,
        "checkpoint": "lsq_4x2",
        "hutchinson": ["lsq_1x1", "lsq_8x1"] if with_hutchinson else [],
    }
    run_worker("parity", spec, devices=8)
    with open(os.path.join(out, "parity.json")) as f:
        return out, json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("method", PARITY_METHODS)
@pytest.mark.slow
def test_train_steps_on_8_devices_match_one_device(parity_run, method):
    if method not in METHODS:
        pytest.skip(f"method {method!r} is not registered yet (no jaxquant/methods/{method}.py)")
    out, reports = parity_run
    one, eight = reports[f"{method}_1x1"], reports[f"{method}_8x1"]
    assert eight["devices"] == 8 and one["devices"] == 1
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=RTOL)
    # params, BatchNorm running statistics (global batch moments) and quantizer state
    assert_trees_close(load(out, f"{method}_8x1"), load(out, f"{method}_1x1"))
    for report in (one, eight):
        assert report["compiles"] == 1, "the train step recompiled between steps"
        assert report["sharding_kept"], "the state left the step with another sharding"


@pytest.mark.slow
def test_fsdp_mesh_matches_one_device(parity_run):
    out, reports = parity_run
    fsdp = reports["lsq_4x2"]
    assert fsdp["sharded_leaves"] >= 2  # conv1 kernel and its momentum are split over `model`
    assert fsdp["compiles"] == 1 and fsdp["sharding_kept"]
    np.testing.assert_allclose(fsdp["losses"], reports["lsq_1x1"]["losses"], rtol=RTOL)
    assert_trees_close(load(out, "lsq_4x2"), load(out, "lsq_1x1"))
    assert fsdp["accuracy"] == reports["lsq_1x1"]["accuracy"]


@pytest.mark.slow
def test_hutchinson_trace_on_8_devices_matches_one_device(parity_run):
    if not module_exists(HUTCHINSON):
        pytest.skip(f"{HUTCHINSON} does not exist yet")
    _, reports = parity_run
    one, eight = reports["lsq_1x1"]["hutchinson"], reports["lsq_8x1"]["hutchinson"]
    assert isinstance(one, list) and isinstance(eight, list), one if isinstance(one, str) else eight
    np.testing.assert_allclose(eight, one, rtol=1e-3)


@pytest.mark.slow
def test_restore_8_device_checkpoint_on_2_devices(parity_run, fp_digits_run):
    """Saved from a 4×2 FSDP mesh, restored onto a 1×2 mesh: values equal, new shardings."""
    saved_out, _ = parity_run
    out = os.path.join(saved_out, "restore")
    os.makedirs(out)
    spec = {
        "out": out,
        "init_from": fp_digits_run,
        "checkpoint": os.path.join(saved_out, "checkpoint"),
        "data": 1,
        "model": 2,
        "fsdp_min_size": FSDP_SMALL,
    }
    run_worker("restore", spec, devices=2)
    with open(os.path.join(out, "restore.json")) as f:
        report = json.load(f)
    assert report["devices"] == 2 and report["sharded_leaves"] >= 2
    assert report["same_sharding"], "a restored leaf did not take the template's sharding"
    restored, saved = load(out, "restored"), load(saved_out, "checkpoint")
    assert restored.keys() == saved.keys()
    for key in saved:
        np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)
    raw = load(out, "raw_params")
    for key, value in load(saved_out, "checkpoint_params").items():
        np.testing.assert_array_equal(raw[key], value, err_msg=key)
    assert report["step"] == STEPS + 1 and np.isfinite(report["loss"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_to_identical_parameters(parity_run, fp_digits_run, tmp_path):
    """Two jax processes (4 CPU devices each, gloo collectives over loopback) train LSQ for
    a few steps, evaluate and checkpoint together; both end with the same parameters, equal
    to the single-process 8-device run on the same global batches."""
    coordinator = f"127.0.0.1:{free_port()}"
    processes = []
    for process_id in range(2):
        spec = {
            "out": str(tmp_path),
            "init_from": fp_digits_run,
            "coordinator": coordinator,
            "num_processes": 2,
            "process_id": process_id,
        }
        processes.append(start("multiprocess", spec, 4, str(tmp_path / f"process{process_id}.log")))
    finish(processes, timeout=600)
    reports = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    states = [load(str(tmp_path), f"process{i}") for i in range(2)]
    for key in states[0]:
        np.testing.assert_array_equal(states[1][key], states[0][key], err_msg=key)
    out, parity = parity_run
    assert_trees_close(states[0], load(out, "lsq_8x1"))
    np.testing.assert_allclose(reports[0]["losses"], parity["lsq_8x1"]["losses"], rtol=RTOL)
    for report in reports:
        assert (report["processes"], report["local_devices"], report["devices"]) == (2, 4, 8)
        assert report["compiles"] == 1 and report["sharding_kept"] and report["restored_equal"]
        assert report["accuracy"] == parity["lsq_8x1"]["accuracy"]
        assert report["local_batch"] == 16  # each process reads half of the global batch of 32


def test_batch_that_does_not_divide_over_devices_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxquant.main",
            "--config",
            os.path.join(REPO, "configs", "digits.py") + ":lsq",
            "--workdir",
            str(tmp_path),
            "--config.data.batch_size=60",
        ],
        env=worker_env(8),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "jaxquant: error: data.batch_size=60 does not divide evenly over 8 devices and 1 "
        "processes; choose a multiple of 8"
    )


# ----------------------------------------------------------------------------- in-process


def abstract_mesh(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), parallel.BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def test_fsdp_rule_splits_the_largest_divisible_dimension_of_large_leaves():
    mesh = abstract_mesh(4, 2)
    assert parallel.leaf_sharding((3, 3, 16, 32), mesh, 1024).spec == PartitionSpec(None, None, None, "model")
    assert parallel.leaf_sharding((33, 16), mesh, 100).spec == PartitionSpec(None, "model")
    assert parallel.leaf_sharding((3, 3, 16, 32), mesh, 10_000).spec == PartitionSpec()  # small
    assert parallel.leaf_sharding((5, 7, 9), mesh, 1).spec == PartitionSpec()  # nothing divides
    assert parallel.leaf_sharding((), mesh, 0).spec == PartitionSpec()
    assert parallel.leaf_sharding((4096, 4096), abstract_mesh(8, 1)).spec == PartitionSpec()
    tree = {"kernel": np.zeros((64, 4096)), "step": np.zeros(())}
    specs = parallel.state_sharding(tree, mesh)
    assert specs["kernel"].spec == PartitionSpec(None, "model") and specs["step"].spec == PartitionSpec()


def test_batch_must_divide_over_all_batch_shards():
    mesh = abstract_mesh(4, 2)
    assert parallel.batch_shards(mesh) == 8
    parallel.check_divisible_over_mesh(64, mesh, "data.batch_size")
    with pytest.raises(ValueError, match=r"^data.eval_batch_size=100 does not divide evenly over 8 devices"):
        parallel.check_divisible_over_mesh(100, mesh, "data.eval_batch_size")


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error():
    with pytest.raises(ValueError, match="mesh.model=3 must be a positive divisor"):
        parallel.create_mesh(ml_collections.ConfigDict({"data": -1, "model": 3}))
    with pytest.raises(ValueError, match="mesh.data=2 × mesh.model=1 does not fit"):
        parallel.create_mesh(ml_collections.ConfigDict({"data": 2, "model": 1}))
    mesh = parallel.create_mesh(ml_collections.ConfigDict({"data": -1, "model": 1}))
    assert mesh.axis_names == parallel.BATCH_AXES
    assert all(t == AxisType.Auto for t in mesh.axis_types)


def distributed(**fields) -> ml_collections.ConfigDict:
    base = dict(initialize="auto", coordinator_address="", num_processes=0, process_id=-1)
    return ml_collections.ConfigDict({**base, "initialization_timeout": 30, **fields})


def test_distributed_start_follows_the_launcher_and_the_config():
    assert parallel.distributed_kwargs(distributed(), {}) is None
    assert parallel.distributed_kwargs(distributed(), {"SLURM_STEP_NUM_TASKS": "1"}) is None
    assert parallel.distributed_kwargs(distributed(), {"SLURM_STEP_NUM_TASKS": "16"}) == {
        "initialization_timeout": 30
    }
    assert parallel.distributed_kwargs(distributed(), {"OMPI_COMM_WORLD_SIZE": "2"}) is not None
    assert parallel.distributed_kwargs(distributed(), {"TPU_WORKER_HOSTNAMES": "a,b"}) is not None
    assert parallel.distributed_kwargs(distributed(), {"JAX_COORDINATOR_ADDRESS": "h:1"}) is not None
    explicit = distributed(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert parallel.distributed_kwargs(explicit, {}) == {
        "initialization_timeout": 30,
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert parallel.distributed_kwargs(distributed(initialize="always"), {}) == {"initialization_timeout": 30}
    assert parallel.distributed_kwargs(distributed(initialize="never"), {"SLURM_STEP_NUM_TASKS": "8"}) is None
    with pytest.raises(ValueError, match=r"distributed.initialize='yes' is not allowed"):
        parallel.distributed_kwargs(distributed(initialize="yes"), {})
