"""Adapters between the study and the parts of jaxquant it measures with.

Each adapter is the single place that knows the name and shape of one interface, so wiring a
changed interface is a one-function edit. A reader of a run's output returns ``{"status":
"unavailable", "message": ...}`` when the run left nothing to read. Interfaces used:

* methods: ``jaxquant.methods.METHODS`` (``config.method.name``), and a method's
  ``default_config()`` (its block with every field at its default);
* PTQ: ``config.mode = "ptq"``, ``config.ptq.bits = "8,6,4,3"``, the FP run in
  ``config.init_from``, a JSON report ``<workdir>/ptq_report.json``;
* Hessian trace: ``jaxquant.curvature.model_objective`` and ``hutchinson_trace`` (with its
  per-layer traces), the top eigenvalue: ``top_eigenvalues``;
* weight clipping: ``jaxquant.quant.layers.capture_quantizers`` and
  ``jaxquant.quant.quantizers.clipped_fraction``;
* trace trajectory: ``config.curvature.every_steps`` / ``num_probes`` and records of kind
  ``"curvature"`` with a ``"trace"`` value in ``<workdir>/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from jaxquant import curvature
from jaxquant.methods import get_method
from jaxquant.quant.layers import QUANT_STATE, capture_quantizers
from jaxquant.quant.quantizers import clipped_fraction, int_range
from jaxquant.train.metrics import read_metrics

OK = "ok"
UNAVAILABLE = "unavailable"
PTQ_REPORT = "ptq_report.json"
CURVATURE_KIND = "curvature"


def unavailable(message: str) -> dict[str, Any]:
    return {"status": UNAVAILABLE, "message": message}


def method_block(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The ``config.method`` block of a run of method ``name``: the method's
    ``default_config()`` (every [design] field at its default). ``base`` is not read; an
    unknown ``name`` is a one-line error."""
    return get_method(name).default_config()


def ptq_config(source: ml_collections.ConfigDict, source_workdir: str, bits: list[int]):
    """The PTQ config for the trained FP-structured network in ``source_workdir``.

    Expects the PTQ mode to read ``init_from`` (the trained run), ``ptq.bits`` (comma-separated
    W=A bit widths, all evaluated in one call) and the data/model fields of ``source``; any
    other ``ptq`` fields keep their defaults. ``method.name`` is ``fp``: PTQ quantizes the
    trained network, and the source's method (``fp`` or ``dnq``) only shaped its training.
    """
    config = ml_collections.ConfigDict(source.to_dict())
    config.mode = "ptq"
    config.method = ml_collections.ConfigDict({"name": "fp"})
    config.init_from = source_workdir
    config.ptq.bits = ",".join(str(b) for b in bits)
    return config


def read_ptq_report(workdir: str) -> dict[str, Any]:
    """``{"status": "ok", "accuracy_by_bits": {"8": acc, ...}, "fp_accuracy": acc}`` from the
    PTQ mode's report, with ``validation_accuracy_by_bits`` when the run had a validation split.

    Expects ``<workdir>/ptq_report.json`` with ``"fp_accuracy"`` and ``"results"``: one object
    per bit setting with ``"w_bits"``, ``"a_bits"`` and ``"ptq_accuracy"`` (a fraction).
    """
    path = os.path.join(workdir, PTQ_REPORT)
    if not os.path.exists(path):
        return unavailable(f"the PTQ mode wrote no {PTQ_REPORT} in {workdir}")
    with open(path) as f:
        report = json.load(f)
    by_bits, validation_by_bits = {}, {}
    for row in report.get("results", []):
        if not {"w_bits", "a_bits", "ptq_accuracy"} <= set(row) or row["w_bits"] != row["a_bits"]:
            return unavailable(f"{path}: a result is not 'w_bits' = 'a_bits' with 'ptq_accuracy': {row}")
        by_bits[str(row["w_bits"])] = float(row["ptq_accuracy"])
        if "ptq_validation_accuracy" in row:
            validation_by_bits[str(row["w_bits"])] = float(row["ptq_validation_accuracy"])
    if not by_bits:
        return unavailable(f"{path} has no 'results'")
    out = {"status": OK, "accuracy_by_bits": by_bits, "fp_accuracy": report.get("fp_accuracy")}
    if validation_by_bits:
        out["validation_accuracy_by_bits"] = validation_by_bits
    return out


