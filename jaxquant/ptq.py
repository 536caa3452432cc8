"""``mode = 'ptq'``: post-training quantization of a full-precision run (docs/methods.md §5).

For each bit setting of ``config.ptq.bits`` (``"8,6,4,3"`` means W8A8, W6A6, W4A4, W3A3;
an entry ``"w4a8"`` sets weights and activations apart), with no training:

1. build the model with the quantization policy of ``config.quant`` at those bits (first and
   last layer at ``quant.first_last_bits``) and load the FP weights of ``config.init_from``,
   whose BatchNorm statistics are first re-estimated on ``train.bn_reestimate_images`` clean
   training images when ``ptq.bn_reestimate`` (a DNQ network's running statistics were
   gathered under its training noise);
2. calibrate every step size and zero point on ``ptq.calibration_images`` training images
   with the observer ``ptq.observer`` (``minmax``, ``percentile`` with ``ptq.percentile``,
   ``mse`` with ``ptq.mse_grid``), weights per output channel, inputs per tensor;
3. evaluate on the test split.

Writes ``ptq_report.json`` into the workdir (bits, observer, accuracy, FP accuracy and every
quantizer's step sizes) and each bit setting's calibrated variables as
``calibrated/<bits>.npz`` (flat ``<collection>/<path>`` keys, written atomically; what
``mode = 'export'`` reads), and prints one table. The summary it returns carries one row per
bit setting (``rows``) and an accuracy-by-bits row (``comparison``) for the pipeline table.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from jaxquant import parallel
from jaxquant.checks import check_choice
from jaxquant.data import calibration_images
from jaxquant.methods import policy_from_config
from jaxquant.models import create_model, split_variables
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.observers import OBSERVERS, check_grid, check_percentile
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy
from jaxquant.quant.quantizers import check_bits
from jaxquant.train.loop import evaluate, make_eval_step, write_config
from jaxquant.train.metrics import format_table, to_python
from jaxquant.train.setup import (
    clean_batch_stats,
    init_from_errors,
    init_variables,
    load_run,
    run_splits,
    transfer_variables,
)

REPORT_FILE = "ptq_report.json"
CALIBRATED_DIR = "calibrated"
TABLE_COLUMNS = ["bits", "w_bits", "a_bits", "observer", "ptq_accuracy", "fp_accuracy"]


@dataclasses.dataclass(frozen=True)
class BitSetting:
    """Weight and activation bits of one PTQ run."""

    w_bits: int
    a_bits: int

    @property
    def label(self) -> str:
        return f"w{self.w_bits}a{self.a_bits}"


def parse_bits(value: Any, field: str = "ptq.bits") -> list[BitSetting]:
    """``"8,6,4,3"`` → W8A8, W6A6, W4A4, W3A3; ``"w4a8"`` → W4A8; each bit width in 1..16."""
    items = [value] if isinstance(value, int) else value
    if isinstance(items, str):
        items = [item for item in items.replace(" ", "").split(",") if item]
    settings = []
    for item in items:
        text = str(item).lower()
        match = re.fullmatch(r"(-?\d+)|w(-?\d+)a(-?\d+)", text)
        if match is None:
            raise ValueError(f"{field}={value!r}: entry {item!r} is neither a bit width nor 'w<b>a<b>'")
        both, w_bits, a_bits = match.groups()
        w_bits, a_bits = (int(both), int(both)) if both is not None else (int(w_bits), int(a_bits))
        settings.append(BitSetting(check_bits(w_bits, field), check_bits(a_bits, field)))
    if not settings:
        raise ValueError(f"{field}={value!r} is empty: give bit widths such as '8,6,4,3'")
    return settings


def observer_options(ptq: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
    """The options of ``ptq.observer`` from the ``ptq`` block, validated."""
    observer = check_choice(ptq.observer, sorted(OBSERVERS), "ptq.observer")
    if observer == "percentile":
        return (("percentile", check_percentile(ptq.percentile, "ptq.percentile")),)
    if observer == "mse":
        return (("grid", check_grid(ptq.mse_grid, "ptq.mse_grid")),)
    return ()


def ptq_policy(config: ml_collections.ConfigDict, setting: BitSetting) -> QuantPolicy:
    """``config.quant``'s policy at ``setting``, calibrated by min/max-style observers."""
    return policy_from_config(
        config,
        w_bits=setting.w_bits,
        a_bits=setting.a_bits,
        init="minmax",
        observer=config.ptq.observer,
        observer_options=observer_options(config.ptq),
        compute_dtype=config.model.compute_dtype,
    )


