"""The claims of methods.md §6 the study tests: which method is compared with which baseline,
in which group of runs, at which bits and on which metric, and the rows of the verdict table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jaxquant.study.stats import INCONCLUSIVE, paired_t_interval, verdict

from .statistics import (
    format_cell,
    interval_text,
    metric_scale,
    minimal_effect,
    paired_values,
    values_by_seed,
)


@dataclasses.dataclass(frozen=True)
class Claim:
    """One testable part of a claim of methods.md §6: ``method`` vs ``baseline`` in ``group``
    at ``bits`` on ``metric`` (``accuracy``, ``trace`` or ``ptq_accuracy``); ``direction`` +1
    means the method's value is claimed higher, −1 lower."""

    number: str
    text: str
    metric: str
    group: str
    method: str
    baseline: str
    bits: str
    direction: int
    paper: str


CLAIMS = (
    Claim(
        "1",
        "FPQ beats LSQ at W2A4",
        "accuracy",
        "qat",
        "fpq",
        "lsq",
        "W2A4",
        1,
        "88.36 → 89.92 (ResNet-18, CIFAR-10)",
    ),
    Claim(
        "1",
        "FPQ beats LSQ at W2A2",
        "accuracy",
        "qat",
        "fpq",
        "lsq",
        "W2A2",
        1,
        "87.60 → 88.11 (ResNet-18, CIFAR-10)",
    ),
    Claim(
        "1",
        "FPQ's Hessian trace is lower than LSQ's (W2A4)",
        "trace",
        "qat",
        "fpq",
        "lsq",
        "W2A4",
        -1,
        "clearly below LSQ's during training (Fig. 5)",
    ),
    Claim(
        "1",
        "FPQ's Hessian trace is lower than LSQ's (W2A2)",
        "trace",
        "qat",
        "fpq",
        "lsq",
        "W2A2",
        -1,
        "clearly below LSQ's during training (Fig. 5)",
    ),
    Claim(
        "2",
        "CR beats its baseline QAT (LSQ) at W2A4",
        "accuracy",
        "qat",
        "cr",
        "lsq",
        "W2A4",
        1,
        "+3.79 over the baseline (ResNet-18, CIFAR-10; bits not in the abstract)",
    ),
    Claim(
        "2",
        "CR beats its baseline QAT (LSQ) at W2A2",
        "accuracy",
        "qat",
        "cr",
        "lsq",
        "W2A2",
        1,
        "+3.79 over the baseline (ResNet-18, CIFAR-10; bits not in the abstract)",
    ),
    Claim(
        "3",
        "MEC-Quant beats LSQ at W2A2",
        "accuracy",
        "qat",
        "mec",
        "lsq",
        "W2A2",
        1,
        "reaches or beats FP (abstract, no numbers)",
    ),
    Claim(
        "4",
        "DNQ pre-training gives better PTQ accuracy at W4A4",
        "ptq_accuracy",
        "ptq",
        "dnq",
        "fp",
        "4",
        1,
        "better PTQ accuracy of ViTs (abstract, no numbers)",
    ),
    Claim(
        "4",
        "DNQ pre-training gives better PTQ accuracy at W3A3",
        "ptq_accuracy",
        "ptq",
        "dnq",
        "fp",
        "3",
        1,
        "better PTQ accuracy of ViTs (abstract, no numbers)",
    ),
    Claim(
        "4",
        "DNQ's FP network has a smaller Hessian trace",
        "trace",
        "fp",
        "dnq",
        "fp",
        "FP",
        -1,
        "flat minimum before PTQ (abstract)",
    ),
)


def bits_label(w_bits: int, a_bits: int) -> str:
    return f"W{w_bits}A{a_bits}"


def sensitivity_claims(settings: dict[str, Any]) -> list[Claim]:
    """The QAT claims whose method, baseline and bits all run under every sensitivity variant."""
    methods = set(settings.get("sensitivity_methods") or ())
    bits = {bits_label(w, a) for w, a in settings.get("sensitivity_bits") or ()}
    return [c for c in CLAIMS if c.group == "qat" and {c.method, c.baseline} <= methods and c.bits in bits]


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    seeds: tuple[int, ...]
    method_values: tuple[float, ...]
    baseline_values: tuple[float, ...]
    interval: Any
    min_effect: float | None
    verdict: str


def evaluate_claim(records, claim: Claim) -> ClaimResult:
    """The paired comparison of ``claim`` over the seeds where both runs finished."""
    ours = values_by_seed(records, claim.metric, claim.group, claim.method, claim.bits)
    theirs = values_by_seed(records, claim.metric, claim.group, claim.baseline, claim.bits)
    seeds, a, b = paired_values(ours, theirs)
    if not seeds:
        return ClaimResult(claim, (), (), (), None, None, INCONCLUSIVE)
    interval = paired_t_interval(a, b)
    min_effect = minimal_effect(claim.metric, b)
    return ClaimResult(
        claim, seeds, a, b, interval, min_effect, verdict(interval, claim.direction, min_effect)
    )


def effect_text(result: ClaimResult) -> str:
    """``mean [low, high]`` of a claim's paired difference, accuracy in points, trace raw."""
    return interval_text(result.interval, *metric_scale(result.claim.metric))


def effect_cell(result: ClaimResult) -> str:
    """``effect [95% CI] verdict (n)`` of one claim result (``–`` without paired runs)."""
    if not result.seeds:
        return "–"
    return f"{effect_text(result)} {result.verdict} (n={len(result.seeds)})"


def verdict_rows(results: list[ClaimResult], bit_settings: Sequence[str]) -> list[list[str]]:
    rows = []
    for result in results:
        claim = result.claim
        scale, fmt, _ = metric_scale(claim.metric)
        if not result.seeds:
            in_grid = claim.group != "qat" or claim.bits in bit_settings
            effect = "no paired runs" if in_grid else "not in this grid"
            ours = theirs = "–"
        else:
            ours = format_cell(result.method_values, scale, fmt)
            theirs = format_cell(result.baseline_values, scale, fmt)
            effect = effect_text(result)
        rows.append(
            [
                claim.number,
                claim.text,
                claim.paper,
                ours,
                theirs,
                effect,
                str(len(result.seeds)),
                result.verdict,
            ]
        )
    return rows