def curvature_tools():
    """``jaxquant.curvature``, the trace estimator (a function, so that a test can stand in)."""
    return curvature


def hessian_trace(model, variables: dict[str, Any], batches: dict[str, Any], num_probes: int, seed: int):
    """Hutchinson estimate of ``Tr(∇²_params L)``: ``{"status", "value", "stderr", "num_probes"}``.

    ``L`` is the eval-mode cross-entropy of ``model`` with ``variables`` (``params`` and the
    model state: BN running statistics, quantizer state) on ``batches`` (arrays with a
    leading batch axis ``[K, B, ...]``). Expects ``jaxquant.curvature.model_objective(model,
    variables, batches) -> (loss_fn, params, data)`` and ``hutchinson_trace(loss_fn, params,
    data, key, num_probes=..., log=...)`` returning an object with ``trace``, ``stderr`` and
    ``num_probes``; the Rademacher probes come from ``PRNGKey(seed)``, the same for every
    checkpoint.
    """
    tools = curvature_tools()
    loss_fn, params, data = tools.model_objective(model, variables, batches)
    estimate = tools.hutchinson_trace(
        loss_fn, params, data, jax.random.PRNGKey(seed), num_probes=num_probes, log=None
    )
    return {
        "status": OK,
        "value": float(estimate.trace),
        "stderr": float(estimate.stderr),
        "num_probes": int(estimate.num_probes),
    }


def squared_norm(x) -> float:
    """``‖x‖²``, the squared Frobenius norm, summed in float64."""
    return float(np.sum(np.square(np.asarray(x, np.float64))))


def kernel_norms(params) -> dict[str, float]:
    """``‖W_l‖²`` (squared Frobenius norm) of every layer's ``kernel``, by layer name."""
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    kernels = {path: leaf for path, leaf in flat.items() if path.endswith("kernel")}
    return {curvature.layer_name(path): squared_norm(leaf) for path, leaf in kernels.items()}


def hessian_flatness(
    model,
    variables: dict[str, Any],
    batches: dict[str, Any],
    num_probes: int,
    seed: int,
    eigen_iterations: int,
) -> dict[str, Any]:
    """The flatness record of one checkpoint: :func:`hessian_trace`'s fields, per layer the
    trace ``tr_l`` ± stderr (same probes), ``‖W_l‖²`` and the scale-invariant
    ``tr_l·‖W_l‖²`` (for a loss invariant to the kernel's scale, ``L(αW) = L(W)``, the
    Hessian block scales as ``H(αW) = H(W)/α²``), and the top Hessian eigenvalue from
    ``eigen_iterations`` Lanczos steps. Expects ``top_eigenvalues(loss_fn, params, data,
    key, k=, num_iterations=)`` returning ``values`` and ``residuals``."""
    tools = curvature_tools()
    loss_fn, params, data = tools.model_objective(model, variables, batches)
    key = jax.random.PRNGKey(seed)
    estimate = tools.hutchinson_trace(loss_fn, params, data, key, num_probes=num_probes, log=None)
    norms = kernel_norms(variables["params"])
    layers = {}
    for name, trace in estimate.layer_traces.items():
        layer = {"trace": float(trace), "stderr": float(estimate.layer_stderr[name])}
        if name in norms:
            layer.update(kernel_norm_sq=norms[name], trace_times_norm_sq=float(trace) * norms[name])
        layers[name] = layer
    eigen = tools.top_eigenvalues(loss_fn, params, data, key, k=1, num_iterations=eigen_iterations)
    return {
        "status": OK,
        "value": float(estimate.trace),
        "stderr": float(estimate.stderr),
        "num_probes": int(estimate.num_probes),
        "layers": layers,
        "top_eigenvalue": float(eigen.values[0]),
        "top_eigenvalue_residual": float(eigen.residuals[0]),
        "lanczos_iterations": int(eigen_iterations),
    }


