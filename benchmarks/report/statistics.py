"""The numbers of the report: per-seed values read from the records, paired over seeds, and
their text. Mean ± std and the paired t-interval are :mod:`jaxquant.study.stats`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxquant.study.stats import Interval, mean_std

ACCURACY_MIN_EFFECT = 0.005
TRACE_RELATIVE_MIN_EFFECT = 0.10
OK = "ok"


def metric_value(record: dict[str, Any], metric: str, bits: str) -> float | None:
    """The value of ``metric`` in one finished run's record, or None if it has none."""
    if record.get("status") != OK:
        return None
    if metric == "accuracy":
        return record.get("accuracy") if record.get("bits") == bits else None
    if metric == "trace":
        trace = record.get("trace") or {}
        return trace.get("value") if record.get("bits") == bits and trace.get("status") == OK else None
    if metric == "bn_accuracy":
        bn = record.get("bn_reestimated") or {}
        return bn.get("accuracy") if record.get("bits") == bits and bn.get("status") == OK else None
    if metric in ("start_accuracy", "teacher_accuracy"):
        start = record.get("start") or {}
        return start.get(metric) if record.get("bits") == bits and start.get("status") == OK else None
    if metric == "ptq_accuracy":
        ptq = record.get("ptq") or {}
        return ptq.get("accuracy_by_bits", {}).get(bits) if ptq.get("status") == OK else None
    raise ValueError(
        f"metric={metric!r} is not allowed: choose one of "
        "['accuracy', 'trace', 'ptq_accuracy', 'start_accuracy', 'teacher_accuracy', 'bn_accuracy']"
    )


def values_by_seed(records, metric: str, group: str, method: str, bits: str) -> dict[int, float]:
    """``{seed: value}`` of ``metric`` over the finished runs of ``method`` in ``group``."""
    out = {}
    for record in records:
        if record.get("group") == group and record.get("method") == method:
            value = metric_value(record, metric, bits)
            if value is not None:
                out[record["seed"]] = float(value)
    return out


def paired_values(
    ours: dict[int, float], theirs: dict[int, float]
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """The seeds both ``{seed: value}`` have, sorted, and the two values over them."""
    seeds = tuple(sorted(set(ours) & set(theirs)))
    return seeds, tuple(ours[s] for s in seeds), tuple(theirs[s] for s in seeds)


def minimal_effect(metric: str, baseline: Sequence[float]) -> float:
    """The smallest effect that counts: 0.5 accuracy points; 10% of the baseline's mean trace."""
    if metric == "trace":
        return TRACE_RELATIVE_MIN_EFFECT * abs(mean_std(baseline)[0])
    return ACCURACY_MIN_EFFECT


def metric_scale(metric: str) -> tuple[float, str, str]:
    """(scale, format, unit) for showing a metric's values: accuracy in %, trace raw."""
    return (1.0, ".4g", "") if metric == "trace" else (100.0, ".2f", " pts")


def format_cell(values: Sequence[float], scale: float, fmt: str) -> str:
    """``mean ± std (n)`` of ``values × scale``; ``–`` for no values, no std for one."""
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    if std is None:
        return f"{mean:{fmt}} (n=1)"
    return f"{mean:{fmt}} ± {std:{fmt}} (n={len(values)})"


def interval_text(interval: Interval, scale: float, fmt: str, unit: str) -> str:
    """``mean [low, high]`` of a paired difference times ``scale``; no brackets for one pair."""
    text = f"{interval.mean * scale:+{fmt}}{unit}"
    if interval.low is not None:
        text += f" [{interval.low * scale:+{fmt}}, {interval.high * scale:+{fmt}}]"
    return text
