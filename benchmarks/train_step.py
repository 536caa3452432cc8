"""Train-step throughput per method, measured side by side in one run.

Times the jitted train step of ResNet-20 (default) at batch 128 on random 32×32×3 inputs
(``--image_size``, ``--channels``: 28 and 1 for the Fashion-MNIST models),
after warm-up, for each method in ``--methods`` (default ``fp,lsq``; ``all`` = every
registered method). Repetitions are interleaved (fp, lsq, fp, lsq, ...) so that load
changes on a shared machine hit every method alike. Prints images/s (median and range over
repetitions) and each method's ratio to the first one.

The run is built through the training code paths (``build_run``, ``create_train_state``,
``make_train_step``) with the data replaced by random images; a method that needs an FP
teacher gets a randomly initialised FP model of the same architecture, saved as a checkpoint
and passed as ``init_from``.

    python benchmarks/train_step.py [--methods fp,lsq|all] [--repetitions 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from jaxquant import parallel
from jaxquant.data.sources import array_split
from jaxquant.defaults import get_config
from jaxquant.methods import METHODS
from jaxquant.train.checkpoint import Checkpointer
from jaxquant.train.loop import make_train_step
from jaxquant.train.setup import build_run, create_train_state


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fp,lsq", help="comma-separated method names, or 'all'")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, help="input channels (1 for Fashion-MNIST)")
    parser.add_argument("--w_bits", type=int, default=4)
    parser.add_argument("--a_bits", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="train steps per timing round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    return parser.parse_args(argv)


def random_split(num_images: int, size: int, seed: int = 0, channels: int = 3):
    """Random ``size × size × channels`` images with 10 random labels, as a data split."""
    rng = np.random.default_rng(seed)
    images = rng.random((num_images, size, size, channels), dtype=np.float32)
    labels = rng.integers(0, 10, num_images)
    return array_split("random", images, labels, num_classes=10, scale=1.0, mean=0.5, std=0.29)


def method_config(args, method: str, teacher_dir: str):
    config = get_config()
    config.name = f"bench_{method}"
    config.method.name = method
    config.model.name = args.model
    config.data.batch_size = args.batch
    config.quant.w_bits = args.w_bits
    config.quant.a_bits = args.a_bits
    config.train.num_steps = 10**6
    if METHODS[method].needs_teacher:
        config.init_from = teacher_dir
    return config


def build(config, split):
    """``(train_step, state, batches)`` for ``config`` on ``split``, compiled and warmed up."""
    run = build_run(config, splits=(split, split))
    state = parallel.replicate(create_train_state(run), run.mesh)
    train_step = make_train_step(run)
    device_batches = [parallel.shard_batch(run.batches[i], run.mesh) for i in range(4)]
    return train_step, state, device_batches


def save_random_teacher(args, split, directory: str) -> None:
    """A randomly initialised FP model of the benchmarked architecture, as a checkpoint."""
    config = method_config(args, "fp", directory)
    run = build_run(config, splits=(split, split))
    checkpointer = Checkpointer(os.path.join(directory, "checkpoints"))
    checkpointer.save(0, create_train_state(run))
    checkpointer.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    methods = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"benchmark: error: --methods {unknown} unknown: allowed {sorted(METHODS)} or 'all'")
    split = random_split(4 * args.batch, args.image_size, channels=args.channels)
    teacher_dir = tempfile.mkdtemp(prefix="bench_teacher_")
    if any(METHODS[m].needs_teacher for m in methods):
        save_random_teacher(args, split, teacher_dir)

    print(
        f"# {datetime.date.today()} | {platform.node()} | {os.cpu_count()} CPUs | "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}"
    )
    print(
        f"# {args.model}, batch {args.batch}, "
        f"{args.image_size}x{args.image_size}x{args.channels} random inputs, "
        f"W{args.w_bits}A{args.a_bits} for quantized methods; {args.repetitions} interleaved rounds "
        f"of {args.steps} steps after {args.warmup} warm-up steps"
    )
    runs = {}
    for method in methods:
        start = time.time()
        try:
            train_step, state, batches = build(method_config(args, method, teacher_dir), split)
            for i in range(args.warmup + 1):  # the first call compiles
                state, _ = train_step(state, batches[i % len(batches)])
            jax.block_until_ready(state)
        except Exception as error:  # noqa: BLE001 - one method's failure must not stop the others
            print(f"# {method}: skipped ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
            continue
        runs[method] = [train_step, state, batches]
        print(f"# {method}: compiled and warmed up in {time.time() - start:.1f} s", flush=True)

    rates: dict[str, list[float]] = {m: [] for m in runs}
    for _ in range(args.repetitions):
        for method, entry in runs.items():
            train_step, state, batches = entry
            start = time.perf_counter()
            for i in range(args.steps):
                state, _ = train_step(state, batches[i % len(batches)])
            jax.block_until_ready(state)
            rates[method].append(args.steps * args.batch / (time.perf_counter() - start))
            entry[1] = state

    if not rates:
        return

    def ratio(method: str, reference: str) -> float:
        """Median over rounds of the per-round throughput ratio (rounds are side by side)."""
        return statistics.median(a / b for a, b in zip(rates[method], rates[reference], strict=True))

    reference = next(iter(rates))
    print(f"{'method':<10} {'images/s':>9} {'min':>8} {'max':>8} {'ratio to ' + reference:>14}")
    for method, values in rates.items():
        spread = f"{statistics.median(values):9.1f} {min(values):8.1f} {max(values):8.1f}"
        print(f"{method:<10} {spread} {ratio(method, reference):14.3f}")
    if "fp" in rates and "lsq" in rates:
        print(f"LSQ/FP throughput ratio: {ratio('lsq', 'fp'):.3f}")


if __name__ == "__main__":
    main()
