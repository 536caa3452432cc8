"""Adapters between the study and the parts of jaxquant it measures with.

Each adapter is the single place that knows the name and shape of one interface, so wiring a
changed interface is a one-function edit. Each degrades to ``{"status": "unavailable",
"message": ...}`` when the part is not there, so a study still runs (and says what is missing)
on a checkout that lacks it. Interfaces used:

* methods: ``jaxquant.methods.METHODS`` (``config.method.name``), and a method's
  ``default_config()`` (its block with every field at its default) where it has one;
* PTQ: ``config.mode = "ptq"``, ``config.ptq.bits = "8,6,4,3"``, the FP run in
  ``config.init_from``, a JSON report ``<workdir>/ptq_report.json``;
* Hessian trace: ``jaxquant.curvature.model_objective`` and ``hutchinson_trace``;
* trace trajectory: ``config.curvature.every_steps`` / ``num_probes`` and records of kind
  ``"curvature"`` with a ``"trace"`` value in ``<workdir>/metrics.jsonl``.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import jax
import ml_collections

from jaxquant.train.metrics import read_metrics

OK = "ok"
UNAVAILABLE = "unavailable"
PTQ_REPORT = "ptq_report.json"
CURVATURE_KIND = "curvature"
NO_TRACE_ESTIMATOR = "jaxquant.curvature (model_objective, hutchinson_trace) is not in this checkout"


def unavailable(message: str) -> dict[str, Any]:
    return {"status": UNAVAILABLE, "message": message}


def method_available(name: str) -> bool:
    """Whether ``config.method.name = name`` is registered in this checkout."""
    from jaxquant.methods import METHODS

    return name in METHODS


def method_block(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The ``config.method`` block of a run of method ``name``: the method's
    ``default_config()`` (every [design] field at its default) where the method provides one,
    else ``base`` (the defaults' block) with ``name`` set. Unregistered names get ``base``."""
    from jaxquant.methods import METHODS

    method = METHODS.get(name)
    if method is not None and hasattr(method, "default_config"):
        return method.default_config()
    block = ml_collections.ConfigDict(base.to_dict())
    block.name = name
    return block


def mode_available(name: str) -> bool:
    """Whether ``config.mode = name`` is registered (valid after ``run_mode`` has imported the
    mode modules, which it does before rejecting an unknown mode)."""
    from jaxquant.modes import MODES

    return name in MODES


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
    if "ptq" not in config:
        config.ptq = ml_collections.ConfigDict()
    config.ptq.bits = ",".join(str(b) for b in bits)
    return config


def read_ptq_report(workdir: str) -> dict[str, Any]:
    """``{"status": "ok", "accuracy_by_bits": {"8": acc, ...}, "fp_accuracy": acc}`` from the
    PTQ mode's report.

    Expects ``<workdir>/ptq_report.json`` with ``"fp_accuracy"`` and ``"results"``: one object
    per bit setting with ``"w_bits"``, ``"a_bits"`` and ``"ptq_accuracy"`` (a fraction).
    """
    path = os.path.join(workdir, PTQ_REPORT)
    if not os.path.exists(path):
        return unavailable(f"the PTQ mode wrote no {PTQ_REPORT} in {workdir}")
    with open(path) as f:
        report = json.load(f)
    by_bits = {}
    for row in report.get("results", []):
        if not {"w_bits", "a_bits", "ptq_accuracy"} <= set(row) or row["w_bits"] != row["a_bits"]:
            return unavailable(f"{path}: a result is not 'w_bits' = 'a_bits' with 'ptq_accuracy': {row}")
        by_bits[str(row["w_bits"])] = float(row["ptq_accuracy"])
    if not by_bits:
        return unavailable(f"{path} has no 'results'")
    return {"status": OK, "accuracy_by_bits": by_bits, "fp_accuracy": report.get("fp_accuracy")}


def curvature_tools():
    """``jaxquant.curvature`` if this checkout has its trace estimator, else None."""
    try:
        curvature = importlib.import_module("jaxquant.curvature")
    except ModuleNotFoundError as error:
        if error.name != "jaxquant.curvature":
            raise
        return None
    needed = ("model_objective", "hutchinson_trace")
    return curvature if all(hasattr(curvature, name) for name in needed) else None


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
    curvature = curvature_tools()
    if curvature is None:
        return unavailable(NO_TRACE_ESTIMATOR)
    loss_fn, params, data = curvature.model_objective(model, variables, batches)
    estimate = curvature.hutchinson_trace(
        loss_fn, params, data, jax.random.PRNGKey(seed), num_probes=num_probes, log=None
    )
    return {
        "status": OK,
        "value": float(estimate.trace),
        "stderr": float(estimate.stderr),
        "num_probes": int(estimate.num_probes),
    }


def enable_trace_trajectory(config: ml_collections.ConfigDict, every_steps: int, num_probes: int) -> bool:
    """Switch on the periodic Hutchinson probe during training; False if the config has no
    ``curvature`` block (the probe is not in this checkout). Sets ``curvature.every_steps``
    and ``curvature.num_probes``; the probe's fixed batches keep their defaults."""
    if "curvature" not in config:
        return False
    config.curvature.every_steps = every_steps
    config.curvature.num_probes = num_probes
    return True


def read_trace_trajectory(workdir: str) -> dict[str, Any]:
    """``{"status": "ok", "steps": [...], "values": [...]}`` from the records of kind
    ``"curvature"`` (value under ``"trace"``) in ``<workdir>/metrics.jsonl``; a resumed run
    can log a step twice, the last record wins."""
    by_step = {}
    for record in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if record.get("kind") == CURVATURE_KIND and "trace" in record:
            by_step[int(record["step"])] = float(record["trace"])
    if not by_step:
        return unavailable(f"no '{CURVATURE_KIND}' records with a 'trace' in {workdir}/metrics.jsonl")
    steps = sorted(by_step)
    return {"status": OK, "steps": steps, "values": [by_step[s] for s in steps]}