def weight_clipping(model, variables: dict[str, Any], images) -> dict[str, Any]:
    """``{"status": "ok", "layers": {layer: {"clipped": fraction, "bits": b, "quantized_norm_sq":
    ‖Ŵ‖²}}}``: per layer with an LSQ weight quantizer, the fraction of its latent kernel outside
    the grid (:func:`~jaxquant.quant.quantizers.clipped_fraction`, the weights the
    straight-through estimator gives no gradient) and the squared norm of the fake-quantized
    kernel ``Ŵ`` that the layer multiplies by, read from one evaluation-mode forward pass of
    ``images``. For a Conv→BN layer the loss is invariant to the scale of ``Ŵ``, and an
    unclipped latent weight's Hessian diagonal is ``Ŵ``'s (the estimator passes it straight
    through), so ``tr_l·‖Ŵ_l‖²`` is the scale-free curvature of the weights that get a gradient.
    Expects ``capture_quantizers`` calls named ``<layer>/weight_quant`` and the zero point in
    the ``quant_state`` collection under the same path."""
    captured = capture_quantizers(model, variables, images)
    state = traverse_util.flatten_dict(jax.device_get(variables.get(QUANT_STATE, {})), sep="/")
    layers = {}
    for path, call in captured.items():
        if not path.endswith("/weight_quant") or call.spec.kind != "lsq":
            continue
        grid = int_range(call.spec.bits, call.spec.signed)
        zero = state.get(f"{path}/zero_point", 0.0)
        fraction = clipped_fraction(call.input, call.step, zero, grid.q_min, grid.q_max)
        layers[curvature.layer_name(f"{path}/step")] = {
            "clipped": float(fraction),
            "bits": call.spec.bits,
            "quantized_norm_sq": squared_norm(call.output),
        }
    if not layers:
        return unavailable("the network has no LSQ weight quantizer")
    return {"status": OK, "layers": layers}


def enable_trace_trajectory(config: ml_collections.ConfigDict, every_steps: int, num_probes: int) -> None:
    """Switch on the periodic Hutchinson probe during training: set ``curvature.every_steps``
    and ``curvature.num_probes``; the probe's fixed batches keep their defaults."""
    config.curvature.every_steps = every_steps
    config.curvature.num_probes = num_probes


def last_record_per_step(workdir: str, keep) -> dict[int, dict[str, Any]]:
    """``{step: record}`` of the records of ``<workdir>/metrics.jsonl`` that ``keep`` accepts;
    where a step is there twice (a file written before resumed runs dropped their orphan
    records), the last wins."""
    out = {}
    for record in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if keep(record):
            out[int(record["step"])] = record
    return out


def read_trace_trajectory(workdir: str) -> dict[str, Any]:
    """``{"status": "ok", "steps": [...], "values": [...]}`` from the records of kind
    ``"curvature"`` (value under ``"trace"``) in ``<workdir>/metrics.jsonl``; where a step is
    there twice (a file written before resumed runs dropped their orphan records), the last wins."""
    records = last_record_per_step(workdir, lambda r: r.get("kind") == CURVATURE_KIND and "trace" in r)
    by_step = {step: float(record["trace"]) for step, record in records.items()}
    if not by_step:
        return unavailable(f"no '{CURVATURE_KIND}' records with a 'trace' in {workdir}/metrics.jsonl")
    steps = sorted(by_step)
    return {"status": OK, "steps": steps, "values": [by_step[s] for s in steps]}


def read_loss_term_ratios(workdir: str) -> dict[str, Any]:
    """``{"status": "ok", "mean_grad_ratio": {term: mean}}``: the mean over the logged training
    steps of every ``grad_ratio_<term>`` (``‖∇ term‖ / ‖∇ CE‖``) in ``<workdir>/metrics.jsonl``;
    where a step is there twice (a file written before resumed runs dropped their orphan
    records), the last wins, so that no step counts twice."""
    records = last_record_per_step(
        workdir, lambda r: r.get("kind") == "train" and any(k.startswith("grad_ratio_") for k in r)
    )
    values: dict[str, list[float]] = {}
    for record in records.values():
        for key, value in record.items():
            if key.startswith("grad_ratio_"):
                values.setdefault(key.removeprefix("grad_ratio_"), []).append(float(value))
    return {"status": OK, "mean_grad_ratio": {term: sum(v) / len(v) for term, v in values.items()}}
