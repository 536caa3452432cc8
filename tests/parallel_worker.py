"""Subprocess side of tests/test_parallel.py (the device count is fixed when jax is imported).

    python tests/parallel_worker.py parity  SPEC_JSON   # one process, forced CPU devices
    python tests/parallel_worker.py restore SPEC_JSON   # restore a checkpoint onto a new mesh
    python tests/parallel_worker.py multiprocess SPEC_JSON   # one of several jax processes

Each command writes ``.npz`` files of flattened pytrees (``keystr`` → array) and a
``.json`` report into ``spec['out']``; the test process compares them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback

import jax
import numpy as np
from conftest import tiny_config

from jaxquant import parallel
from jaxquant.data import TrainBatches
from jaxquant.train.checkpoint import Checkpointer, load_raw
from jaxquant.train.loop import evaluate, make_eval_step, make_train_step
from jaxquant.train.setup import abstract_train_state, build_run, create_train_state

STEPS = 3


def flat(tree) -> dict[str, np.ndarray]:
    """``keystr(path) → value`` of this process's copy of every leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(local_value(leaf)) for path, leaf in leaves}


def local_value(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        assert leaf.is_fully_replicated, "multi-process dumps expect replicated leaves"
        return leaf.addressable_data(0)
    return leaf


def config_for(method: str, init_from: str, data: int, model: int, fsdp_min_size: int):
    config = tiny_config(method__name=method, init_from=init_from, train__num_steps=STEPS)
    config.optim.learning_rate = 0.01  # the group protocol's rate: every method stays stable
    config.mesh.data, config.mesh.model, config.mesh.fsdp_min_size = data, model, fsdp_min_size
    return config


def train(config, out: str, tag: str) -> dict:
    """``STEPS`` train steps as the loop runs them; dump state and per-step losses."""
    run = build_run(config)
    state = create_train_state(run)
    sharding = run.state_sharding(state)
    train_step = make_train_step(run, sharding)
    batches = TrainBatches(run.train_split, config.data.batch_size, config.seed)
    losses = []
    for step in range(STEPS):
        state, metrics = train_step(state, parallel.shard_batch(batches[step], run.mesh))
        losses.append(float(metrics["loss"]))
    kept = jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), state, sharding)
    accuracy = evaluate(
        make_eval_step(run.ctx.model),
        state.params,
        state.model_state,
        run.test_split,
        config.data.eval_batch_size,
        run.mesh,
    )["accuracy"]
    specs = [s.spec for s in jax.tree.leaves(sharding)]
    np.savez(os.path.join(out, f"{tag}.npz"), **flat({"params": state.params, **state.model_state}))
    report = {
        "losses": losses,
        "accuracy": accuracy,
        "compiles": train_step._cache_size(),
        "sharding_kept": all(jax.tree.leaves(kept)),
        "sharded_leaves": sum(any(axis is not None for axis in spec) for spec in specs),
        "devices": run.mesh.size,
    }
    return report, run, state


def module_exists(name: str) -> bool:
    """Whether module ``name`` exists: ``False`` if it or a parent package is missing; any
    other import error (a dependency it needs is missing, a bug) is raised."""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            return False
        raise
    return True


def hutchinson_probes(run, state) -> list[float] | str:
    """Per-probe ``vᵀHv`` of the trained model on the first test batch, split over the mesh
    (``jaxquant.curvature``'s API); the error text if that API does not fit."""
    try:
        from jaxquant.curvature.hutchinson import hutchinson_trace
        from jaxquant.curvature.hvp import model_objective

        batch = run.test_split.batch(np.arange(run.config.data.batch_size))
        stacked = {k: v[None] for k, v in batch.items()}  # [K=1, B, ...]
        batches = parallel.place_global_batch(stacked, run.mesh, batch_axis=1)
        objective = model_objective(run.ctx.model, state.variables, batches)
        estimate = hutchinson_trace(*objective, jax.random.PRNGKey(1), num_probes=4, chunk_size=4, log=None)
        return [float(v) for v in estimate.probe_values]
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        return traceback.format_exc()


