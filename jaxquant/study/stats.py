"""Statistics over seeds: mean ± std, the paired t-interval of a difference, and verdicts.

Runs of a method and of its baseline that share a seed start from the same FP checkpoint
and read the same batches, so their difference is paired by seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from scipy import stats as scipy_stats

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """``(mean, sample std)`` with ``std = sqrt(Σ(x − x̄)² / (n − 1))``; std is None for n < 2."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean difference with its two-sided confidence interval ``[low, high]`` (None if n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2


def paired_t_interval(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Interval:
    """Interval of the mean paired difference ``dᵢ = valuesᵢ − baselineᵢ`` (pairs share a seed).

    ``d̄ ± t_{(1+level)/2, n−1} · s_d / sqrt(n)`` with ``s_d`` the sample std of the ``dᵢ``
    (Student's t; the differences are assumed roughly normal). With one pair there is no
    interval.
    """
    if len(values) != len(baseline):
        raise ValueError(f"paired values need equal lengths, got {len(values)} and {len(baseline)}")
    differences = [v - b for v, b in zip(values, baseline, strict=True)]
    mean, std = mean_std(differences)
    n = len(differences)
    if std is None:
        return Interval(mean, None, None, n)
    half = scipy_stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def seeds_for_half_width(
    std: float, half_width: float, level: float = 0.95, max_seeds: int = 10_000
) -> int | None:
    """The fewest pairs ``n ≥ 2`` whose interval of :func:`paired_t_interval` is at most
    ``half_width`` wide on each side at this ``std`` of the differences:
    ``min n : t_{(1+level)/2, n−1} · std / sqrt(n) ≤ half_width`` (None beyond ``max_seeds``).

    At ``half_width = max(m, δ − m)`` for a mean ``m`` the interval excludes 0 or excludes δ."""
    if half_width <= 0:
        raise ValueError(f"half_width={half_width!r} is not allowed: use a positive width")
    for n in range(2, max_seeds + 1):
        if scipy_stats.t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n) <= half_width:
            return n
    return None


def verdict(interval: Interval, direction: int, min_effect: float) -> str:
    """The verdict on a claim that the difference has sign ``direction`` (+1 or −1).

    * reproduced: the whole interval lies on the claimed side of 0;
    * not reproduced: the interval excludes every effect of at least ``min_effect`` in the
      claimed direction (this includes an effect significantly in the opposite direction);
    * inconclusive: anything else, and always when there is no interval (fewer than 2 seeds).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction={direction!r} is not allowed: choose one of [1, -1]")
    if interval.low is None:
        return INCONCLUSIVE
    low, high = (interval.low, interval.high) if direction == 1 else (-interval.high, -interval.low)
    if low > 0:
        return REPRODUCED
    if high < min_effect:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def paired_one_sided_p(differences: Sequence[float], margin: float, alternative: str) -> float | None:
    """One-sided paired t-test of ``H0: Δ ≤ margin`` (``alternative='greater'``) or
    ``H0: Δ ≥ margin`` (``'less'``) on the differences ``dᵢ``:
    ``t = (d̄ − margin) / (s_d/√n)`` with ``n − 1`` degrees of freedom, ``p = 1 − F(t)``
    (greater) or ``F(t)`` (less). ``None`` for fewer than 2 differences; with ``s_d = 0`` the
    p-value is 0 or 1 by the side of ``d̄``."""
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative={alternative!r} is not allowed: choose one of ['greater', 'less']")
    mean, std = mean_std(list(differences))
    if std is None:
        return None
    n = len(differences)
    if std == 0:
        above = mean > margin
        return 0.0 if above == (alternative == "greater") and mean != margin else 1.0
    t = (mean - margin) / (std / math.sqrt(n))
    cdf = float(scipy_stats.t.cdf(t, n - 1))
    return 1.0 - cdf if alternative == "greater" else cdf


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family's p-values: with the m available p-values
    sorted ``p₍₁₎ ≤ … ≤ p₍ₘ₎``, ``p̃₍ᵢ₎ = min(1, max_{j ≤ i} (m − j + 1)·p₍ⱼ₎)``; rejecting
    where ``p̃ < α`` keeps the familywise error at α. ``None`` entries (no test) stay ``None``
    and do not count in m."""
    available = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(available)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(available):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


@dataclasses.dataclass(frozen=True)
class ClaimTest:
    """One claim's paired differences oriented so that the claim says ``Δ > 0``, its 95 %
    interval and the two one-sided p-values of docs/study_protocol.md §6."""

    interval: Interval
    p_superiority: float | None  # H0: Δ ≤ 0
    p_non_reproduction: float | None  # H0: Δ ≥ δ


def claim_test(values: Sequence[float], baseline: Sequence[float], direction: int, delta: float) -> ClaimTest:
    """The :class:`ClaimTest` of ``values`` against ``baseline`` (paired by position) for a
    claim of sign ``direction``: the differences are ``direction·(valuesᵢ − baselineᵢ)``."""
    if direction not in (1, -1):
        raise ValueError(f"direction={direction!r} is not allowed: choose one of [1, -1]")
    oriented = [direction * v for v in values]
    oriented_baseline = [direction * b for b in baseline]
    interval = paired_t_interval(oriented, oriented_baseline)
    differences = [v - b for v, b in zip(oriented, oriented_baseline, strict=True)]
    return ClaimTest(
        interval,
        paired_one_sided_p(differences, 0.0, "greater"),
        paired_one_sided_p(differences, delta, "less"),
    )


REPRODUCED_BELOW_DELTA = "reproduced (effect below δ)"


def family_verdicts(tests: Sequence[ClaimTest], alpha: float = 0.05) -> list[str]:
    """Holm-corrected verdicts of one family: *reproduced* where the adjusted superiority
    p < α (*reproduced (effect below δ)* where the adjusted non-reproduction p is also < α),
    *not reproduced* where only the adjusted non-reproduction p < α, else *inconclusive*."""
    superiority = holm_adjust([t.p_superiority for t in tests])
    non_reproduction = holm_adjust([t.p_non_reproduction for t in tests])
    verdicts = []
    for sup, non in zip(superiority, non_reproduction, strict=True):
        rejects_zero = sup is not None and sup < alpha
        rejects_delta = non is not None and non < alpha
        if rejects_zero:
            verdicts.append(REPRODUCED_BELOW_DELTA if rejects_delta else REPRODUCED)
        else:
            verdicts.append(NOT_REPRODUCED if rejects_delta else INCONCLUSIVE)
    return verdicts
