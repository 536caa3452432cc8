"""Throughput of the ResNet-20 LSQ train step on 1 against 2 forced CPU devices.

    python benchmarks/parallel.py [--batch 128] [--steps 10] [--repeats 3]

Both run the same global batch (CIFAR-shaped 32×32×3 synthetic images: throughput does not
depend on pixel values) through the same jitted, mesh-sharded step; with 2 devices each
holds half of it. The device count is fixed when jax is imported, so every measurement is a
fresh subprocess; runs alternate 1, 2, 1, 2, ... so that load from other programs hits both
alike. Prints steps/s per run, the medians and their ratio (2 devices / 1 device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(batch_size: int, steps: int) -> dict:
    """Steps/s of the LSQ ResNet-20 step on all (forced) devices of this process."""
    import jax
    import numpy as np

    from jaxquant import parallel
    from jaxquant.data.sources import array_split
    from jaxquant.defaults import get_config
    from jaxquant.train.loop import make_train_step
    from jaxquant.train.setup import build_run, create_train_state

    config = get_config()
    config.method.name, config.model.name, config.data.batch_size = "lsq", "resnet20", batch_size
    rng = np.random.default_rng(0)
    size = batch_size * (steps + 2)
    images, labels = rng.random((size, 32, 32, 3), np.float32), rng.integers(0, 10, size)
    split = array_split("synthetic", images, labels, num_classes=10, scale=1.0, mean=0.5, std=0.25)
    config.train.num_steps = steps + 2
    run = build_run(config, splits=(split, split))
    mesh = run.mesh
    state = create_train_state(run)
    train_step = make_train_step(run, run.state_sharding(state))
    batches = run.batches
    for step in range(2):  # compile, then one warm step
        state, metrics = train_step(state, parallel.shard_batch(batches[step], mesh))
    jax.block_until_ready(metrics)
    placed = [parallel.shard_batch(batches[2 + i], mesh) for i in range(steps)]
    start = time.perf_counter()
    for batch in placed:
        state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
    return {"devices": mesh.size, "steps_per_sec": steps / (time.perf_counter() - start)}


def child(devices: int, batch_size: int, steps: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--child", "--batch", str(batch_size), "--steps", str(steps)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.batch, args.steps)))
        return
    rates: dict[int, list[float]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for devices in (1, 2):
            rate = child(devices, args.batch, args.steps)["steps_per_sec"]
            rates[devices].append(rate)
            print(f"run {repeat + 1}: {devices} device(s): {rate:.3f} steps/s", flush=True)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        f"ResNet-20 LSQ W4A4, batch {args.batch}, CPU cores {os.cpu_count()}: median steps/s "
        f"1 device {one:.3f}, 2 devices {two:.3f}; ratio 2/1 = {two / one:.2f}"
    )


if __name__ == "__main__":
    main()
