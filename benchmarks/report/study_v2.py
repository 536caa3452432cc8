"""The report of study v2 (docs/study_protocol.md), generated only from its results JSON.

``write_v2_report(results, md_path, figure_dir)`` writes the markdown and its figures; every
number comes from the records of ``benchmarks/study_v2.py``. Statistics are those of the
protocol's §6 (:func:`jaxquant.study.stats.claim_test`, :func:`~jaxquant.study.stats.family_verdicts`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxquant.study import stats  # noqa: E402

OK = "ok"
ACCURACY_DELTA = 0.005  # 0.5 points
TRACE_DELTA = math.log(1 / 0.9)  # a 10 % change of the trace
COST_TARGET_H = 5.0  # the protocol's target for the whole study on this machine (§8)


@dataclasses.dataclass(frozen=True)
class ClaimV2:
    """One row of the protocol's §1: ``method`` vs ``baseline`` on ``metric`` at ``bits``.

    ``metric``: ``accuracy`` (QAT test accuracy), ``log_trace`` (ln of the final trace),
    ``ptq@<b>`` (minmax PTQ test accuracy at WbAb, mean over calibration draws). A method or
    baseline ``dnq_t<b>`` is the DNQ network trained for target b; ``fp`` the plain FP network."""

    id: str
    family: str
    text: str
    metric: str
    method: str
    baseline: str
    bits: str
    direction: int
    paper: str
    paper_effect: float | None = None  # the paper's number, in points, where it gives one

    @property
    def delta(self) -> float:
        return TRACE_DELTA if self.metric == "log_trace" else ACCURACY_DELTA


CLAIMS_V2 = (
    ClaimV2(
        "1a", "F1 FPQ", "FPQ beats LSQ", "accuracy", "fpq", "lsq", "W2A4", 1, "+1.56 (88.36 → 89.92)", 1.56
    ),
    ClaimV2(
        "1b", "F1 FPQ", "FPQ beats LSQ", "accuracy", "fpq", "lsq", "W2A2", 1, "+0.51 (87.60 → 88.11)", 0.51
    ),
    ClaimV2(
        "1c",
        "F1 FPQ",
        "FPQ's trace is lower",
        "log_trace",
        "fpq",
        "lsq",
        "W2A4",
        -1,
        "clearly lower (Fig. 5)",
    ),
    ClaimV2(
        "1d",
        "F1 FPQ",
        "FPQ's trace is lower",
        "log_trace",
        "fpq",
        "lsq",
        "W2A2",
        -1,
        "clearly lower (Fig. 5)",
    ),
    ClaimV2(
        "2a", "F2 CR", "CR beats LSQ", "accuracy", "cr", "lsq", "W2A4", 1, "+3.79 (bits not stated)", 3.79
    ),
    ClaimV2(
        "2b", "F2 CR", "CR beats LSQ", "accuracy", "cr", "lsq", "W2A2", 1, "+3.79 (bits not stated)", 3.79
    ),
    ClaimV2(
        "3a", "F3 MEC", "MEC-Quant beats LSQ", "accuracy", "mec", "lsq", "W2A2", 1, "reaches FP (no numbers)"
    ),
    ClaimV2(
        "4a", "F4 DNQ", "DNQ gives better PTQ", "ptq@4", "dnq_t4", "fp", "W4A4", 1, "better PTQ (no numbers)"
    ),
    ClaimV2(
        "4b", "F4 DNQ", "DNQ gives better PTQ", "ptq@3", "dnq_t3", "fp", "W3A3", 1, "better PTQ (no numbers)"
    ),
    ClaimV2("4c", "F4 DNQ", "DNQ's trace is lower", "log_trace", "dnq_t4", "fp", "FP", -1, "flat minimum"),
    ClaimV2("4d", "F4 DNQ", "DNQ's trace is lower", "log_trace", "dnq_t3", "fp", "FP", -1, "flat minimum"),
)


def network_label(record: dict[str, Any]) -> str:
    """``fp``, ``dnq_t<b>`` of an FP-recipe run (or of the network a PTQ record quantized)."""
    method = record.get("source") or record.get("method")
    return f"dnq_t{record['target_bits']}" if method == "dnq" else method


def grid_records(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The finished records of the grid (not the pilot's nor the other tuning candidates')."""
    return [
        r for r in results.get("runs", []) if r.get("status") == OK and r.get("group") in ("qat", "fp", "ptq")
    ]


def machine_name(machine: dict[str, Any] | None) -> str:
    """A machine of a record, as the report names it."""
    if not machine:
        return "machine not recorded"
    cpu = machine.get("cpu_model") or "CPU model not recorded"
    return f"{machine.get('cpus')} CPU cores, {cpu}, {machine.get('platform')}"


def machines_text(results: dict[str, Any]) -> str:
    """Which machine produced which numbers: every machine named by the records, with its
    finished runs counted by stage (the pilot, the tuning candidates, each seed of the grid)
    and the superseded trainings; the machines in the order they first appear."""
    counts: dict[str, dict[str, int]] = {}
    finished = [r for r in results.get("runs", []) if r.get("status") == OK]
    superseded = [{**r, "group": "superseded"} for r in results.get("superseded_runs", [])]
    for r in finished + superseded:
        part = (
            r.get("group") if r.get("group") in ("pilot", "tuning", "superseded") else f"seed {r.get('seed')}"
        )
        per_part = counts.setdefault(machine_name(r.get("machine")), {})
        per_part[part] = per_part.get(part, 0) + 1
    stages = {"pilot": -2, "tuning": -1, "superseded": math.inf}

    def order(part: str) -> float:  # the pilot, the tuning, the seeds in order, the rest
        seed = part.removeprefix("seed ")
        return stages.get(part, float(seed) if seed.isdigit() else math.inf)

    lines = [
        f"- {name}: " + ", ".join(f"{part} {parts[part]}" for part in sorted(parts, key=order))
        for name, parts in counts.items()
    ]
    return "\n".join(lines) or "_no finished run yet_"


def flatness_value(record: dict[str, Any]) -> float | None:
    flatness = record.get("flatness") or {}
    return flatness.get("value") if flatness.get("status") == OK else None


