"""Study v2's report (benchmarks/report/study_v2.py) on synthetic records: the claim rows
against scipy's paired t-tests and an independent Holm step-down, the tables, the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from report import study_v2 as report  # noqa: E402

SEEDS = range(5)


def qat(seed, method, bits, accuracy, trace):
    return {
        "run_id": f"seed{seed}/{method}_{bits}",
        "status": "ok",
        "kind": "train",
        "group": "qat",
        "seed": seed,
        "method": method,
        "bits": bits,
        "accuracy": accuracy,
        "wall_time_s": 60.0,
        "flatness": {
            "status": "ok",
            "value": trace,
            "stderr": 1.0,
            "top_eigenvalue": trace / 10,
            "layers": {
                "conv1": {"trace": trace / 2, "kernel_norm_sq": 4.0, "trace_times_norm_sq": 2 * trace}
            },
        },
        "loss_terms": {"status": "ok", "mean_grad_ratio": {"csd": 40.0}} if method == "fpq" else {},
    }


def network(seed, method, target, trace):
    record = qat(seed, method, "FP", 0.9, trace)
    record.update(group="fp", target_bits=target, run_id=f"seed{seed}/{method}{target}")
    return record


def ptq(seed, source, target, observer, draw, by_bits):
    return {
        "run_id": f"seed{seed}/{source}{target}/ptq_{observer}_{draw}",
        "status": "ok",
        "kind": "ptq",
        "group": "ptq",
        "seed": seed,
        "method": source,
        "source": source,
        "target_bits": target,
        "observer": observer,
        "draw": draw,
        "bits": "PTQ",
        "ptq": {"status": "ok", "accuracy_by_bits": by_bits},
    }


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    runs = []
    truth = {"fpq": 0.02, "cr": 0.0, "mec": 0.003}
    for seed in SEEDS:
        for bits in ("W2A4", "W2A2"):
            base = 0.80 + rng.normal(0, 0.01)
            runs.append(qat(seed, "lsq", bits, base, 100.0 + rng.normal(0, 5)))
            for method, effect in truth.items():
                noise = rng.normal(0, 0.002)
                runs.append(qat(seed, method, bits, base + effect + noise, 80.0 + rng.normal(0, 5)))
        runs.append(network(seed, "fp", None, 50.0 + rng.normal(0, 2)))
        for target in (4, 3):
            runs.append(network(seed, "dnq", target, 45.0 + rng.normal(0, 2)))
        for observer in ("minmax", "mse"):
            for draw in range(3):
                fp = {w: 0.85 + rng.normal(0, 0.003) for w in ("8", "6", "4", "3")}
                runs.append(ptq(seed, "fp", None, observer, draw, fp))
                for target in (4, 3):
                    dnq = {w: v + 0.01 + rng.normal(0, 0.002) for w, v in fp.items()}
                    runs.append(ptq(seed, "dnq", target, observer, draw, dnq))
    runs.append({**qat(0, "fpq", "W2A2", 0.5, 1.0), "group": "tuning", "run_id": "tune"})
    runs[0].update(reproduces_earlier_record=True, earlier_accuracy=runs[0]["accuracy"])
    superseded = [{**runs[0], "accuracy": 0.7}]
    alphas = list(np.linspace(-1, 1, 5))
    landscape = [
        {
            "seed": seed,
            "alphas": alphas,
            "slices": {"lsq": [1 + 2 * a * a for a in alphas], "fpq": [1 + a * a for a in alphas]},
            "line": {"alphas": [0.0, 0.5, 1.0], "losses": [1.0, 1.3 + 0.01 * seed, 0.9]},
        }
        for seed in SEEDS
    ]
    for item in landscape[:3]:  # seeds whose re-estimated line was measured
        item["line_bn_reestimated"] = {"alphas": [0.0, 0.5, 1.0], "losses": [1.0, 1.1, 0.9], "images": 64}
    return {
        "study": "study_v2",
        "partial": True,
        "stage": "grid",
        "runs": runs,
        "machine": {"cpus": 2},
        "landscape": landscape,
        "superseded_runs": superseded,
    }


def holm(p_values):
    order = np.argsort(p_values)
    m, adjusted, running = len(p_values), [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def test_claim_rows_match_scipy_and_holm(synthetic):
    records = report.grid_records(synthetic)
    assert all(r["group"] != "tuning" for r in records)
    outcomes = report.evaluate_claims(records)
    by_id = {o.claim.id: o for o in outcomes}
    assert set(by_id) == {c.id for c in report.CLAIMS_V2} and all(len(o.seeds) == 5 for o in outcomes)
    for family in {c.family for c in report.CLAIMS_V2}:
        members = [o for o in outcomes if o.claim.family == family]
        sup, non = [], []
        for o in members:
            a, b = np.array(o.method_values), np.array(o.baseline_values)
            side = "greater" if o.claim.direction == 1 else "less"
            sup.append(scipy_stats.ttest_rel(a, b, alternative=side).pvalue)
            d = o.claim.direction * (a - b)
            non.append(scipy_stats.ttest_1samp(d, o.claim.delta, alternative="less").pvalue)
            assert o.test.p_superiority == pytest.approx(sup[-1], rel=1e-9)
            assert o.test.p_non_reproduction == pytest.approx(non[-1], rel=1e-9)
        for o, s, n in zip(members, holm(sup), holm(non), strict=True):
            assert o.holm_superiority == pytest.approx(s) and o.holm_non_reproduction == pytest.approx(n)
    assert by_id["1b"].verdict == "reproduced"
    assert by_id["2b"].verdict == "not reproduced"
    assert by_id["1d"].verdict.startswith("reproduced")  # traces 80 vs 100: lower by > 10 %
    # PTQ values are the per-seed means over the three draws
    fp4 = report.values_by_seed(records, "ptq@4", "fp", "PTQ")
    seed0 = [r["ptq"]["accuracy_by_bits"]["4"] for r in records if r["kind"] == "ptq" and r["source"] == "fp"
             and r["seed"] == 0 and r["observer"] == "minmax"]  # fmt: skip
    assert len(seed0) == 3 and fp4[0] == pytest.approx(sum(seed0) / 3)
    trace = report.values_by_seed(records, "log_trace", "dnq_t4", "FP")
    assert trace[1] == pytest.approx(
        math.log(next(r for r in records if r["run_id"] == "seed1/dnq4")["flatness"]["value"])
    )


def test_the_report_has_every_section_and_per_seed_values(synthetic, tmp_path):
    text = report.write_v2_report(synthetic, str(tmp_path / "results.md"), str(tmp_path / "figures"))
    headings = ["## Pilot", "## Tuning", "## FP-recipe networks", "## Claims", "## QAT accuracy"]
    headings += ["## PTQ accuracy", "## Flatness", "## Loss terms", "## Cost"]
    for heading in headings:
        assert heading in text
    assert "**PARTIAL**" in text
    lsq = sorted(
        (r["seed"], r["accuracy"]) for r in synthetic["runs"] if r["method"] == "lsq" and r["bits"] == "W2A2"
    )
    assert ", ".join(f"{100 * a:.2f}" for _, a in lsq) in text
    assert "csd 40" in text and "tr·‖W‖²" in text
    fp4 = report.values_by_seed(report.grid_records(synthetic), "ptq@4", "fp", "PTQ")
    assert "| fp | minmax | W4A4 | " in text and ", ".join(f"{100 * fp4[s]:.2f}" for s in SEEDS) in text
    lsq_traces = [r["flatness"]["value"] for r in sorted(synthetic["runs"], key=lambda r: r["seed"])
                  if r["group"] == "qat" and r["method"] == "lsq" and r["bits"] == "W2A2"]  # fmt: skip
    assert "| " + ", ".join(f"{t:.0f}" for t in lsq_traces) + " |" in text
    for bits, labels in report.LAYER_TABLES:  # a per-layer table for each trace claim's pair
        table = text.split(f"\n{bits}:\n\n")[1].split("\n\n")[0]
        assert table.startswith(f"| layer | {labels[0]}: tr / ‖W‖² / tr·‖W‖² |") and "| conv1 | " in table
    for claim in ("1c, fpq / lsq at W2A4", "1d, fpq / lsq at W2A2", "4c, dnq_t4 / fp", "4d, dnq_t3 / fp"):
        assert text.split(f"\n{claim}")[1].split("\n\n")[1].startswith("| layer | tr ratio |")
    first = synthetic["runs"][0]
    assert "(a later run starts from them): 1; 1 of 1 reproduced" in text
    assert f"`{first['run_id']}` (test 70.00 %)" in text
    assert f"`{first['run_id']}` {100 * first['accuracy']:.2f} → {100 * first['accuracy']:.2f}" in text
    assert (tmp_path / "figures" / "study_v2_landscape.png").stat().st_size > 0
    assert "](figures/study_v2_landscape.png)" in text
    assert (tmp_path / "figures" / "study_v2_claims.png").stat().st_size > 0
    assert "](figures/study_v2_claims.png)" in text
    assert report.plot_claims([], str(tmp_path / "none.png")) is None


def test_summary_lists_every_claim_under_its_verdict(synthetic):
    outcomes = report.evaluate_claims(report.grid_records(synthetic))
    summary = report.summary_text(outcomes, partial=False)
    first, second = summary.split("\n")
    assert first.startswith("**Summary** (5 seeds;")
    for o in outcomes:
        line = first if o.verdict.startswith("reproduced") else second
        assert f"{o.claim.id} {o.claim.text} at {o.claim.bits} (" in line
    lsq = report.values_by_seed(report.grid_records(synthetic), "log_trace", "lsq", "W2A2")
    fpq = report.values_by_seed(report.grid_records(synthetic), "log_trace", "fpq", "W2A2")
    ratio = np.exp(np.mean([fpq[s] - lsq[s] for s in SEEDS]))
    assert f"1d FPQ's trace is lower at W2A2 ({100 * (ratio - 1):+.0f} % trace)" in summary
    assert "PARTIAL, 5 seed(s) so far, no conclusion" in report.summary_text(outcomes, partial=True)


def test_readme_quotes_the_committed_study_s_summary():
    """The README's summary is the report's, word for word, once the grid is finished; until
    then the README says the study is running."""
    with open(os.path.join(REPO, "benchmarks", "results", "study_v2.json")) as f:
        results = json.load(f)
    with open(os.path.join(REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    if results["partial"]:
        assert "It is still running" in readme and "docs/results.md" in readme
    else:
        outcomes = report.evaluate_claims(report.grid_records(results))
        assert " ".join(report.summary_text(outcomes, partial=False).split()) in readme


def test_undecided_claims_say_what_would_decide_them(synthetic):
    two_seeds = [r for r in report.grid_records(synthetic) if r["seed"] < 2]
    outcomes = report.evaluate_claims(two_seeds)
    text = report.undecided_text(outcomes)
    undecided = [o for o in outcomes if o.verdict == "inconclusive"]
    assert undecided
    for o in undecided:
        k = sum(1 for other in outcomes if other.claim.family == o.claim.family)
        d = o.claim.direction * (np.array(o.method_values) - np.array(o.baseline_values))
        target = max(d.mean(), o.claim.delta - d.mean())
        margin = [
            scipy_stats.t.ppf(1 - 0.05 / k, n - 1) * d.std(ddof=1) / np.sqrt(n) for n in range(2, 10001)
        ]
        needed = next(n for n, m in zip(range(2, 10001), margin, strict=True) if m <= target)
        line = next(line for line in text.splitlines() if line.startswith(f"- {o.claim.id}: "))
        assert line.startswith(f"- {o.claim.id}: n = 2, ") and line.endswith(
            f"at this mean and s_d: {needed}."
        )
    assert report.undecided_text([]) == "Every claim has a decisive verdict."


def test_layer_ratios_split_a_trace_change_into_kernel_scale_and_the_rest():
    def run(seed, method, trace, norm_sq):
        record = qat(seed, method, "W2A2", 0.8, 1.0)
        layer = {"trace": trace, "kernel_norm_sq": norm_sq, "trace_times_norm_sq": trace * norm_sq}
        record["flatness"]["layers"] = {"conv1": layer, "bn1": {"trace": 1.0}}
        return record

    # FPQ's kernel is 4x and 9x LSQ's in ‖W‖², its trace 1/8 and 1/9: the product 0.5 and 1.
    records = [run(0, "lsq", 8.0, 1.0), run(0, "fpq", 1.0, 4.0), run(1, "lsq", 9.0, 1.0)]
    records += [run(1, "fpq", 1.0, 9.0), run(2, "fpq", 5.0, 5.0)]  # seed 2 has no LSQ run
    rows = report.layer_ratio_table(records, "W2A2", "fpq", "lsq").splitlines()[2:]
    geometric = [math.exp(np.mean(np.log(pair))) for pair in ([1 / 8, 1 / 9], [4, 9], [0.5, 1.0])]
    assert geometric[1] == pytest.approx(6.0) and geometric[2] == pytest.approx(math.sqrt(0.5))
    spreads = ["0.111–0.125", "4–9", "0.5–1"]
    cells = [f"{g:.3g} ({spread})" for g, spread in zip(geometric, spreads, strict=True)]
    assert rows == ["| conv1 | " + " | ".join(cells) + " | 2 |"]  # bn1 has no kernel
    assert report.layer_ratio_table(records, "W2A4", "fpq", "lsq") == "_no paired per-layer records yet_"


def test_cost_table_means_ratios_and_no_pilot():
    runs = [{**qat(seed, "lsq", "W2A2", 0.8, 1.0), "wall_time_s": 60.0 * (1 + seed)} for seed in range(2)]
    runs += [{**qat(0, "fpq", "W2A2", 0.8, 1.0), "wall_time_s": 270.0}]
    runs += [{**qat(0, "lsq", "W2A2", 0.8, 1.0), "group": "pilot", "run_id": "pilot", "wall_time_s": 6000.0}]
    rows = {row.split(" | ")[1]: row for row in report.cost_table({"runs": runs}).splitlines()[2:]}
    assert rows["lsq"] == f"| W2A2 | lsq | 1.50 ± {np.std([1.0, 2.0], ddof=1):.2f} | 1.00 | 2 |"
    assert rows["fpq"] == "| W2A2 | fpq | 4.50 | 3.00 | 1 |"


def test_total_cost_sums_each_stage_s_runs_with_their_flatness_records():
    grid = [{**qat(seed, "lsq", "W2A2", 0.8, 1.0), "wall_time_s": 1800.0} for seed in range(2)]
    grid[0]["flatness"]["wall_time_s"] = 1800.0
    pilot = {**qat(0, "lsq", "W2A2", 0.8, 1.0), "group": "pilot", "wall_time_s": 3600.0, "flatness": {}}
    tuning = {**qat(0, "fpq", "W2A2", 0.8, 1.0), "group": "tuning", "wall_time_s": 900.0}
    failed = {**qat(3, "cr", "W2A2", 0.8, 1.0), "status": "failed", "wall_time_s": 36000.0}
    superseded = [{"run_id": "seed0/fp", "wall_time_s": 1800.0}]
    results = {"runs": [*grid, pilot, tuning, failed], "superseded_runs": superseded}
    text = report.total_cost_text(results, target_h=5.0)
    assert text.startswith("In all: **2.8 h** of wall-clock over 4 finished runs")
    assert "(pilot 1.00 h, tuning 0.25 h, grid 1.50 h), and 0.50 h more for the superseded" in text
    assert "target (§8) was about 5 h" in text
    assert report.total_cost_text({"runs": [failed]}) == "_no finished run yet_"


def test_machines_count_each_machine_s_runs_by_stage_and_seed():
    intel = {"cpus": 2, "cpu_model": "Xeon", "platform": "Linux-a"}
    amd = {"cpus": 2, "cpu_model": None, "platform": "Linux-b"}
    runs = [{**qat(seed, "lsq", "W2A2", 0.8, 1.0), "machine": intel} for seed in range(2)]
    runs += [{**qat(1, "fpq", "W2A2", 0.8, 1.0), "machine": amd}, {**qat(2, "cr", "W2A2", 0.8, 1.0)}]
    runs += [{**qat(0, "mec", "W2A2", 0.8, 1.0), "group": "tuning", "machine": amd}]
    runs += [{**qat(3, "kd", "W2A2", 0.8, 1.0), "status": "pending", "machine": amd}]
    superseded = [{"run_id": "seed0/fp", "seed": 0, "machine": amd}]
    lines = report.machines_text({"runs": runs, "superseded_runs": superseded}).splitlines()
    assert lines == [
        "- 2 CPU cores, Xeon, Linux-a: seed 0 1, seed 1 1",
        "- 2 CPU cores, CPU model not recorded, Linux-b: tuning 1, seed 1 1, superseded 1",
        "- machine not recorded: seed 2 1",
    ]


def test_provenance_counts_runs_that_started_from_their_parent_s_weights():
    fp = {"run_id": "seed0/fp", "status": "ok", "group": "fp", "checkpoint_digest": "a"}
    same = {"run_id": "seed0/lsq", "status": "ok", "group": "qat", "parent": "seed0/fp", "parent_digest": "a"}
    other = {**same, "run_id": "seed0/fpq", "parent_digest": "b"}
    unknown = {**same, "run_id": "seed0/cr", "parent_digest": None}
    tuning = {**other, "run_id": "tune", "group": "tuning"}  # not a grid run
    text = report.provenance_text({"runs": [fp, same, other, unknown, tuning]})
    assert text.startswith("Provenance: 1 of 3 grid runs") and "Not: `seed0/fpq`, `seed0/cr`." in text
    assert report.provenance_text({"runs": [fp, same]}).endswith("(digests of the weights).")


def test_report_only_regenerates_from_the_json(synthetic, tmp_path):
    results = tmp_path / "study_v2.json"
    results.write_text(json.dumps(synthetic))
    md = tmp_path / "out.md"
    command = [sys.executable, "benchmarks/study_v2.py", "--report-only", "--results", str(results)]
    command += ["--report", str(md), "--figures", str(tmp_path / "figures")]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)
    first = md.read_text()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)
    assert md.read_text() == first and "## Claims" in first
    missing = subprocess.run(
        [sys.executable, "benchmarks/study_v2.py", "--report-only", "--results", str(tmp_path / "none.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.startswith("study_v2: error:")


def test_clipping_table_gives_each_method_s_mean_and_per_seed_percentages():
    def run(seed, method, conv1, head):
        layers = {"conv1": {"clipped": conv1, "bits": 2}, "head": {"clipped": head, "bits": 8}}
        return {**qat(seed, method, "W2A2", 0.8, 1.0), "weight_clipping": {"status": "ok", "layers": layers}}

    records = [run(3, "lsq", 0.01, 0.0), run(4, "lsq", 0.02, 0.0), run(3, "fpq", 0.30, 0.001)]
    records += [qat(0, "fpq", "W2A2", 0.8, 1.0)]  # recorded before change 7: left out
    rows = report.clipping_table(records, "W2A2").splitlines()
    assert rows[0] == "| layer | lsq | fpq |"
    assert rows[2:] == [
        "| conv1 (2-bit) | 1.5 (1.0, 2.0) | 30.0 (30.0) |",
        "| head (8-bit) | 0.0 (0.0, 0.0) | 0.1 (0.1) |",
    ]
    assert report.clipping_table(records, "W2A4") == "_no clipping records yet_"


def test_clipping_ratios_correct_the_trace_by_the_quantized_kernel_s_scale():
    def run(seed, method, trace, clipped, quantized):
        record = qat(seed, method, "W2A2", 0.8, 2 * trace)  # conv1's trace is half the total
        layers = {"conv1": {"clipped": clipped, "bits": 2, "quantized_norm_sq": quantized}}
        return {**record, "weight_clipping": {"status": "ok", "layers": layers}}

    # FPQ's conv1 trace 1/2 and 1/8 of LSQ's, its ‖Ŵ‖² 2x and 4x: tr·‖Ŵ‖² 1 and 1/2.
    records = [run(3, "lsq", 4.0, 0.02, 10.0), run(3, "fpq", 2.0, 0.40, 20.0)]
    records += [run(4, "lsq", 8.0, 0.04, 10.0), run(4, "fpq", 1.0, 0.60, 40.0), run(5, "fpq", 1.0, 0.5, 1.0)]
    records += [qat(2, "lsq", "W2A2", 0.8, 1.0)]  # no clipping record: left out
    rows = report.clipping_ratio_table(records, "W2A2", "fpq", "lsq").splitlines()
    norms, products = math.sqrt(2 * 4), math.sqrt(1 * 0.5)
    assert rows[0] == "| layer | clipped % fpq / lsq | ‖Ŵ‖² ratio | tr·‖Ŵ‖² ratio | seeds |"
    assert rows[2:] == [f"| conv1 | 50.0 / 3.0 | {norms:.3g} (2–4) | {products:.3g} (0.5–1) | 2 |"]
    assert report.clipping_ratio_table(records, "W2A4", "fpq", "lsq") == "_no paired clipping records yet_"


def test_context_pairs_give_paired_intervals_without_a_verdict(synthetic):
    sam = [qat(seed, "sam", "W2A4", 0.8, 90.0 - seed) for seed in SEEDS]
    records = report.grid_records(synthetic) + sam
    lines = report.context_table(records).splitlines()[2:]
    assert len(lines) == sum(len(c.metrics) for c in report.CONTEXT_COMPARISONS)
    rows = {" ".join(line.strip("| ").split(" | ")[:3]): line for line in lines}
    # the mse PTQ pair, from the raw records: per-seed means over the draws, then a t-interval
    by_seed = {}
    for r in records:
        if r["kind"] == "ptq" and r["observer"] == "mse" and r["target_bits"] in (None, 3):
            by_seed.setdefault((r["seed"], r["source"]), []).append(r["ptq"]["accuracy_by_bits"]["3"])
    d = np.array([100 * (np.mean(by_seed[s, "dnq"]) - np.mean(by_seed[s, "fp"])) for s in SEEDS])
    low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    row = rows["DNQ t3 − FP, PTQ mse W3A3 test accuracy"]
    assert f"{d.mean():+.2f} [{low:+.2f}, {high:+.2f}] pt" in row and row.endswith("| 5 |")
    assert ", ".join(f"{v:+.2f}" for v in d) in row
    # a trace pair: the per-seed log ratios, with no unit
    lsq = {r["seed"]: r["flatness"]["value"] for r in records if r["method"] == "lsq" and r["bits"] == "W2A4"}
    d = np.array([math.log((90.0 - s) / lsq[s]) for s in SEEDS])
    low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
    assert f"| {d.mean():+.2f} [{low:+.2f}, {high:+.2f}] | 5 |" in rows["SAM − LSQ W2A4 log trace ratio"]
    assert "no paired runs yet" in rows["FPQ − LSQ W4A4 log trace ratio"]  # no W4A4 in the synthetic grid
    assert "reproduced" not in report.context_table(records)


def test_the_paper_s_number_is_placed_against_our_interval(synthetic):
    outcomes = report.evaluate_claims(report.grid_records(synthetic))
    lines = report.paper_effect_text(outcomes).splitlines()[2:]
    with_numbers = [o for o in outcomes if o.claim.paper_effect is not None]
    assert len(lines) == len(with_numbers) > 0
    for o, line in zip(with_numbers, lines, strict=True):
        d = 100 * (np.array(o.method_values) - np.array(o.baseline_values))
        low, high = scipy_stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy_stats.sem(d))
        assert f"[{low:+.2f}, {high:+.2f}] pt" in line
        effect = o.claim.paper_effect
        expected = "inside" if low <= effect <= high else ("above" if effect > high else "below")
        assert f"lies {expected}" in line, line
    # the synthetic CR has no effect, so the paper's +3.79 lies above its interval
    assert "excludes" in next(line for line in lines if line.startswith("- 2b"))
