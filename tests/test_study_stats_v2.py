"""Study v2's statistics (one-sided paired tests, Holm's correction, family verdicts) against
independent computations with scipy on synthetic records."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxquant.study import stats


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_one_sided_paired_p_matches_scipy(seed, alternative):
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.85, 0.01, size=5)
    values = baseline + rng.normal(0.004, 0.004, size=5)
    margin = 0.005 if alternative == "less" else 0.0
    differences = values - baseline
    ours = stats.paired_one_sided_p(list(differences), margin, alternative)
    reference = scipy_stats.ttest_1samp(differences, margin, alternative=alternative).pvalue
    assert ours == pytest.approx(reference, rel=1e-9)
    if margin == 0:
        paired = scipy_stats.ttest_rel(values, baseline, alternative=alternative).pvalue
        assert ours == pytest.approx(paired, rel=1e-9)


def test_one_sided_p_needs_two_differences_and_handles_zero_spread():
    assert stats.paired_one_sided_p([0.01], 0.0, "greater") is None
    assert stats.paired_one_sided_p([0.01, 0.01], 0.0, "greater") == 0.0
    assert stats.paired_one_sided_p([0.01, 0.01], 0.0, "less") == 1.0
    with pytest.raises(ValueError, match="alternative"):
        stats.paired_one_sided_p([0.1, 0.2], 0.0, "two-sided")


def holm_by_definition(p_values):
    """Holm's adjusted p of each hypothesis: the smallest familywise α at which the step-down
    procedure rejects it (searched over every α = (m − j + 1)·p₍ⱼ₎, the procedure's breakpoints)."""
    m = len(p_values)

    def rejected(alpha):
        out = set()
        for rank, (p, index) in enumerate(sorted((p, i) for i, p in enumerate(p_values))):
            if p * (m - rank) > alpha:
                break
            out.add(index)
        return out

    candidates = sorted({min(1.0, (m - j) * p) for j, p in enumerate(sorted(p_values))} | {1.0})
    return [min(a for a in candidates if i in rejected(a) or a == 1.0) for i in range(m)]


@pytest.mark.parametrize("seed", range(6))
def test_holm_matches_the_step_down_procedure(seed):
    rng = np.random.default_rng(seed)
    p_values = list(rng.uniform(0, 0.2, size=rng.integers(1, 6)))
    assert stats.holm_adjust(p_values) == pytest.approx(holm_by_definition(p_values))


def test_holm_keeps_missing_tests_out_of_the_count():
    assert stats.holm_adjust([0.01, None, 0.04]) == [0.02, None, 0.04]
    assert stats.holm_adjust([None]) == [None]


def test_claim_test_orients_a_lower_is_better_claim():
    trace_lsq = [10.0, 12.0, 11.0, 13.0, 9.0]
    trace_fpq = [t - 1.0 + 0.1 * k for k, t in enumerate(trace_lsq)]
    test = stats.claim_test(trace_fpq, trace_lsq, -1, 0.1)
    assert test.interval.mean == pytest.approx(0.8)
    reference = scipy_stats.ttest_rel(trace_fpq, trace_lsq, alternative="less").pvalue
    assert test.p_superiority == pytest.approx(reference, rel=1e-9)


def test_family_verdicts_on_synthetic_records():
    rng = np.random.default_rng(0)
    baseline = rng.normal(0.80, 0.01, size=5)
    noise = rng.normal(0, 0.001, size=5)
    big = stats.claim_test(list(baseline + 0.02 + noise), list(baseline), 1, 0.005)
    null = stats.claim_test(list(baseline + noise), list(baseline), 1, 0.005)
    small = stats.claim_test(list(baseline + 0.0015 + noise / 5), list(baseline), 1, 0.005)
    noisy = stats.claim_test(list(baseline + rng.normal(0.003, 0.01, size=5)), list(baseline), 1, 0.005)
    verdicts = stats.family_verdicts([big, null, small, noisy])
    assert verdicts == [
        stats.REPRODUCED,
        stats.NOT_REPRODUCED,
        stats.REPRODUCED_BELOW_DELTA,
        stats.INCONCLUSIVE,
    ]
    # the verdicts follow from Holm-adjusted p-values computed independently
    for family in itertools.permutations([big, null, small, noisy]):
        sup = holm_by_definition([t.p_superiority for t in family])
        assert [s < 0.05 for s in sup] == [v.startswith("reproduced") for v in stats.family_verdicts(family)]


def test_seeds_for_half_width_is_the_first_n_whose_interval_is_narrow_enough():
    rng = np.random.default_rng(3)
    for std, width in ((0.4, 0.25), (1.0, 0.25), (0.01, 0.25), (2.0, 0.1)):
        n = stats.seeds_for_half_width(std, width)
        # the interval of n pairs with this sample std, from scipy; n − 1 pairs are too few
        half = [scipy_stats.t.interval(0.95, k - 1, scale=std / np.sqrt(k))[1] for k in (n - 1, n) if k >= 2]
        assert half[-1] <= width and (n == 2 or half[0] > width)
        differences = rng.normal(size=n)
        differences = (differences - differences.mean()) / differences.std(ddof=1) * std
        interval = stats.paired_t_interval(list(differences), [0.0] * n)
        assert interval.half_width <= width + 1e-12
    assert stats.seeds_for_half_width(5.0, 0.01, max_seeds=50) is None
    with pytest.raises(ValueError, match="half_width=0"):
        stats.seeds_for_half_width(1.0, 0)
