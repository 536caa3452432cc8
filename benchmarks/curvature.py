"""Cost of curvature measurements against training, side by side in one process.

ResNet-20 at batch 128 on random 32×32×3 data (the cost does not depend on the values):

* one Hessian-vector product (forward-over-reverse, eval mode) against one train step;
* a 10-probe Hutchinson trace against 10 train steps.

Usage: ``python benchmarks/curvature.py [--method fp|lsq] [--repeats N]``. Each function is
compiled and run once, then all are timed in turn ``--repeats`` times (so that a change of
machine load hits all alike); the table gives the fastest and the median time of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant import curvature
from jaxquant.data.sources import array_split
from jaxquant.defaults import get_config
from jaxquant.train.loop import make_train_step
from jaxquant.train.setup import build_run, create_train_state

BATCH = 128


def build(method_name: str):
    config = get_config()
    config.model.name = "resnet20"
    config.method.name = method_name
    config.data.batch_size = BATCH
    config.quant.calibration_images = BATCH
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2 * BATCH, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 2 * BATCH)
    split = array_split("random", images, labels, 10, 255.0, 0.5, 0.25)
    config.model.name = "resnet20"
    config.train.num_steps = 1000
    run = build_run(config, splits=(split, split))
    return run, split.batch(np.arange(BATCH))


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved_times(functions: dict, repeats: int) -> dict[str, list[float]]:
    """Run each function once to compile it, then time them in turn ``repeats`` times, so
    that a change in machine load hits all of them alike."""
    for fn in functions.values():
        jax.block_until_ready(fn())
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            times[name].append(timed(fn))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fp", choices=["fp", "lsq"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    run, batch = build(args.method)
    state = create_train_state(run)
    train_step = make_train_step(run)
    device_batch = jax.device_put(batch)
    stacked = {k: v[None] for k, v in batch.items()}
    variables = jax.tree.map(jnp.copy, state.variables)  # the train step donates the state's buffers
    loss_fn, params, data = curvature.model_objective(run.ctx.model, variables, stacked)
    vector = curvature.rademacher_like(jax.random.PRNGKey(1), params)
    size = sum(np.size(x) for x in jax.tree.leaves(params))

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = train_step(holder["state"], device_batch)
        return metrics["loss"]

    def ten_steps():
        for _ in range(10):
            loss = one_step()
        return loss

    def one_hvp():
        return curvature.jitted_hvp(loss_fn, params, data, vector)

    def ten_probe_trace():
        key = jax.random.PRNGKey(2)
        return curvature.hutchinson_trace(loss_fn, params, data, key, num_probes=10, log=None).trace

    times = interleaved_times(
        {
            "train step": one_step,
            "HVP": one_hvp,
            "10 train steps": ten_steps,
            "10-probe trace": ten_probe_trace,
        },
        args.repeats,
    )
    print(
        f"ResNet-20 ({args.method}, {size:,} parameters), batch {BATCH}, 32x32x3, "
        f"backend {jax.default_backend()} ({jax.device_count()} device), {args.repeats} interleaved repeats"
    )
    print(f"{'what':<18}{'min s':>9}{'median s':>10}{'ratio (min)':>13}{'ratio (median)':>16}")
    baselines = {"train step": "train step", "HVP": "train step", "10 train steps": "10 train steps"}
    baselines["10-probe trace"] = "10 train steps"
    for name, values in times.items():
        base = times[baselines[name]]
        ratio_min = min(values) / min(base)
        ratio_median = statistics.median(values) / statistics.median(base)
        print(
            f"{name:<18}{min(values):>9.3f}{statistics.median(values):>10.3f}"
            f"{ratio_min:>13.2f}{ratio_median:>16.2f}"
        )


if __name__ == "__main__":
    main()