def step_sizes(params) -> dict[str, Any]:
    """``{quantizer path: step}`` for every quantizer in ``params`` (per channel: a flat list)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {
        path[: -len("/step")]: to_python(np.ravel(value)) if np.size(value) > 1 else float(value)
        for path, value in flat.items()
        if path.endswith("/step")
    }


def check_ptq_config(config: ml_collections.ConfigDict) -> list[BitSetting]:
    if not config.init_from:
        raise ValueError("mode='ptq' needs --config.init_from: the FP run (workdir or checkpoints folder)")
    settings = parse_bits(config.ptq.bits)
    observer_options(config.ptq)
    draw = config.ptq.calibration_draw
    if not isinstance(draw, int) or isinstance(draw, bool) or draw < 0:
        raise ValueError(f"ptq.calibration_draw={draw!r} must be an integer >= 0")
    if config.ptq.calibration_images < 1:
        raise ValueError(f"ptq.calibration_images={config.ptq.calibration_images!r} must be >= 1")
    return settings


def calibration_seed(config: ml_collections.ConfigDict) -> int:
    """The seed that draws the calibration images: the run's seed for ``ptq.calibration_draw``
    0, and an independent stream per (seed, draw) for the other draws."""
    draw = config.ptq.get("calibration_draw", 0)
    if draw == 0:
        return int(config.seed)
    return int(np.random.SeedSequence([int(config.seed), int(draw)]).generate_state(1)[0])


def run_ptq(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Quantize ``config.init_from`` at every bit setting; report and return the results."""
    settings = check_ptq_config(config)
    with init_from_errors(config.init_from):
        source = load_run(config.init_from)
    train_split, validation_split, test_split = run_splits(config)  # calibration reads train only
    mesh = parallel.create_mesh(config.get("mesh"))
    parallel.check_divisible_over_mesh(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    write_config(config, workdir)
    model_name = source.config.model.name  # the source run's network, whatever this config says
    model_kwargs = dict(source.config.model.get("kwargs", {}))
    rng = jax.random.PRNGKey(config.seed)
    images = calibration_images(train_split, config.ptq.calibration_images, calibration_seed(config))

    fp_policy = dataclasses.replace(FULL_PRECISION, compute_dtype=config.model.compute_dtype)
    fp_model = create_model(model_name, train_split.num_classes, fp_policy, **model_kwargs)
    fp_params, fp_state = split_variables(
        transfer_variables(init_variables(fp_model, train_split.image_shape, rng), source.variables_dict)
    )
    if config.ptq.bn_reestimate:
        fp_state = clean_batch_stats(config, fp_model, train_split, mesh, fp_params, fp_state)
    fp_variables = {"params": fp_params, "model_state": fp_state}

    def build_and_evaluate(policy: QuantPolicy, calibrated: bool):
        model = create_model(model_name, train_split.num_classes, policy, **model_kwargs)
        variables = transfer_variables(init_variables(model, train_split.image_shape, rng), fp_variables)
        if calibrated:
            variables = calibrate(model, variables, images)
        variables = parallel.replicate(dict(variables), mesh)
        params = variables.pop("params")
        eval_step = make_eval_step(model)
        result = evaluate(eval_step, params, variables, test_split, config.data.eval_batch_size, mesh)
        if validation_split is not None:
            validation = evaluate(
                eval_step, params, variables, validation_split, config.data.eval_batch_size, mesh
            )
            result["validation_accuracy"] = validation["accuracy"]
        return result, {"params": params, **variables}

    fp_result, _ = build_and_evaluate(fp_policy, calibrated=False)
    rows, results = [], []
    for setting in settings:
        result, variables = build_and_evaluate(ptq_policy(config, setting), calibrated=True)
        params = variables["params"]
        variables_file = save_variables(variables, workdir, setting)
        row = {
            "bits": setting.label,
            "w_bits": setting.w_bits,
            "a_bits": setting.a_bits,
            "observer": config.ptq.observer,
            "ptq_accuracy": float(result["accuracy"]),
            "fp_accuracy": float(fp_result["accuracy"]),
        }
        rows.append(row)
        if "validation_accuracy" in result:
            row["ptq_validation_accuracy"] = float(result["validation_accuracy"])
        results.append(
            {
                **row,
                "ptq_loss": float(result["loss"]),
                "step_sizes": step_sizes(params),
                "variables": variables_file,
            }
        )
        print(
            f"[{config.name}] PTQ {setting.label} ({config.ptq.observer}): "
            f"accuracy {result['accuracy']:.4f} (FP {fp_result['accuracy']:.4f})",
            flush=True,
        )

    table = format_table(rows, TABLE_COLUMNS)
    print("\n" + table)
    report = {
        "name": config.name,
        "checkpoint": os.path.abspath(config.init_from),
        "checkpoint_step": int(source.step),
        "model": model_name,
        "model_kwargs": to_python(model_kwargs),
        "dataset": config.data.name,
        "observer": config.ptq.observer,
        "observer_options": dict(observer_options(config.ptq)),
        "calibration_images": int(len(images)),
        "calibration_draw": int(config.ptq.calibration_draw),
        "bn_reestimate": bool(config.ptq.bn_reestimate),
        "first_last_bits": config.quant.first_last_bits,
        "fp_accuracy": float(fp_result["accuracy"]),
        "fp_loss": float(fp_result["loss"]),
        "results": results,
    }
    with open(os.path.join(workdir, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    method = f"ptq:{config.ptq.observer}"
    return {
        "name": config.name,
        "method": method,
        "fp_accuracy": report["fp_accuracy"],
        "table": table,
        "rows": [
            {
                "method": method,
                "w_bits": row["w_bits"],
                "a_bits": row["a_bits"],
                "steps": int(source.step),
                "test_accuracy": row["ptq_accuracy"],
            }
            for row in rows
        ],
        "comparison": {
            "fp_accuracy": report["fp_accuracy"],
            **{f"{row['bits']}_accuracy": row["ptq_accuracy"] for row in rows},
        },
    }


def save_variables(variables: dict[str, Any], workdir: str, setting: BitSetting) -> str:
    """Write ``variables`` to ``<workdir>/calibrated/<bits>.npz`` (a temporary file renamed into
    place, so a reader never sees half a file); return the path relative to ``workdir``."""
    relative = os.path.join(CALIBRATED_DIR, f"{setting.label}.npz")
    if not parallel.is_lead_process():
        return relative
    path = os.path.join(workdir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    partial = path + ".partial.npz"
    np.savez(partial, **{key: np.asarray(value) for key, value in flat.items()})
    os.replace(partial, path)
    return relative


def load_variables(workdir: str, relative: str) -> dict[str, Any]:
    """The variables :func:`save_variables` wrote (nested again)."""
    with np.load(os.path.join(workdir, relative)) as saved:
        return traverse_util.unflatten_dict({key: saved[key] for key in saved.files}, sep="/")


def read_report(workdir: str) -> dict[str, Any]:
    """The ``ptq_report.json`` of a PTQ run's workdir."""
    with open(os.path.join(workdir, REPORT_FILE)) as f:
        return json.load(f)


__all__ = [
    "BitSetting",
    "load_variables",
    "parse_bits",
    "ptq_policy",
    "read_report",
    "run_ptq",
    "save_variables",
    "step_sizes",
]