def values_by_seed(records, metric: str, label: str, bits: str, observer: str = "minmax") -> dict[int, float]:
    """``{seed: value}`` of ``label`` at ``bits`` on ``metric`` (see :class:`ClaimV2`)."""
    out: dict[int, float] = {}
    if metric.startswith("ptq@"):
        width = metric.removeprefix("ptq@")
        draws: dict[int, list[float]] = defaultdict(list)
        for r in records:
            if r["kind"] == "ptq" and network_label(r) == label and r.get("observer") == observer:
                accuracy = (r.get("ptq") or {}).get("accuracy_by_bits", {}).get(width)
                if accuracy is not None:
                    draws[r["seed"]].append(accuracy)
        return {seed: sum(v) / len(v) for seed, v in draws.items()}
    for r in records:
        if r["kind"] != "train":
            continue
        name = network_label(r) if r["group"] == "fp" else r["method"]
        if name != label or r["bits"] != bits:
            continue
        if metric == "accuracy":
            out[r["seed"]] = r["accuracy"]
        elif metric == "log_trace":
            value = flatness_value(r)
            if value is not None and value > 0:
                out[r["seed"]] = math.log(value)
    return out


@dataclasses.dataclass
class ClaimOutcome:
    claim: ClaimV2
    seeds: list[int]
    method_values: list[float]
    baseline_values: list[float]
    test: stats.ClaimTest | None
    verdict: str = stats.INCONCLUSIVE
    holm_superiority: float | None = None
    holm_non_reproduction: float | None = None


def evaluate_claims(records) -> list[ClaimOutcome]:
    """Every claim's paired values, test, Holm-adjusted p-values and verdict (per family)."""
    outcomes = []
    for claim in CLAIMS_V2:
        method = values_by_seed(records, claim.metric, claim.method, claim.bits)
        baseline = values_by_seed(records, claim.metric, claim.baseline, claim.bits)
        seeds = sorted(set(method) & set(baseline))
        a, b = [method[s] for s in seeds], [baseline[s] for s in seeds]
        test = stats.claim_test(a, b, claim.direction, claim.delta) if seeds else None
        outcomes.append(ClaimOutcome(claim, seeds, a, b, test))
    families = defaultdict(list)
    for outcome in outcomes:
        if outcome.test is not None:
            families[outcome.claim.family].append(outcome)
    for members in families.values():
        tests = [m.test for m in members]
        verdicts = stats.family_verdicts(tests)
        superiority = stats.holm_adjust([t.p_superiority for t in tests])
        non_reproduction = stats.holm_adjust([t.p_non_reproduction for t in tests])
        for member, verdict, sup, non in zip(members, verdicts, superiority, non_reproduction, strict=True):
            member.verdict, member.holm_superiority, member.holm_non_reproduction = verdict, sup, non
    return outcomes


def scale(metric: str) -> tuple[float, str]:
    """Multiplier and unit of a metric's numbers in the report (accuracy in points)."""
    return (1.0, "") if metric == "log_trace" else (100.0, " pt")


def p_text(p: float | None) -> str:
    return "–" if p is None else f"{p:.3g}"


def reported_interval(metric: str, interval: stats.Interval, sign: int = 1) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``method − baseline`` in the metric's own sign and unit (points
    of accuracy), from ``interval`` of ``sign·(method − baseline)``; needs ``interval.low``."""
    factor = scale(metric)[0]
    low, high = sorted((sign * factor * interval.low, sign * factor * interval.high))
    return sign * factor * interval.mean, low, high


def difference_cells(
    metric: str, method_values, baseline_values, interval: stats.Interval, sign: int = 1
) -> tuple[str, str]:
    """A pair's per-seed differences ``method − baseline`` and its ``mean [95 % CI]``, in the
    metric's own sign and unit; ``interval`` is that of ``sign·(method − baseline)``."""
    factor, unit = scale(metric)
    diffs = ", ".join(f"{factor * (a - b):+.2f}" for a, b in zip(method_values, baseline_values, strict=True))
    if interval.low is None:
        return diffs, f"{sign * factor * interval.mean:+.2f}{unit}"
    mean, low, high = reported_interval(metric, interval, sign)
    return diffs, f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]{unit}"


