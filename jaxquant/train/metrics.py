"""Metrics as JSON lines (``metrics.jsonl`` in the workdir), the same scalars as TensorBoard
event files beside it (``train.tensorboard``), plus a one-line progress print.

TensorBoard tag of a scalar: ``<kind>/<name>`` (``train/loss``, ``eval/accuracy``,
``curvature/trace``; a dict value such as ``layer_traces`` gives ``curvature/layer_traces/<layer>``),
the record's ``step`` as its step and ``time`` as its wall time. The events are written with the
``tensorboard`` package's ``EventFileWriter`` and protos, which need no TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from jaxquant import parallel


def to_python(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_python(v) for v in value]
    array = np.asarray(value) if hasattr(value, "shape") or isinstance(value, np.generic) else None
    if array is not None:
        return array.item() if array.size == 1 else array.tolist()
    return value


def scalar_tags(kind: str, values: dict[str, Any]) -> dict[str, float]:
    """``{"<kind>/<name>": value}`` for every number in ``values`` (a record's fields without
    ``kind``, ``step`` and ``time``); nested dicts extend the name (``<kind>/<name>/<key>``),
    lists and strings are left out."""
    flat = {}
    for name, value in values.items():
        tag = f"{kind}/{name}"
        if isinstance(value, dict):
            flat.update(scalar_tags(tag, value))
        elif isinstance(value, bool | int | float):
            flat[tag] = float(value)
    return flat


class TensorBoardWriter:
    """Scalars as TensorBoard event files in ``logdir`` (created at the first write)."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.writer = None

    def write(self, kind: str, step: int, wall_time: float, values: dict[str, Any]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=value)
                for tag, value in scalar_tags(kind, values).items()
            ]
        )
        self.add(event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary))

    def restart_at(self, step: int) -> None:
        """A session-start event at ``step``: TensorBoard then drops the events of step
        ``step`` and later that earlier event files in ``logdir`` hold (its orphan purge)."""
        from tensorboard.compat.proto import event_pb2

        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self.add(event_pb2.Event(wall_time=time.time(), step=int(step), session_log=start))

    def add(self, event) -> None:
        """Append ``event`` to this writer's event file (opened at the first event) and flush."""
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if self.writer is None:
            self.writer = EventFileWriter(self.logdir)
        self.writer.add_event(event)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MetricsWriter:
    """Appends one JSON object per record to ``path`` and, when ``tensorboard``, writes its
    scalars as TensorBoard events into ``path``'s folder (process 0 only in a multi-host run:
    the others write nothing)."""

    def __init__(self, path: str, tensorboard: bool = False):
        self.path = path
        self.enabled = parallel.is_lead_process()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.events = (
            TensorBoardWriter(os.path.dirname(path) or ".") if tensorboard and self.enabled else None
        )

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), "time": time.time(), **to_python(values)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.events is not None:
            fields = {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
            self.events.write(kind, record["step"], record["time"], fields)

    def discard_after(self, step: int) -> None:
        """Drop the records of steps after ``step``.

        A run killed after its checkpoint at ``step`` had logged later steps, and resuming
        from that checkpoint logs them again: without this, ``metrics.jsonl`` and TensorBoard
        would hold those steps twice. The file is rewritten atomically; TensorBoard gets a
        session-start event at ``step + 1``, which hides the older event files' later points."""
        if not self.enabled or not os.path.exists(self.path):
            return
        records = read_metrics(self.path)
        kept = [record for record in records if int(record["step"]) <= step]
        if len(kept) == len(records):
            return
        partial = self.path + ".tmp"
        with open(partial, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(partial, self.path)
        if self.events is not None:
            self.events.restart_at(step + 1)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


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
