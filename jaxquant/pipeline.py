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
from typing import Any

import ml_collections

from jaxquant.modes import register_mode, run_mode

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
    """The full config of stage ``name``: the base config with the stage's overrides."""
    fields = config.copy_and_resolve_references().to_dict()
    overrides = fields.pop("stages")[name]
    stage = ml_collections.ConfigDict(fields)
    stage.mode = "train"
    deep_update(stage, overrides)
    stage.name = f"{config.name}/{name}"
    if stage.init_from.startswith(STAGE_PREFIX):
        stage.init_from = os.path.join(workdir, stage.init_from[len(STAGE_PREFIX) :])
    return stage


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (floats as percentages for accuracy columns)."""

    def cell(row, col):
        value = row.get(col)
        if value is None:
            return "-"
        if isinstance(value, float) and "accuracy" in col:
            return f"{100 * value:.2f}"
        return str(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


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


@register_mode("pipeline")
def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run every stage of ``config.stages`` in order; print and save the results table."""
    if not config.get("stages"):
        raise ValueError("mode='pipeline' needs config.stages (name → overrides)")
    results, comparisons = [], []
    for name in stage_order(config):
        stage = stage_config(config, name, workdir)
        print(f"=== stage {name}: method={stage.method.name} mode={stage.mode}", flush=True)
        summary = run_mode(stage, os.path.join(workdir, name))
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