def claims_table(outcomes: list[ClaimOutcome]) -> str:
    lines = [
        "| claim | family | bits | per-seed method − baseline | mean [95 % CI] | p_sup (Holm) | "
        "p_non (Holm) | verdict | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.test is None:
            name = f"{o.claim.id} {o.claim.text}"
            row = [name, o.claim.family, o.claim.bits, "no paired runs yet", "–", "–", "–"]
            lines.append("| " + " | ".join([*row, f"{stats.INCONCLUSIVE} (n=0)", o.claim.paper]) + " |")
            continue
        # the test's interval is oriented (claim direction); report it in the metric's own sign
        diffs, ci = difference_cells(
            o.claim.metric, o.method_values, o.baseline_values, o.test.interval, o.claim.direction
        )
        lines.append(
            f"| {o.claim.id} {o.claim.text} | {o.claim.family} | {o.claim.bits} | {diffs} | {ci} | "
            f"{p_text(o.test.p_superiority)} ({p_text(o.holm_superiority)}) | "
            f"{p_text(o.test.p_non_reproduction)} ({p_text(o.holm_non_reproduction)}) | "
            f"{o.verdict} (n={len(o.seeds)}) | {o.claim.paper} |"
        )
    return "\n".join(lines)


def undecided_text(outcomes: list[ClaimOutcome], alpha: float = 0.05) -> str:
    """Why each inconclusive claim is so, and what would decide it: its n, the std ``s_d`` of
    its paired differences, its mean, and the seeds at which, were the mean ``m`` and ``s_d``
    to stay as measured, one of its one-sided tests would reject at ``α/k`` (``k`` tested claims
    in its family: the Bonferroni level, which passes Holm's correction). That takes a one-sided
    margin ``t_{1−α/k, n−1}·s_d/sqrt(n) < max(m, δ − m)`` (oriented ``m``), found with
    :func:`~jaxquant.study.stats.seeds_for_half_width` at the two-sided level ``1 − 2α/k``."""
    family_size = defaultdict(int)
    for o in outcomes:
        if o.test is not None and o.test.interval.low is not None:
            family_size[o.claim.family] += 1
    lines = []
    for o in outcomes:
        if o.verdict != stats.INCONCLUSIVE:
            continue
        factor, unit = scale(o.claim.metric)
        if o.test is None or o.test.interval.low is None:
            lines.append(f"- {o.claim.id}: n = {len(o.seeds)}; a test needs a second seed.")
            continue
        differences = [a - b for a, b in zip(o.method_values, o.baseline_values, strict=True)]
        spread = stats.mean_std(differences)[1]
        mean = o.test.interval.mean
        level = 1 - 2 * alpha / family_size[o.claim.family]
        needed = stats.seeds_for_half_width(spread, max(mean, o.claim.delta - mean), level) if spread else 2
        lines.append(
            f"- {o.claim.id}: n = {len(o.seeds)}, s_d = {factor * spread:.2f}{unit}, mean "
            f"{factor * o.claim.direction * mean:+.2f}{unit}; seeds that would decide it at this mean and "
            f"s_d: {needed if needed is not None else 'more than 10,000'}."
        )
    if not lines:
        return "Every claim has a decisive verdict."
    return (
        f"Why a verdict is inconclusive (δ = {100 * ACCURACY_DELTA:.1f} points, or {TRACE_DELTA:.3f} on a "
        "log trace; the seeds are a projection that holds the measured mean and s_d, with each "
        "one-sided test at α/k for the k claims of its family):\n\n" + "\n".join(lines)
    )


def paper_effect_text(outcomes: list[ClaimOutcome]) -> str:
    """For each claim whose paper gives a number, where that number falls against our two-sided
    95 % interval of the same difference: inside it, or above or below it (then excluded)."""
    lines = []
    for o in outcomes:
        effect = o.claim.paper_effect
        if effect is None or o.test is None or o.test.interval.low is None:
            continue
        unit = scale(o.claim.metric)[1]
        _, low, high = reported_interval(o.claim.metric, o.test.interval, o.claim.direction)
        if low <= effect <= high:
            where = "lies inside it"
        else:
            where = f"lies {'above' if effect > high else 'below'} it: our interval excludes it"
        lines.append(
            f"- {o.claim.id} at {o.claim.bits}: our 95 % interval is [{low:+.2f}, {high:+.2f}]{unit} "
            f"(n = {len(o.seeds)}); the paper's {effect:+.2f}{unit} {where}."
        )
    if not lines:
        return ""
    return "The papers' own numbers against our intervals:\n\n" + "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A pair that the protocol reports beside the claims (§1: "never in a family"): ``method``
    vs ``baseline`` at ``bits`` on each of ``metrics`` (as in :class:`ClaimV2`), PTQ with
    ``observer``."""

    text: str
    method: str
    baseline: str
    bits: str
    metrics: tuple[str, ...] = ("accuracy",)
    observer: str = "minmax"


WITH_TRACE = ("accuracy", "log_trace")
CONTEXT_COMPARISONS = (
    Comparison("FPQ − LSQ", "fpq", "lsq", "W4A4", WITH_TRACE),
    Comparison("FPQ SFP only − LSQ", "fpq_sfp_only", "lsq", "W2A4", WITH_TRACE),
    Comparison("FPQ CSD only − LSQ", "fpq_csd_only", "lsq", "W2A4", WITH_TRACE),
    Comparison("FPQ − FPQ CSD only", "fpq", "fpq_csd_only", "W2A4"),
    Comparison("SAM − LSQ", "sam", "lsq", "W2A4", WITH_TRACE),
    Comparison("KD − LSQ", "kd", "lsq", "W2A2"),
    Comparison("FPQ − KD", "fpq", "kd", "W2A2"),
    Comparison("MEC − KD", "mec", "kd", "W2A2"),
    Comparison("DNQ t4 − FP, PTQ mse", "dnq_t4", "fp", "W4A4", ("ptq@4",), "mse"),
    Comparison("DNQ t3 − FP, PTQ mse", "dnq_t3", "fp", "W3A3", ("ptq@3",), "mse"),
)


def context_table(records) -> str:
    """The context pairs' per-seed differences and two-sided 95 % paired t-intervals
    (:func:`~jaxquant.study.stats.paired_t_interval`), one row per pair and metric; no test, no
    correction, no verdict."""
    lines = [
        "| pair | bits | metric | per-seed difference | mean [95 % CI] | n |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONTEXT_COMPARISONS:
        for metric in c.metrics:
            method = values_by_seed(records, metric, c.method, c.bits, c.observer)
            baseline = values_by_seed(records, metric, c.baseline, c.bits, c.observer)
            seeds = sorted(set(method) & set(baseline))
            name = "log trace ratio" if metric == "log_trace" else "test accuracy"
            if not seeds:
                lines.append(f"| {c.text} | {c.bits} | {name} | no paired runs yet | – | 0 |")
                continue
            a, b = [method[s] for s in seeds], [baseline[s] for s in seeds]
            diffs, ci = difference_cells(metric, a, b, stats.paired_t_interval(a, b))
            lines.append(f"| {c.text} | {c.bits} | {name} | {diffs} | {ci} | {len(seeds)} |")
    return "\n".join(lines)


def effect_text(outcome: ClaimOutcome) -> str:
    """The claim's mean paired difference in the metric's own sign: ``+2.14 pt`` of accuracy,
    or the trace's change ``exp(mean log ratio) − 1`` in per cent (``-83 % trace``)."""
    mean = outcome.claim.direction * outcome.test.interval.mean
    if outcome.claim.metric == "log_trace":
        return f"{100 * math.expm1(mean):+.0f} % trace"
    return f"{100 * mean:+.2f} pt"


def summary_text(outcomes: list[ClaimOutcome], partial: bool) -> str:
    """The report's two-line summary, which the README quotes word for word: line 1 the
    reproduced claims, line 2 the others, each claim with its mean paired difference."""
    seeds = max((len(o.seeds) for o in outcomes), default=0)
    grouped = defaultdict(list)
    for o in outcomes:
        grouped[o.verdict].append(
            f"{o.claim.id} {o.claim.text} at {o.claim.bits} ({effect_text(o)})"
            if o.test
            else f"{o.claim.id} {o.claim.text} at {o.claim.bits} (no paired runs)"
        )

    def listed(verdict: str) -> str:
        return "; ".join(grouped[verdict]) or "none"

    head = f"PARTIAL, {seeds} seed(s) so far, no conclusion" if partial else f"{seeds} seeds"
    return (
        f"**Summary** ({head}; Holm within each paper, δ = {100 * ACCURACY_DELTA:.1f} points or 10 % of a "
        f"trace). Reproduced: {listed(stats.REPRODUCED)}; reproduced with an effect below δ: "
        f"{listed(stats.REPRODUCED_BELOW_DELTA)}.\n"
        f"Not reproduced: {listed(stats.NOT_REPRODUCED)}. Inconclusive: {listed(stats.INCONCLUSIVE)}."
    )


def mean_std_text(values: list[float], factor: float = 100.0) -> str:
    if not values:
        return "–"
    mean, std = stats.mean_std([factor * v for v in values])
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def accuracy_table(records) -> str:
    """QAT test accuracy per method and bit setting: mean ± std and the per-seed values."""
    cells = defaultdict(dict)
    for r in records:
        if r["kind"] == "train" and r["group"] == "qat":
            cells[(r["method"], r["bits"])][r["seed"]] = r["accuracy"]
    lines = ["| bits | method | test accuracy % (mean ± std) | per seed | n |", "|---|---|---|---|---|"]
    for (method, bits), by_seed in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        seeds = sorted(by_seed)
        per_seed = ", ".join(f"{100 * by_seed[s]:.2f}" for s in seeds)
        summary = mean_std_text([by_seed[s] for s in seeds])
        lines.append(f"| {bits} | {method} | {summary} | {per_seed} | {len(seeds)} |")
    return "\n".join(lines)


def network_table(records) -> str:
    """The FP-recipe networks (plain FP, DNQ per target): validation and test accuracy per seed."""
    cells = defaultdict(dict)
    for r in records:
        if r["kind"] == "train" and r["group"] == "fp":
            cells[network_label(r)][r["seed"]] = r
    lines = [
        "| network | test accuracy % (mean ± std) | per seed (validation / test) | n |",
        "|---|---|---|---|",
    ]
    for label, by_seed in sorted(cells.items()):
        seeds = sorted(by_seed)
        pairs = [(by_seed[s].get("validation_accuracy", float("nan")), by_seed[s]["accuracy"]) for s in seeds]
        per_seed = ", ".join(f"{100 * validation:.2f} / {100 * test:.2f}" for validation, test in pairs)
        summary = mean_std_text([by_seed[s]["accuracy"] for s in seeds])
        lines.append(f"| {label} | {summary} | {per_seed} | {len(seeds)} |")
    return "\n".join(lines)


def ptq_networks_and_observers(records) -> tuple[list[str], list[str]]:
    """The networks (:func:`network_label`) and observers that the PTQ records hold, sorted."""
    ptq = [r for r in records if r["kind"] == "ptq"]
    return sorted({network_label(r) for r in ptq}), sorted({r.get("observer") for r in ptq})


def ptq_table(records, widths=("8", "6", "4", "3")) -> str:
    """PTQ test accuracy per network, observer and width: mean ± std over seeds of the
    per-seed mean over calibration draws."""
    networks, observers = ptq_networks_and_observers(records)
    lines = [
        "| network | observer | " + " | ".join(f"W{w}A{w}" for w in widths) + " |",
        "|---|---|" + "---|" * len(widths),
    ]
    for network in networks:
        for observer in observers:
            cells = [
                mean_std_text(list(values_by_seed(records, f"ptq@{w}", network, "PTQ", observer).values()))
                for w in widths
            ]
            lines.append(f"| {network} | {observer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ptq_seed_table(records, widths=("8", "6", "4", "3")) -> str:
    """The per-seed values behind :func:`ptq_table`: each seed's mean over calibration draws."""
    networks, observers = ptq_networks_and_observers(records)
    lines = [
        "| network | observer | bits | test accuracy % (mean ± std) | per seed (mean over draws) | n |",
        "|---|---|---|---|---|---|",
    ]
    for network in networks:
        for observer in observers:
            for width in widths:
                by_seed = values_by_seed(records, f"ptq@{width}", network, "PTQ", observer)
                if not by_seed:
                    continue
                seeds = sorted(by_seed)
                per_seed = ", ".join(f"{100 * by_seed[s]:.2f}" for s in seeds)
                summary = mean_std_text([by_seed[s] for s in seeds])
                row = [network, observer, f"W{width}A{width}", summary, per_seed, str(len(seeds))]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def flatness_table(records) -> str:
    """Per run group: the final trace (mean ± std over seeds, the per-seed values, the mean
    probe stderr) and the top eigenvalue."""
    groups = defaultdict(list)
    for r in records:
        if r["kind"] == "train" and flatness_value(r) is not None:
            label = network_label(r) if r["group"] == "fp" else r["method"]
            groups[(r["bits"], label)].append((r["seed"], r["flatness"]))
    lines = [
        "| bits | run | trace (mean ± std) | per seed | mean probe stderr | top eigenvalue | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for (bits, label), pairs in sorted(groups.items()):
        items = [f for _, f in sorted(pairs, key=lambda pair: pair[0])]
        traces = [f["value"] for f in items]
        per_seed = ", ".join(f"{t:.0f}" for t in traces)
        stderr = sum(f["stderr"] for f in items) / len(items)
        eigen = [f["top_eigenvalue"] for f in items if "top_eigenvalue" in f]
        summary = mean_std_text(traces, 1.0)
        cells = [bits, label, summary, per_seed, f"{stderr:.2f}", mean_std_text(eigen, 1.0)]
        lines.append("| " + " | ".join([*cells, str(len(items))]) + " |")
    return "\n".join(lines)


# (bits, runs) of the per-layer tables: the pairs of the trace claims 1c, 1d, 4c and 4d
LAYER_TABLES = (("W2A4", ("lsq", "fpq")), ("W2A2", ("lsq", "fpq")), ("FP", ("fp", "dnq_t4", "dnq_t3")))


LAYER_QUANTITIES = ("trace", "kernel_norm_sq", "trace_times_norm_sq")


def layer_records(records, bits: str, labels) -> dict[str, dict[str, dict[int, dict]]]:
    """``{layer: {label: {seed: values}}}`` of the per-layer flatness records at ``bits`` of
    ``labels`` (QAT methods, or the FP-recipe networks of :func:`network_label` at ``bits="FP"``),
    for the layers with a kernel (``kernel_norm_sq``)."""
    per: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r["kind"] != "train" or r["group"] not in ("qat", "fp") or r["bits"] != bits:
            continue
        label = network_label(r) if r["group"] == "fp" else r["method"]
        if label in labels:
            for layer, values in ((r.get("flatness") or {}).get("layers") or {}).items():
                if "kernel_norm_sq" in values:
                    per[layer][label][r["seed"]] = values
    return per


def layer_table(records, bits: str = "W2A2", labels=("lsq", "fpq")) -> str:
    """Per layer at ``bits``: trace, ``‖W‖²`` and ``tr·‖W‖²`` (means over seeds) of ``labels``
    (see :func:`layer_records`)."""
    per = layer_records(records, bits, labels)
    if not per:
        return "_no per-layer records yet_"
    header = "| layer | " + " | ".join(f"{m}: tr / ‖W‖² / tr·‖W‖²" for m in labels) + " |"
    lines = [header, "|---|" + "---|" * len(labels)]
    for layer in sorted(per):
        cells = []
        for method in labels:
            items = list(per[layer][method].values())
            if not items:
                cells.append("–")
                continue
            mean = {k: sum(i[k] for i in items) / len(items) for k in LAYER_QUANTITIES}
            cells.append(
                f"{mean['trace']:.3g} / {mean['kernel_norm_sq']:.3g} / {mean['trace_times_norm_sq']:.3g}"
            )
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_ratio_table(records, bits: str, method: str, baseline: str) -> str:
    """Per layer at ``bits``: ``method``'s trace, ``‖W‖²`` and ``tr·‖W‖²`` over ``baseline``'s
    of the same seed, as the geometric mean over the paired seeds, ``exp(mean_s ln(m_s / b_s))``,
    with the smallest and largest per-seed ratio. The log of the trace ratio is the log of the
    ``tr·‖W‖²`` ratio minus the log of the ``‖W‖²`` ratio: the table splits a change of a layer's
    trace into a change of kernel scale and a change that kernel scale cannot explain."""
    per = layer_records(records, bits, (method, baseline))
    lines = [
        "| layer | tr ratio | ‖W‖² ratio | tr·‖W‖² ratio | seeds |",
        "|---|---|---|---|---|",
    ]
    for layer in sorted(per):
        seeds = sorted(
            seed
            for seed in set(per[layer][method]) & set(per[layer][baseline])
            if all(per[layer][label][seed][k] > 0 for label in (method, baseline) for k in LAYER_QUANTITIES)
        )
        if not seeds:
            continue
        cells = [
            ratio_cell([per[layer][method][s][quantity] / per[layer][baseline][s][quantity] for s in seeds])
            for quantity in LAYER_QUANTITIES
        ]
        lines.append(f"| {layer} | " + " | ".join(cells) + f" | {len(seeds)} |")
    return "\n".join(lines) if len(lines) > 2 else "_no paired per-layer records yet_"


def ratio_cell(ratios: list[float]) -> str:
    """Per-seed ratios as their geometric mean ``exp(mean ln r)`` (smallest–largest)."""
    geometric = math.exp(sum(map(math.log, ratios)) / len(ratios))
    spread = f" ({min(ratios):.3g}–{max(ratios):.3g})" if len(ratios) > 1 else ""
    return f"{geometric:.3g}{spread}"


CLIPPING_BITS = ("W4A4", "W2A4", "W2A2")


def clipping_table(records, bits: str) -> str:
    """Per layer at ``bits``: the percentage of its latent weights outside its grid
    (``weight_clipping``, protocol change 7) for each QAT method that recorded it, as the mean
    over seeds with the per-seed values in seed order; the layer's weight bits beside its name."""
    per: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    layer_bits, methods = {}, []
    for r in records:
        clipping = r.get("weight_clipping") or {}
        if r["kind"] != "train" or r["group"] != "qat" or r["bits"] != bits or clipping.get("status") != OK:
            continue
        if r["method"] not in methods:
            methods.append(r["method"])
        for layer, values in clipping["layers"].items():
            per[layer][r["method"]][r["seed"]] = 100.0 * values["clipped"]
            layer_bits[layer] = values["bits"]
    if not per:
        return "_no clipping records yet_"
    lines = ["| layer | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for layer in sorted(per):
        cells = []
        for method in methods:
            values = [per[layer][method][seed] for seed in sorted(per[layer][method])]
            per_seed = ", ".join(f"{v:.1f}" for v in values)
            cells.append(f"{sum(values) / len(values):.1f} ({per_seed})" if values else "–")
        lines.append(f"| {layer} ({layer_bits[layer]}-bit) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clipping_ratio_table(records, bits: str, method: str, baseline: str) -> str:
    """Per layer at ``bits``, on the seeds where both QAT runs recorded their weight clipping:
    the % of latent weights outside the grid of each (mean), and ``method`` / ``baseline`` of the
    fake-quantized kernel's ``‖Ŵ‖²`` and of ``tr·‖Ŵ‖²`` (:func:`ratio_cell`), the trace's
    correction for the scale of the kernel that the layer multiplies by."""
    per: dict[str, dict[str, dict[int, tuple[float, float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        clipping, flatness = r.get("weight_clipping") or {}, r.get("flatness") or {}
        pair = r["kind"] == "train" and r["group"] == "qat" and r["bits"] == bits
        measured = clipping.get("status") == OK and flatness.get("status") == OK
        if not (pair and measured and r["method"] in (method, baseline)):
            continue
        for layer, values in clipping["layers"].items():
            if "quantized_norm_sq" in values:  # the first records of change 7 lack it
                trace = flatness["layers"][layer]["trace"]
                per[layer][r["method"]][r["seed"]] = (values["clipped"], values["quantized_norm_sq"], trace)
    lines = [
        f"| layer | clipped % {method} / {baseline} | ‖Ŵ‖² ratio | tr·‖Ŵ‖² ratio | seeds |",
        "|---|---|---|---|---|",
    ]
    for layer in sorted(per):
        seeds = sorted(set(per[layer][method]) & set(per[layer][baseline]))
        pairs = [(per[layer][method][s], per[layer][baseline][s]) for s in seeds]
        if not pairs or not all(m[1] > 0 and b[1] > 0 and m[2] > 0 and b[2] > 0 for m, b in pairs):
            continue
        clipped = [100 * sum(values[0] for values in side) / len(side) for side in zip(*pairs, strict=True)]
        norms = ratio_cell([m[1] / b[1] for m, b in pairs])
        products = ratio_cell([m[1] * m[2] / (b[1] * b[2]) for m, b in pairs])
        row = [layer, f"{clipped[0]:.1f} / {clipped[1]:.1f}", norms, products, str(len(seeds))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else "_no paired clipping records yet_"


def trace_claim_tables(table, records, quantized_only: bool = False) -> str:
    """``table(records, bits, method, baseline)`` for each trace claim's pair (only those at
    quantized bits when ``quantized_only``), each under the claim's id and pair."""
    claims = [c for c in CLAIMS_V2 if c.metric == "log_trace" and not (quantized_only and c.bits == "FP")]
    return "\n\n".join(
        f"{c.id}, {c.method} / {c.baseline} at {c.bits}:\n\n" + table(records, c.bits, c.method, c.baseline)
        for c in claims
    )


def cost_table(results) -> str:
    """Measured wall-clock per method (training run, its flatness record excluded): mean ± std
    over the grid and tuning runs (the pilot, longer, is left out) and the ratio of the means to
    LSQ's at the same bits (to plain FP training's for the FP-recipe networks)."""
    per = defaultdict(list)
    for r in results.get("runs", []):
        if r.get("status") == OK and r.get("wall_time_s") and r["kind"] == "train" and r["group"] != "pilot":
            per[(r.get("bits"), network_label(r) if r.get("group") == "fp" else r["method"])].append(
                r["wall_time_s"]
            )
    lines = [
        "| bits | run | wall-clock min (mean ± std) | × LSQ (FP: × fp) | runs |",
        "|---|---|---|---|---|",
    ]
    for (bits, label), values in sorted(per.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        baseline = per.get((bits, "fp" if bits == "FP" else "lsq"))
        ratio = f"{(sum(values) / len(values)) / (sum(baseline) / len(baseline)):.2f}" if baseline else "–"
        row = [str(bits), label, mean_std_text(values, 1 / 60), ratio, str(len(values))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_hours(record: dict[str, Any]) -> float:
    """A run's measured wall-clock in hours: its training (or PTQ) with its evaluations, plus
    its flatness record."""
    flatness = (record.get("flatness") or {}).get("wall_time_s") or 0.0
    return ((record.get("wall_time_s") or 0.0) + flatness) / 3600


def total_cost_text(results, target_h: float = COST_TARGET_H) -> str:
    """The study's measured wall-clock in all, by stage (pilot, tuning, grid) and for the
    superseded trainings, against the protocol's target; a finished run's hours, summed."""
    hours: dict[str, float] = defaultdict(float)
    finished = [r for r in results.get("runs", []) if r.get("status") == OK]
    for r in finished:
        hours[r["group"] if r.get("group") in ("pilot", "tuning") else "grid"] += run_hours(r)
    superseded = sum(run_hours(r) for r in results.get("superseded_runs", []))
    total = sum(hours.values())
    stages = ", ".join(
        f"{stage} {hours[stage]:.2f} h" for stage in ("pilot", "tuning", "grid") if stage in hours
    )
    text = (
        f"In all: **{total:.1f} h** of wall-clock over {len(finished)} finished runs ({stages})"
        + (f", and {superseded:.2f} h more for the superseded trainings" if superseded else "")
        + f". The protocol's target (§8) was about {target_h:g} h; the seeds stay 5, as §8 says."
    )
    return text if total else "_no finished run yet_"


def retrained_text(results) -> str:
    """Runs trained again because a later run needed their lost checkpoint, whether each
    reproduced the weights recorded the first time (the check of bit-identical reruns), and
    the earlier records they superseded."""
    again = [r for r in results.get("runs", []) if "reproduces_earlier_record" in r]
    superseded = results.get("superseded_runs", [])
    lines = []
    if again:
        same = sum(bool(r["reproduces_earlier_record"]) for r in again)
        rows = ", ".join(
            f"`{r['run_id']}` {100 * r['earlier_accuracy']:.2f} → {100 * r['accuracy']:.2f}" for r in again
        )
        lines.append(
            f"Trained again after their workdir was lost (a later run starts from them): {len(again)}; "
            f"{same} of {len(again)} reproduced their recorded weights: {rows}."
        )
    if superseded:
        rows = ", ".join(f"`{r['run_id']}` (test {100 * r['accuracy']:.2f} %)" for r in superseded)
        lines.append(
            "Superseded trainings (same config, other weights: training is bit-identical on one "
            f"machine, not across machines; the tuning runs and the pilot started from these): {rows}."
        )
    return "\n\n".join(lines) or "No run was trained twice."


def provenance_text(results) -> str:
    """How many grid runs with a parent hold the digest of the checkpoint their parent's
    record ended with (every QAT run of a seed from the same FP weights), and which do not."""
    by_id = {r["run_id"]: r for r in results.get("runs", [])}
    children = [r for r in grid_records(results) if r.get("parent")]
    if not children:
        return "_no grid run with a parent yet_"
    unmatched = [
        r["run_id"]
        for r in children
        if r.get("parent_digest") is None
        or r["parent_digest"] != by_id.get(r["parent"], {}).get("checkpoint_digest")
    ]
    text = (
        f"Provenance: {len(children) - len(unmatched)} of {len(children)} grid runs started from "
        "the checkpoint their parent's record ended with (digests of the weights)."
    )
    return text + (f" Not: {', '.join(f'`{i}`' for i in unmatched)}." if unmatched else "")


def loss_term_table(results) -> str:
    """Each method's mean gradient-norm ratio of every regulariser to CE over its logged steps."""
    per = defaultdict(lambda: defaultdict(list))
    for r in results.get("runs", []):
        for term, value in ((r.get("loss_terms") or {}).get("mean_grad_ratio") or {}).items():
            per[(r.get("bits"), r["method"])][term].append(value)
    if not per:
        return "_no loss-term records yet_"
    lines = ["| bits | method | ‖∇ term‖ / ‖∇ CE‖ (mean over runs) |", "|---|---|---|"]
    for (bits, method), terms in sorted(per.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        text = ", ".join(f"{t} {sum(v) / len(v):.3g}" for t, v in sorted(terms.items()))
        lines.append(f"| {bits} | {method} | {text} |")
    return "\n".join(lines)


DNQ_TUNING_TARGET = 4  # a DNQ candidate is scored by its PTQ at this width


def tuning_score(record: dict[str, Any] | None) -> float | None:
    """The validation accuracy a tuning candidate is chosen by: a training run's final one, a
    DNQ candidate's PTQ's at ``DNQ_TUNING_TARGET`` bits; ``None`` while it has none."""
    if record is None or record.get("status") != OK:
        return None
    if record["kind"] == "ptq":
        return (record.get("ptq") or {}).get("validation_accuracy_by_bits", {}).get(str(DNQ_TUNING_TARGET))
    return record.get("validation_accuracy")


def tuning_runs_table(results) -> str:
    """Every finished tuning candidate with its validation accuracy (:func:`tuning_score`),
    whether or not its field has been chosen yet."""
    lines = ["| candidate run | validation accuracy % |", "|---|---|"]
    for r in results.get("runs", []):
        if r.get("group") != "tuning" or r.get("status") != OK:
            continue
        score = tuning_score(r)
        lines.append(f"| `{r['run_id']}` | {'–' if score is None else f'{100 * score:.2f}'} |")
    return "\n".join(lines) if len(lines) > 2 else "_no tuning run has finished yet_"


VERDICT_COLOURS = {
    stats.REPRODUCED: "tab:green",
    stats.REPRODUCED_BELOW_DELTA: "tab:olive",
    stats.NOT_REPRODUCED: "tab:red",
    stats.INCONCLUSIVE: "tab:gray",
}


def plot_claims(outcomes: list[ClaimOutcome], path: str) -> str | None:
    """The claims as a forest plot: each claim's mean paired difference with its 95 % interval
    (a dot where n < 2), coloured by verdict, beside 0, δ and the paper's effect. Accuracy
    claims in points (method − baseline); trace claims as the ratio of traces, exp(mean ln)."""
    tested = [o for o in outcomes if o.test is not None]
    if not tested:
        return None
    panels = [
        [o for o in tested if o.claim.metric != "log_trace"],
        [o for o in tested if o.claim.metric == "log_trace"],
    ]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for ax, members, is_trace in zip(axes, panels, (False, True), strict=True):
        for row, o in enumerate(members):
            interval, sign = o.test.interval, o.claim.direction

            def shown(value, is_trace=is_trace, sign=sign):
                return math.exp(sign * value) if is_trace else 100 * sign * value

            colour = VERDICT_COLOURS.get(o.verdict, "black")
            if interval.low is not None:
                low, high = sorted((shown(interval.low), shown(interval.high)))
                ax.plot([low, high], [row, row], color=colour, linewidth=2)
            ax.plot(shown(interval.mean), row, "o", color=colour)
            if o.claim.paper_effect is not None:
                ax.plot(o.claim.paper_effect, row, "x", color="black")
        labels = [f"{o.claim.id} {o.claim.bits} (n={len(o.seeds)})" for o in members]
        ax.set_yticks(range(len(members)), labels)
        ax.invert_yaxis()
        if is_trace:
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.axvline(0.9, color="black", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set(
                xlabel="trace ratio method / baseline (dashed: −10 %)",
                title="Trace claims (lower is claimed)",
            )
        else:
            ax.axvline(0.0, color="black", linewidth=0.8)
            ax.axvline(100 * ACCURACY_DELTA, color="black", linestyle="--", linewidth=0.8)
            ax.set(xlabel="method − baseline, points (dashed: δ; ×: paper)", title="Accuracy claims")
    handles = [
        plt.Line2D([], [], color=c, marker="o", linewidth=2, label=v) for v, c in VERDICT_COLOURS.items()
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_trajectories(results, path: str, bits: str = "W2A2") -> str | None:
    """Trace during QAT (mean ± std over seeds at each logged step) per trajectory method."""
    series = defaultdict(lambda: defaultdict(list))
    for r in grid_records(results):
        trajectory = r.get("trajectory") or {}
        if r.get("bits") == bits and trajectory.get("status") == OK:
            for step, value in zip(trajectory["steps"], trajectory["values"], strict=True):
                series[r["method"]][step].append(value)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, by_step in sorted(series.items()):
        steps = sorted(by_step)
        means = [stats.mean_std(by_step[s])[0] for s in steps]
        stds = [stats.mean_std(by_step[s])[1] or 0.0 for s in steps]
        ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set(xlabel="QAT step", ylabel="Hessian trace (10 probes)", title=f"Trace during QAT at {bits}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_landscape(results, path: str) -> str | None:
    """One figure: the 1-D filter-normalised slices through LSQ and FPQ at W2A2 and the line
    from the LSQ to the FPQ checkpoint (BatchNorm statistics interpolated, and re-estimated at
    each point), each mean ± std over the seeds that have it."""
    items = results.get("landscape") or []
    if not items:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("lsq", "fpq"):
        curves = [item["slices"][name] for item in items]
        mean = [stats.mean_std(list(column))[0] for column in zip(*curves, strict=True)]
        std = [stats.mean_std(list(column))[1] or 0.0 for column in zip(*curves, strict=True)]
        alphas = items[0]["alphas"]
        left.plot(alphas, mean, label=name)
        left.fill_between(alphas, [m - s for m, s in zip(mean, std, strict=True)],
                          [m + s for m, s in zip(mean, std, strict=True)], alpha=0.25)  # fmt: skip
    left.set(
        xlabel="α (filter-normalised direction)",
        ylabel="training loss",
        title=f"1-D slices at W2A2 (n={len(items)})",
    )
    left.legend()
    for key, label in (
        ("line", "BN statistics interpolated"),
        ("line_bn_reestimated", "BN re-estimated at each α"),
    ):
        having = [item[key] for item in items if key in item]
        if not having:
            continue
        columns = list(zip(*(line["losses"] for line in having), strict=True))
        line_mean = [stats.mean_std(list(column))[0] for column in columns]
        line_std = [stats.mean_std(list(column))[1] or 0.0 for column in columns]
        right.errorbar(
            having[0]["alphas"],
            line_mean,
            yerr=line_std,
            marker=".",
            capsize=2,
            label=f"{label} (n={len(having)})",
        )
    right.set(xlabel="α (0: LSQ, 1: FPQ)", ylabel="training loss", title="LSQ → FPQ line")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_line(alt: str, figure: str | None, md_path: str, missing: str) -> str:
    """A markdown image of ``figure`` relative to the report, or ``_alt: missing_`` without one."""
    if figure is None:
        return f"_{alt}: {missing}_"
    return f"![{alt}]({os.path.relpath(figure, os.path.dirname(md_path))})"


def write_v2_report(results: dict[str, Any], md_path: str, figure_dir: str) -> str:
    """Write the study v2 report to ``md_path`` (figures under ``figure_dir``); return its text."""
    records = grid_records(results)
    outcomes = evaluate_claims(records)
    os.makedirs(figure_dir, exist_ok=True)
    trajectory = plot_trajectories(results, os.path.join(figure_dir, "study_v2_trajectories.png"))
    claims_figure = plot_claims(outcomes, os.path.join(figure_dir, "study_v2_claims.png"))
    landscape = plot_landscape(results, os.path.join(figure_dir, "study_v2_landscape.png"))
    pilot = results.get("pilot") or {}
    tuning = results.get("tuning") or {}
    status = "**PARTIAL** — the grid is not finished" if results.get("partial", True) else "finished"
    parts = [
        "# Study v2 — results",
        "",
        f"Status: {status} (stage `{results.get('stage')}`). Protocol: "
        "[study_protocol.md](study_protocol.md). Generated from `benchmarks/results/study_v2.json` by "
        "`python benchmarks/study_v2.py --report-only`. Every number was produced on a CPU "
        "(no accelerator), on the machines below; each run's record names the machine that trained "
        "it (protocol, change 5), with its runs counted by stage:",
        "",
        machines_text(results),
        "",
        summary_text(outcomes, results.get("partial", True)),
        "",
        "## Pilot (QAT length)",
        "",
        "LSQ W2A2, seed 0, validation accuracy after BN re-estimation by epoch: "
        + (
            ", ".join(f"{e}: {100 * a:.2f} %" for e, a in pilot.get("validation_by_epoch", []))
            or "not run yet"
        )
        + (f". QAT length E = **{pilot['qat_epochs']} epochs**." if "qat_epochs" in pilot else ""),
        "",
        "## Tuning on validation (seed 0, W2A2)",
        "",
        "\n".join(
            f"- `{field}`: "
            + ", ".join(
                f"{value}: {'–' if score is None else f'{100 * score:.2f} %'}"
                for value, score in scores.items()
            )
            + (f" → **{tuning.get('chosen', {}).get(field)}**" if field in tuning.get("chosen", {}) else "")
            for field, scores in (tuning.get("scores") or {}).items()
        )
        or "not chosen yet",
        "",
        tuning_runs_table(results),
        "",
        "## Claims",
        "",
        f"δ = {100 * ACCURACY_DELTA:.1f} points of accuracy, ln(1/0.9) on a log trace; Holm inside each "
        "family at α = 0.05; differences are method − baseline (accuracy in points, traces as log ratios).",
        "",
        claims_table(outcomes),
        "",
        undecided_text(outcomes),
        "",
        paper_effect_text(outcomes),
        "",
        "Context pairs (protocol §1: reported beside the claims, never in a family; descriptive, "
        "with no test, correction or verdict). Method − baseline on the same seeds, accuracy in points "
        "(PTQ with the `mse` observer, mean over the draws), traces as log ratios:",
        "",
        context_table(records),
        "",
        image_line(
            "the claims: mean difference and 95 % interval", claims_figure, md_path, "no paired runs yet"
        ),
        "",
        "## FP-recipe networks",
        "",
        network_table(records),
        "",
        "## QAT accuracy",
        "",
        accuracy_table(records),
        "",
        "## PTQ accuracy",
        "",
        ptq_table(records),
        "",
        "Per seed:",
        "",
        ptq_seed_table(records),
        "",
        "## Flatness",
        "",
        flatness_table(records),
        "",
        "Per layer (a Conv→BN layer's loss is invariant to its kernel's scale, so compare tr·‖W‖²; "
        "under QAT only approximately, since a weight quantizer's step does not scale with the kernel), "
        "mean over seeds:",
        "",
        "\n\n".join(f"{bits}:\n\n{layer_table(records, bits, labels)}" for bits, labels in LAYER_TABLES),
        "",
        "The same layers as ratios of each trace claim's pair (descriptive, no verdict): method / "
        "baseline per seed, geometric mean over seeds (smallest–largest). A trace ratio below 1 whose "
        "‖W‖² ratio is above 1 and tr·‖W‖² ratio near 1 is a change of kernel scale, not of the "
        "function's curvature.",
        "",
        trace_claim_tables(layer_ratio_table, records),
        "",
        "Latent weights outside the grid, % (protocol, change 7: measured from seed 3 on, "
        "descriptive, no verdict): the weights whose `x/s + z` falls outside the quantizer's grid, so "
        "that the straight-through estimator gives them no gradient and they add nothing to a Hessian "
        "trace taken over the latent weights. A kernel that grows while its step does not (a trace "
        "that falls with a ‖W‖² that rises) shows here. Mean over the seeds that recorded it (per "
        "seed):",
        "",
        "\n\n".join(f"{bits}:\n\n{clipping_table(records, bits)}" for bits in CLIPPING_BITS),
        "",
        "For the QAT trace claims' pairs, the same seeds' trace corrected for the scale of the "
        "fake-quantized kernel `Ŵ` that the layer multiplies by, rather than of the latent `W`: a "
        "Conv→BN loss is invariant to the scale of `Ŵ`, and the estimator passes an unclipped "
        "weight's curvature straight through, so `tr·‖Ŵ‖²` is the scale-free curvature of the "
        "weights that get a gradient (the clipped ones add none). Descriptive, no verdict:",
        "",
        trace_claim_tables(clipping_ratio_table, records, quantized_only=True),
        "",
        image_line("trace trajectories", trajectory, md_path, "none recorded yet"),
        "",
        image_line(
            "slices and the LSQ → FPQ line", landscape, md_path, "no seed has both LSQ and FPQ at W2A2 yet"
        ),
        "",
        "Left: the loss along one filter-normalised random direction of the kernels through each "
        "checkpoint, BatchNorm statistics fixed. Right: the straight line from the LSQ to the FPQ "
        "checkpoint of the same seed; the pre-registered line interpolates the BatchNorm statistics "
        "with the weights, the second re-estimates them at each α on 2,048 clean training images "
        "(protocol, change 4). Mean ± std over seeds; the training loss on the fixed probe batch."
        if landscape
        else "",
        "",
        "## Loss terms",
        "",
        loss_term_table(results),
        "",
        "## Cost",
        "",
        "Wall-clock of each training run with its evaluations, on the machine above; the machine is "
        "shared, and a test suite ran beside some runs, so one run can be up to about 2× slower than "
        "alone. The grid's and the tuning runs are counted (the pilot, 6 epochs, is not); the ratios "
        "(to LSQ, or to plain FP training for the FP-recipe networks) are of their means.",
        "",
        cost_table(results),
        "",
        total_cost_text(results),
        "",
        retrained_text(results),
        "",
        provenance_text(results),
        "",
    ]
    text = "\n".join(parts)
    os.makedirs(os.path.dirname(md_path) or ".", exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)
    return text
