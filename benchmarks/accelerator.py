"""One-call device benchmark: train-step speed in float32 and bfloat16, achieved FLOP/s, the
cost of a Hessian-vector product, and data-parallel scaling — on whatever backend runs it.

    python benchmarks/accelerator.py [--quick] [--out benchmarks/results/accelerator.json]

For ResNet-18 (CIFAR stem) and ResNet-20 on random 32×32×3 images, methods ``fp`` and ``lsq``
W4A4, ``model.compute_dtype`` ``float32`` and ``bfloat16``, batch 256 and 1024: images/s
(median of timed rounds after warm-up), the FLOPs of one compiled step from XLA's cost
analysis, achieved FLOP/s and its fraction of the device's peak (``PEAK_FLOPS``). Then one
HVP of ResNet-20 FP (float32, as every curvature measurement) against one of its train
steps, and the FP ResNet-20 step on 1 device against all devices at the same per-device
batch. ``--quick`` (this CPU) runs ResNet-20 only at batch 8 with fewer rounds;
``--models`` picks other models (the test suite runs ``--quick --models small_cnn``).
Prints a table and writes every number, the backend and device kind as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxquant import curvature, parallel  # noqa: E402
from jaxquant.data.sources import array_split  # noqa: E402
from jaxquant.defaults import get_config  # noqa: E402
from jaxquant.train.loop import make_train_step  # noqa: E402
from jaxquant.train.setup import build_run, create_train_state  # noqa: E402

# Dense peak FLOP/s per device by ``jax.devices()[0].device_kind`` and compute dtype, from the
# vendors' data sheets (NVIDIA H100/H200 SXM: 989 TFLOP/s bf16 and 67 TFLOP/s fp32 without
# sparsity; A100 SXM: 312 bf16, 19.5 fp32; Google Cloud TPU v4: 275 bf16, v5e: 197 bf16,
# v5p: 459 bf16; TPUs have no fp32 matrix unit rate, so fp32 is left out). Unknown kinds
# (CPUs) get no fraction.
PEAK_FLOPS = {
    "NVIDIA H200": {"bfloat16": 989e12, "float32": 67e12},
    "NVIDIA H100 80GB HBM3": {"bfloat16": 989e12, "float32": 67e12},
    "NVIDIA A100-SXM4-80GB": {"bfloat16": 312e12, "float32": 19.5e12},
    "NVIDIA A100-SXM4-40GB": {"bfloat16": 312e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12},
    "TPU v5": {"bfloat16": 459e12},
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-20 only, small batches (CPU)")
    parser.add_argument("--out", default="benchmarks/results/accelerator.json")
    parser.add_argument(
        "--models", default="", help="comma-separated models (default resnet18,resnet20; --quick resnet20)"
    )
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (0: 5, or 2 with --quick)")
    parser.add_argument("--steps", type=int, default=0, help="steps per round (0: 10, or 2 with --quick)")
    return parser.parse_args(argv)


def random_split(num_images: int):
    rng = np.random.default_rng(0)
    images = rng.random((num_images, 32, 32, 3), dtype=np.float32)
    return array_split("random", images, rng.integers(0, 10, num_images), 10, 1.0, 0.5, 0.29)


def build(model: str, method: str, dtype: str, batch: int, devices: int = -1):
    """``(run, state, train_step, device batch)`` of one setting, on ``devices`` devices."""
    config = get_config()
    config.model.name, config.method.name, config.model.compute_dtype = model, method, dtype
    config.data.batch_size = config.data.eval_batch_size = batch
    config.quant.calibration_images = min(batch, 256)
    config.train.num_steps, config.train.bn_reestimate = 10**6, "never"
    config.mesh.data = devices
    split = random_split(2 * batch)
    run = build_run(config, splits=(split, split))
    state = create_train_state(run)
    step = make_train_step(run, run.state_sharding(state))
    return run, state, step, parallel.shard_batch(run.batches[0], run.mesh)


def step_flops(train_step, state, batch) -> float | None:
    """FLOPs of one compiled train step from XLA's cost analysis (None where it has none)."""
    try:
        analysis = train_step.lower(state, batch).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis still gets its timings
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def time_steps(train_step, state, batch, rounds: int, steps: int) -> tuple[list[float], object]:
    """Seconds per step of each timed round, after a compile and a warm-up step."""
    for _ in range(2):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = train_step(state, batch)
        jax.block_until_ready((state, metrics))
        seconds.append((time.perf_counter() - start) / steps)
    return seconds, state


