"""``mode = pipeline``: run named stages in order (FP, then QAT from it, ...) and tabulate.

``config.stages.<name>`` holds the fields that stage overrides on the base config; an
``init_from`` of ``"stage:<other>"`` points to that earlier stage's workdir. Each stage
runs in ``<workdir>/<name>`` and resumes there, so a killed pipeline continues where it
stopped and finished stages are only re-evaluated.

A stage runs ``mode = 'train'`` unless it sets another ``mode``, e.g. ``'ptq'`` to quantize
an earlier stage (``init_from = "stage:<name>"``). A stage whose summary has ``rows`` (PTQ:
one per bit setting) adds those rows to the table; summaries with a ``comparison`` row are
also printed side by side in a second table (accuracy by bits, saved as ``comparison.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxquant.methods import get_method
from jaxquant.train.metrics import format_table

STAGE_PREFIX = "stage:"


def deep_update(config: ml_collections.ConfigDict, overrides: dict[str, Any], path: str = "") -> None:
    """Set each override onto ``config``; an unknown field is a one-line error."""
    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in config:
            raise ValueError(f"stage override {where!r} is not a config field")
        if isinstance(value, dict | ml_collections.ConfigDict) and isinstance(
            config[key], ml_collections.ConfigDict
        ):
            deep_update(config[key], dict(value), f"{where}.")
        else:
            config[key] = value


def stage_config(config: ml_collections.ConfigDict, name: str, workdir: str):
    """The full config of stage ``name``: the base config with the stage's overrides. A stage
    that names another method gets that method's own ``method`` block (its fields at their
    defaults, then the stage's), never the base method's fields."""
    fields = config.copy_and_resolve_references().to_dict()
    overrides = fields.pop("stages")[name]
    stage = ml_collections.ConfigDict(fields)
    stage.mode = "train"
    method = dict(overrides.get("method", {}))
    if method.get("name", stage.method.name) != stage.method.name:
        # another method: its own block (its fields at their defaults), not the base method's
        stage.method = get_method(method["name"]).default_config()
    deep_update(stage, overrides)
    stage.name = f"{config.name}/{name}"
    if stage.init_from.startswith(STAGE_PREFIX):
        stage.init_from = os.path.join(workdir, stage.init_from[len(STAGE_PREFIX) :])
    return stage


def stage_order(config: ml_collections.ConfigDict) -> list[str]:
    """``config.stage_order`` if given, else the stages with each after its ``init_from``."""
    names = list(config.stages)
    if config.get("stage_order"):
        order = list(config.stage_order)
        unknown = sorted(set(order) - set(names))
        if unknown:
            raise ValueError(f"stage_order names unknown stages {unknown}: allowed {names}")
        return order
    ordered: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in seen:
            raise ValueError(f"stages depend on each other in a cycle: {seen + (name,)}")
        parent = config.stages[name].get("init_from", "")
        if parent.startswith(STAGE_PREFIX):
            parent = parent[len(STAGE_PREFIX) :]
            if parent not in names:
                raise ValueError(f"stage {name!r} starts from unknown stage {parent!r}")
            visit(parent, seen + (name,))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


def run_pipeline(
    config: ml_collections.ConfigDict, workdir: str, run_stage: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Run every stage of ``config.stages`` in order with ``run_stage(config, workdir)`` (the
    mode table's :func:`~jaxquant.modes.run_mode`); print and save the results table."""
    if not config.get("stages"):
        raise ValueError("mode='pipeline' needs config.stages (name → overrides)")
    results, comparisons = [], []
    for name in stage_order(config):
        stage = stage_config(config, name, workdir)
        print(f"=== stage {name}: method={stage.method.name} mode={stage.mode}", flush=True)
        summary = run_stage(stage, os.path.join(workdir, name))
        results += [{"stage": name, **row} for row in summary.get("rows", [summary])]
        if "comparison" in summary:
            comparisons.append({"stage": name, **summary["comparison"]})
    columns = ["stage", "method", "w_bits", "a_bits", "steps", "test_accuracy"]
    table = format_table(results, columns)
    print("\n" + table)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    if comparisons:
        compare_columns = list(dict.fromkeys(key for row in comparisons for key in row))
        comparison_table = format_table(comparisons, compare_columns)
        print("\n" + comparison_table)
        table += "\n\n" + comparison_table
        with open(os.path.join(workdir, "comparison.json"), "w") as f:
            json.dump(comparisons, f, indent=2)
    return {"name": config.name, "stages": results, "table": table}
