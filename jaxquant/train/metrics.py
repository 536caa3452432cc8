"""Metrics as JSON lines (``metrics.jsonl`` in the workdir) plus a one-line progress print."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from jaxquant.parallel import is_lead_process


def to_python(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    array = np.asarray(value) if hasattr(value, "shape") or isinstance(value, np.generic) else None
    if array is not None:
        return array.item() if array.size == 1 else array.tolist()
    return value


class MetricsWriter:
    """Appends one JSON object per record to ``path`` (process 0 only in a multi-host run)."""

    def __init__(self, path: str):
        self.path = path
        self.enabled = is_lead_process()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time(), **to_python(values)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_progress(step: int, total: int, steps_per_sec: float, values: dict[str, Any]) -> str:
    parts = [f"step {step}/{total}", f"{steps_per_sec:.1f} steps/s"]
    parts += [f"{k} {float(v):.4f}" for k, v in values.items()]
    return " | ".join(parts)


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