def train_step_rows(args, device_kind: str) -> list[dict]:
    models = (
        args.models.split(",") if args.models else ("resnet20",) if args.quick else ("resnet18", "resnet20")
    )
    batches = (8,) if args.quick else (256, 1024)
    rows = []
    for model in models:
        for batch in batches:
            for method in ("fp", "lsq"):
                for dtype in ("float32", "bfloat16"):
                    start = time.time()
                    _, state, train_step, device_batch = build(model, method, dtype, batch)
                    flops = step_flops(train_step, state, device_batch)
                    seconds, _ = time_steps(train_step, state, device_batch, args.rounds, args.steps)
                    per_step = statistics.median(seconds)
                    achieved = flops / per_step if flops else None
                    peak = PEAK_FLOPS.get(device_kind, {}).get(dtype)
                    rows.append(
                        {
                            "model": model,
                            "method": method,
                            "dtype": dtype,
                            "batch": batch,
                            "images_per_s": batch / per_step,
                            "step_s": per_step,
                            "step_s_rounds": seconds,
                            "flops_per_step": flops,
                            "achieved_flops": achieved,
                            "peak_fraction": achieved / peak if achieved and peak else None,
                            "wall_s": time.time() - start,
                        }
                    )
                    print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    tflops = f"{row['achieved_flops'] / 1e12:8.3f}" if row["achieved_flops"] else "       -"
    peak = f"{100 * row['peak_fraction']:6.1f} %" if row["peak_fraction"] else "       -"
    return (
        f"{row['model']:<9} {row['method']:<4} {row['dtype']:<9} {row['batch']:>5} "
        f"{row['images_per_s']:>11.1f} {tflops} {peak}"
    )


def hvp_against_step(args, model: str) -> dict:
    """One HVP of ``model`` FP (float32) against one of its float32 train steps."""
    batch = 8 if args.quick else 256
    run, state, train_step, device_batch = build(model, "fp", "float32", batch)
    step_seconds, state = time_steps(train_step, state, device_batch, args.rounds, args.steps)
    host = run.train_split.batch(np.arange(batch))
    stacked = {k: jnp.asarray(v)[None] for k, v in host.items()}
    variables = jax.tree.map(jnp.copy, state.variables)
    loss_fn, params, data = curvature.model_objective(run.ctx.model, variables, stacked)
    vector = curvature.rademacher_like(jax.random.PRNGKey(0), params)
    hvp = lambda: curvature.jitted_hvp(loss_fn, params, data, vector)
    jax.block_until_ready(hvp())
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            out = hvp()
        jax.block_until_ready(out)
        seconds.append((time.perf_counter() - start) / args.steps)
    hvp_s, step_s = statistics.median(seconds), statistics.median(step_seconds)
    return {"model": model, "batch": batch, "hvp_s": hvp_s, "step_s": step_s, "hvp_over_step": hvp_s / step_s}


def scaling(args, model: str) -> dict:
    """FP ``model`` images/s on 1 device and on all, at the same per-device batch."""
    per_device = 8 if args.quick else 256
    count = jax.device_count()
    result = {"model": model, "devices": count, "per_device_batch": per_device}
    for devices in sorted({1, count}):
        _, state, train_step, device_batch = build(model, "fp", "float32", per_device * devices, devices)
        seconds, _ = time_steps(train_step, state, device_batch, args.rounds, args.steps)
        result[f"images_per_s_{devices}"] = per_device * devices / statistics.median(seconds)
    result["speedup"] = result[f"images_per_s_{count}"] / result["images_per_s_1"]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.steps = args.steps or (2 if args.quick else 10)
    device = jax.devices()[0]
    header = {
        "date": str(datetime.date.today()),
        "host": platform.node(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "quick": args.quick,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
    }
    print(
        f"# {header['date']} | {header['backend']} {header['device_kind']} x{header['device_count']} "
        f"| jax {header['jax']} | {args.rounds} rounds of {args.steps} steps"
    )
    print(
        f"{'model':<9} {'meth':<4} {'dtype':<9} {'batch':>5} {'images/s':>11} {'TFLOP/s':>8} {'of peak':>8}"
    )
    start = time.time()
    result = {**header, "train_steps": train_step_rows(args, device.device_kind)}
    model = result["train_steps"][-1]["model"]  # resnet20 unless --models says otherwise
    result["hvp"] = hvp_against_step(args, model)
    hvp = result["hvp"]
    print(f"HVP / train step ({model} FP, float32, batch {hvp['batch']}): {hvp['hvp_over_step']:.2f}")
    result["scaling"] = scaling(args, model)
    scale = result["scaling"]
    print(
        f"data parallel, {model} FP, {scale['per_device_batch']} per device: "
        f"{scale['devices']} devices {scale['speedup']:.2f}x one device"
    )
    result["wall_s"] = time.time() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"# {result['wall_s']:.0f} s; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
