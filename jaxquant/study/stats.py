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
