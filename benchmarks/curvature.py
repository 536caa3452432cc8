"""Cost of curvature measurements against training, side by side in one process.

ResNet-20 at batch 128 on random 32×32×3 data (the cost does not depend on the values):

* one Hessian-vector product (forward-over-reverse, eval mode) against one train step;
* a 10-probe Hutchinson trace against 10 train steps.

Usage: ``python benchmarks/curvature.py [--method fp|lsq] [--repeats N]``. Each function is
compiled and run once before it is timed; the times are medians over ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from jaxquant import curvature, parallel
from jaxquant.data.sources import array_split
from jaxquant.defaults import get_config
from jaxquant.methods import MethodContext, get_method
from jaxquant.models import create_model
from jaxquant.train.loop import Run, create_train_state, make_train_step

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
    method = get_method(method_name)
    model = create_model("resnet20", 10, method.policy(config))
    run = Run(config, method, MethodContext(config, model), split, split, parallel.create_mesh())
    return run, split.batch(np.arange(BATCH))


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fp", choices=["fp", "lsq"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    run, batch = build(args.method)
    state = create_train_state(run, total_steps=1000)
    train_step = make_train_step(run, total_steps=1000)
    device_batch = jax.device_put(batch)
    stacked = {k: v[None] for k, v in batch.items()}
    loss_fn, params, data = curvature.model_objective(run.ctx.model, state.variables, stacked)
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

    step = median_seconds(one_step, args.repeats)
    hvp = median_seconds(one_hvp, args.repeats)
    steps10 = median_seconds(ten_steps, args.repeats)
    trace10 = median_seconds(ten_probe_trace, args.repeats)
    print(
        f"ResNet-20 ({args.method}, {size:,} parameters), batch {BATCH}, 32x32x3, "
        f"backend {jax.default_backend()} ({jax.device_count()} device), median of {args.repeats}"
    )
    print(f"{'what':<24}{'seconds':>10}{'ratio':>10}")
    print(f"{'train step':<24}{step:>10.3f}{1:>10.2f}")
    print(f"{'HVP':<24}{hvp:>10.3f}{hvp / step:>10.2f}")
    print(f"{'10 train steps':<24}{steps10:>10.3f}{1:>10.2f}")
    print(f"{'10-probe trace':<24}{trace10:>10.3f}{trace10 / steps10:>10.2f}")


if __name__ == "__main__":
    main()