def parity(spec: dict) -> None:
    """Each method on each mesh layout; the LSQ state on the FSDP mesh is also checkpointed."""
    out, reports = spec["out"], {}
    for method, layouts in spec["runs"].items():
        for data, model, fsdp_min_size in layouts:
            tag = f"{method}_{data}x{model}"
            config = config_for(method, spec["init_from"], data, model, fsdp_min_size)
            started = time.time()
            reports[tag], run, state = train(config, out, tag)
            print(f"{tag}: {time.time() - started:.1f} s", flush=True)
            if tag in spec.get("hutchinson", ()):
                reports[tag]["hutchinson"] = hutchinson_probes(run, state)
            if tag == spec.get("checkpoint"):
                checkpointer = Checkpointer(os.path.join(out, "checkpoint"))
                checkpointer.save(STEPS, state)
                checkpointer.close()
                np.savez(os.path.join(out, "checkpoint.npz"), **flat(state))
                np.savez(os.path.join(out, "checkpoint_params.npz"), **flat(state.params))
    with open(os.path.join(out, "parity.json"), "w") as f:
        json.dump(reports, f)


def restore(spec: dict) -> None:
    """Restore the saved state onto this process's mesh; run one more step from it."""
    config = config_for("lsq", spec["init_from"], spec["data"], spec["model"], spec["fsdp_min_size"])
    config.train.num_steps = STEPS + 1
    run = build_run(config)
    template = abstract_train_state(run)
    checkpointer = Checkpointer(spec["checkpoint"])
    state = checkpointer.restore(template)
    checkpointer.close()
    same_sharding = jax.tree.map(
        lambda x, t: x.sharding.is_equivalent_to(t.sharding, x.ndim), state, template
    )
    np.savez(os.path.join(spec["out"], "restored.npz"), **flat(state))
    _, raw = load_raw(spec["checkpoint"])
    np.savez(os.path.join(spec["out"], "raw_params.npz"), **flat(raw["params"]))
    train_step = make_train_step(run, run.state_sharding(state))
    batch = TrainBatches(run.train_split, config.data.batch_size, config.seed)[STEPS]
    state, metrics = train_step(state, parallel.shard_batch(batch, run.mesh))
    report = {
        "devices": run.mesh.size,
        "same_sharding": all(jax.tree.leaves(same_sharding)),
        "sharded_leaves": sum(
            any(axis is not None for axis in x.sharding.spec) for x in jax.tree.leaves(template)
        ),
        "step": int(state.step),
        "loss": float(metrics["loss"]),
    }
    with open(os.path.join(spec["out"], "restore.json"), "w") as f:
        json.dump(report, f)


def multiprocess(spec: dict) -> None:
    """One of ``num_processes`` jax processes: train, evaluate, checkpoint together."""
    config = config_for("lsq", spec["init_from"], -1, 1, parallel.FSDP_MIN_SIZE)
    config.distributed.coordinator_address = spec["coordinator"]
    config.distributed.num_processes = spec["num_processes"]
    config.distributed.process_id = spec["process_id"]
    config.distributed.initialization_timeout = 120
    assert parallel.initialize_distributed(config)
    tag = f"process{jax.process_index()}"
    report, run, state = train(config, spec["out"], tag)
    checkpointer = Checkpointer(os.path.join(spec["out"], "checkpoint"))
    checkpointer.save(STEPS, state)
    restored = checkpointer.restore(run.place_state(jax.tree.map(np.zeros_like, flat_state_host(state))))
    checkpointer.close()
    same = jax.tree.map(lambda a, b: bool(np.array_equal(local_value(a), local_value(b))), state, restored)
    report.update(
        processes=jax.process_count(),
        local_devices=jax.local_device_count(),
        local_batch=len(TrainBatches(run.train_split, config.data.batch_size, config.seed)[0]["label"]),
        restored_equal=all(jax.tree.leaves(same)),
    )
    with open(os.path.join(spec["out"], f"{tag}.json"), "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


def flat_state_host(state):
    """The state as host arrays (this process's copy), for building a restore template."""
    return jax.tree.map(lambda x: np.asarray(local_value(x)), state)


if __name__ == "__main__":
    command, spec_json = sys.argv[1], sys.argv[2]
    {"parity": parity, "restore": restore, "multiprocess": multiprocess}[command](json.loads(spec_json))
