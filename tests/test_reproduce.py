"""The reproduction study: statistics, adapters, the generated report, and a resumed study.

The end-to-end test runs ``benchmarks/reproduce.py --quick`` on digits with a handful of
steps; methods and modes this checkout lacks must show up as ``unavailable``. The Hessian
trace goes through a stand-in ``jaxquant.curvature`` when the real one is absent, so the
trace plumbing (probe loss, checkpoint params, report) is exercised either way.
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
import zlib

import jax
import ml_collections
import numpy as np
import pytest
from conftest import tiny_config
from scipy import stats as scipy_stats

from jaxquant.study import adapters, runs, stats
from jaxquant.train.checkpoint import load_raw
from jaxquant.train.setup import build_run

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

import reproduce  # noqa: E402
import reproduce_report  # noqa: E402

# ---------------------------------------------------------------- statistics


def test_mean_std_is_the_sample_std():
    values = [0.81, 0.84, 0.79, 0.9]
    mean, std = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert stats.mean_std([0.5]) == (0.5, None)


def test_paired_t_interval_matches_scipy_ttest_rel():
    a, b = [0.86, 0.88, 0.85, 0.9], [0.84, 0.85, 0.85, 0.86]
    interval = stats.paired_t_interval(a, b)
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert interval.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert interval.n == 4
    assert stats.paired_t_interval([0.9], [0.8]).low is None


def test_verdict_rule():
    def interval(low, high):
        return stats.Interval((low + high) / 2, low, high, 3)

    assert stats.verdict(interval(0.001, 0.03), 1, 0.005) == stats.REPRODUCED
    assert stats.verdict(interval(-0.03, -0.001), -1, 0.005) == stats.REPRODUCED
    assert stats.verdict(interval(-0.02, 0.004), 1, 0.005) == stats.NOT_REPRODUCED
    assert stats.verdict(interval(-0.004, 0.02), -1, 0.005) == stats.NOT_REPRODUCED
    assert stats.verdict(interval(-0.01, 0.02), 1, 0.005) == stats.INCONCLUSIVE
    assert stats.verdict(stats.Interval(0.5, None, None, 1), 1, 0.005) == stats.INCONCLUSIVE
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(interval(0, 1), 0, 0.005)


# ---------------------------------------------------------------- run identity


def test_config_hash_ignores_name_and_init_from_but_not_settings():
    config = reproduce.training_config(reproduce.study_settings("digits", True), 0, "lsq", True, 2, 2)
    base = runs.config_hash(config, "parent")
    renamed = ml_collections.ConfigDict(config.to_dict())
    renamed.name, renamed.init_from = "other", "/elsewhere"
    assert runs.config_hash(renamed, "parent") == base
    written_elsewhere = ml_collections.ConfigDict(config.to_dict())
    written_elsewhere.train.tensorboard = not written_elsewhere.train.get("tensorboard", True)
    written_elsewhere.export = {"pack": True}
    assert runs.config_hash(written_elsewhere, "parent") == base
    changed = ml_collections.ConfigDict(config.to_dict())
    changed.optim.learning_rate = 0.02
    assert runs.config_hash(changed, "parent") != base
    assert runs.config_hash(config, "other-parent") != base


def test_grid_has_every_method_at_every_bit_setting_with_the_same_budget():
    settings = reproduce.study_settings("fashion_mnist", quick=False)
    specs = reproduce.study_grid(settings)
    qat = [s for s in specs if s.labels["group"] == "qat"]
    assert len(qat) == 3 * len(reproduce.QAT_METHODS) * len(reproduce.BIT_SETTINGS)
    budgets = {
        (s.config.train.num_epochs, s.config.train.num_steps, s.config.optim.learning_rate) for s in qat
    }
    assert len(budgets) == 1
    assert {s.parent for s in qat} == {f"seed{k}/fp" for k in range(3)}
    trajectory = {s.labels["method"] for s in qat if s.trajectory}
    assert trajectory == set(reproduce.TRAJECTORY_METHODS)
    dnq = [s for s in specs if s.labels["method"] == "dnq" and s.labels["group"] == "fp"]
    fp = [s for s in specs if s.run_id.endswith("/fp")]
    assert [d.config.train.num_epochs for d in dnq] == [f.config.train.num_epochs for f in fp]
    assert sum(s.kind == "ptq" for s in specs) == 6
    assert all(s.trace for s in specs if s.kind == "train")


def test_sensitivity_variants_change_only_the_qat_budget_of_methods_and_baseline_alike():
    settings = reproduce.study_settings("fashion_mnist", quick=False)
    specs = reproduce.study_grid(settings)
    main = {s.run_id: s for s in specs if s.labels["group"] == "qat"}
    sensitivity = [s for s in specs if s.labels["group"].startswith("sensitivity:")]
    diagnostic = [s for s in specs if s.labels["group"].startswith("diagnostic:")]
    assert specs[-len(sensitivity) - len(diagnostic) :] == sorted(  # after the whole main grid
        sensitivity + diagnostic, key=lambda s: (s.labels["seed"], s.labels["group"].startswith("diag"))
    )
    groups = {}
    for spec in sensitivity:
        groups.setdefault(spec.labels["group"], set()).add((spec.labels["seed"], spec.labels["method"]))
        twin = main[f"seed{spec.labels['seed']}/qat_{spec.labels['method']}_w2a2"]
        assert spec.parent == twin.parent and spec.trace and not spec.trajectory
        ours, theirs = spec.config.to_dict(), twin.config.to_dict()
        budget = [(c["optim"].pop("learning_rate"), c["train"].pop("num_epochs")) for c in (ours, theirs)]
        assert budget[0] != budget[1] and ours == theirs  # only the QAT budget differs
    expected = {(seed, m) for seed in range(3) for m in reproduce.SENSITIVITY_METHODS}
    assert groups == {f"sensitivity:{label}": expected for label, _, _ in reproduce.SENSITIVITY_VARIANTS}
    assert not reproduce.sensitivity_runs(reproduce.study_settings("fashion_mnist", quick=True), 0, "x")


def test_diagnostics_change_only_their_method_s_design_fields():
    settings = reproduce.study_settings("fashion_mnist", quick=False)
    specs = reproduce.study_grid(settings)
    main = {s.run_id: s for s in specs if s.labels["group"] == "qat"}
    diagnostic = [s for s in specs if s.labels["group"].startswith("diagnostic:")]
    assert len(diagnostic) == 3 * len(reproduce.DIAGNOSTICS)
    for spec in diagnostic:
        label = spec.labels["group"].removeprefix("diagnostic:")
        (fields,) = [dict(f) for name, _, f in reproduce.DIAGNOSTICS if name == label]
        twin = main[f"seed{spec.labels['seed']}/qat_{spec.labels['method']}_w2a2"]
        ours, theirs = spec.config.to_dict(), twin.config.to_dict()
        assert {k: ours["method"][k] for k in fields} == fields
        changed = {k: ours["method"].pop(k) != theirs["method"].pop(k) for k in fields}
        assert changed == dict.fromkeys(fields, True)
        assert ours == theirs and spec.parent == twin.parent


def test_cost_projection_counts_every_run_of_the_grid():
    settings = reproduce.study_settings("fashion_mnist", quick=False)
    base = reproduce.project_cost(settings, 10.0, 20.0, 5.0, 234)
    assert base["runs"] == 3 * (1 + 24 + 1 + 2) + 3 * 3 * 4 + 3 * 2
    assert base["per_seed_s"]["diagnostics"] == pytest.approx(2 * (2.0 * 20.0 + 5.0))  # two CR runs
    assert base["per_seed_s"]["final_traces"] == 26 * 5.0
    # 3 variants (1 + 1 + 2 QAT lengths) of lsq, fpq, cr, mec (1 + 1.5 + 2 + 1.5) and 12 traces
    assert base["per_seed_s"]["sensitivity"] == pytest.approx(4 * 6.0 * 20.0 + 12 * 5.0)
    slower_qat = reproduce.project_cost(settings, 10.0, 40.0, 5.0, 234)
    assert slower_qat["per_seed_s"]["qat"] == 2 * base["per_seed_s"]["qat"]
    assert base["total_s"] == pytest.approx(3 * sum(base["per_seed_s"].values()))


def test_unknown_dataset_and_bad_seeds_are_one_line_errors():
    with pytest.raises(ValueError, match="--dataset='cifar10' is not allowed"):
        reproduce.study_settings("cifar10", quick=False)
    with pytest.raises(ValueError, match="--seeds=0"):
        reproduce.study_settings("digits", quick=True, seeds=0)
    with pytest.raises(ValueError, match="--methods='lsq,fqp' is not allowed: choose from lsq, pact"):
        reproduce.study_settings("digits", quick=True, methods=("lsq", "fqp"))
    kept = reproduce.study_settings("digits", quick=True, methods=("cr", "lsq"))
    assert kept.qat_methods == ("lsq", "cr") and kept.trajectory_methods == ("lsq", "cr")


# ---------------------------------------------------------------- adapters


def test_read_trace_trajectory_sorts_steps_and_keeps_the_last_record(tmp_path):
    lines = [
        {"kind": "train", "step": 10, "loss": 1.0},
        {"kind": "curvature", "step": 20, "trace": 5.0},
        {"kind": "curvature", "step": 10, "trace": 9.0},
        {"kind": "curvature", "step": 20, "trace": 4.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = adapters.read_trace_trajectory(str(tmp_path))
    assert result == {"status": "ok", "steps": [10, 20], "values": [9.0, 4.0]}
    empty = adapters.read_trace_trajectory(str(tmp_path / "missing"))
    assert empty["status"] == "unavailable"


def test_loss_term_ratios_are_the_mean_over_steps_each_counted_once(tmp_path):
    lines = [
        {"kind": "train", "step": 10, "grad_ratio_csd": 2.0, "loss": 1.0},
        {"kind": "train", "step": 20, "grad_ratio_csd": 6.0},
        {"kind": "eval", "step": 20, "grad_ratio_csd": 100.0},
        {"kind": "train", "step": 20, "grad_ratio_csd": 4.0},  # logged again after a resume
        {"kind": "train", "step": 30, "loss": 0.5},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert adapters.read_loss_term_ratios(str(tmp_path)) == {"status": "ok", "mean_grad_ratio": {"csd": 3.0}}


def test_ptq_adapter_config_and_report(tmp_path):
    source = reproduce.base_config(reproduce.study_settings("digits", True), 0)
    config = adapters.ptq_config(source, "/runs/fp", [8, 4, 3])
    assert (config.mode, config.init_from, config.ptq.bits, config.method.name) == (
        "ptq",
        "/runs/fp",
        "8,4,3",
        "fp",
    )
    assert config.data.name == "digits"
    assert adapters.read_ptq_report(str(tmp_path))["status"] == "unavailable"
    rows = [
        {"bits": "w8a8", "w_bits": 8, "a_bits": 8, "ptq_accuracy": 0.89},
        {"bits": "w4a4", "w_bits": 4, "a_bits": 4, "ptq_accuracy": 0.7},
    ]
    (tmp_path / adapters.PTQ_REPORT).write_text(json.dumps({"fp_accuracy": 0.9, "results": rows}))
    assert adapters.read_ptq_report(str(tmp_path)) == {
        "status": "ok",
        "accuracy_by_bits": {"8": 0.89, "4": 0.7},
        "fp_accuracy": 0.9,
    }
    mixed = [{"bits": "w4a8", "w_bits": 4, "a_bits": 8, "ptq_accuracy": 0.8}]
    (tmp_path / adapters.PTQ_REPORT).write_text(json.dumps({"fp_accuracy": 0.9, "results": mixed}))
    assert adapters.read_ptq_report(str(tmp_path))["status"] == "unavailable"


def test_curvature_probe_is_switched_on_in_the_curvature_block():
    config = ml_collections.ConfigDict({"curvature": {"every_steps": 0, "num_probes": 1}})
    adapters.enable_trace_trajectory(config, 10, 4)
    assert (config.curvature.every_steps, config.curvature.num_probes) == (10, 4)


# ---------------------------------------------------------------- report from synthetic records


def synthetic_results():
    """Records of a 3-seed study with chosen effects (never written to docs/): FPQ +2 points
    over LSQ with a lower trace, CR −2 points, MEC +/−1 point (mixed), DNQ PTQ +3 points."""

    def jitter(seed, name):
        """A fixed pseudo-random offset in [−0.002, 0.002] per seed and run."""
        return (zlib.crc32(f"{seed}/{name}".encode()) % 5 - 2) / 1000

    settings = reproduce.study_settings("digits", quick=False)
    records = []
    offsets = {"lsq": 0.0, "fpq": 0.02, "cr": -0.02, "mec": 0.0}
    for seed in range(3):
        noise = [0.001, -0.002, 0.0015][seed]
        for method, accuracy, trace in (("fp", 0.9, 50.0), ("dnq", 0.89, 30.0 + 1000 * jitter(seed, "dnq"))):
            records.append(
                dict(run_id=f"seed{seed}/{method}", seed=seed, group="fp", method=method, bits="FP",
                     status="ok", accuracy=accuracy + noise, trace={"status": "ok", "value": trace + seed})
            )  # fmt: skip
        for w, a in settings.bit_settings:
            bits = f"W{w}A{a}"
            for method, offset in offsets.items():
                mec_swing = [0.01, -0.01, 0.0][seed] if method == "mec" else 0.0
                trace = 100.0 - (40.0 if method == "fpq" else 0.0) + seed + 1000 * jitter(seed, method + bits)
                records.append(
                    dict(
                        run_id=f"seed{seed}/qat_{method}_{bits.lower()}",
                        seed=seed,
                        group="qat",
                        method=method,
                        bits=bits,
                        w_bits=w,
                        a_bits=a,
                        status="ok",
                        accuracy=0.8 + offset + noise + mec_swing * (1 + seed) + jitter(seed, method + bits),
                        trace={"status": "ok", "value": trace},
                        trajectory={"status": "ok", "steps": [0, 10], "values": [trace + 5, trace]},
                        bn_reestimated={"status": "ok", "accuracy": 0.85 + 0.01 * (seed + (method == "cr"))},
                    )
                )
        for source, gain in (("fp", 0.0), ("dnq", 0.03)):
            by_bits = {"8": 0.9, "6": 0.88, "4": 0.7 + gain + noise, "3": 0.5 + gain + jitter(seed, source)}
            records.append(
                dict(
                    run_id=f"seed{seed}/ptq_{source}",
                    seed=seed,
                    group="ptq",
                    method=source,
                    bits="PTQ",
                    status="ok",
                    ptq={"status": "ok", "accuracy_by_bits": by_bits},
                )
            )
        for label, _, _ in settings.sensitivity_variants:
            flip = -0.03 if label == "lr 0.03" else 0.0  # FPQ loses at the large learning rate
            for method, offset in offsets.items():
                records.append(
                    dict(
                        run_id=f"seed{seed}/sens_{label}_{method}",
                        seed=seed,
                        group=f"sensitivity:{label}",
                        method=method,
                        bits="W2A2",
                        status="ok",
                        accuracy=0.7 + offset + flip * (method == "fpq") + jitter(seed, label + method),
                        trace={"status": "ok", "value": 80.0 + jitter(seed, method)},
                    )
                )
        records.append(
            dict(
                run_id=f"seed{seed}/diag_cr",
                seed=seed,
                group="diagnostic:cr, ema_decay 0.9",
                method="cr",
                bits="W2A2",
                status="ok",
                accuracy=0.81 + jitter(seed, "diag"),
                start={"status": "ok", "start_accuracy": 0.3, "teacher_accuracy": 0.75 + seed / 100},
            )
        )
    records.append(
        dict(
            run_id="seed0/qat_pact_w2a2",
            seed=0,
            group="qat",
            method="pact",
            bits="W2A2",
            status="unavailable",
            message="skipped: method pact not available",
        )
    )
    return {
        "study": "synthetic",
        "settings": json.loads(json.dumps(reproduce.dataclasses.asdict(settings))),
        "command": "synthetic",
        "runs": records,
    }


def tables(markdown: str, header_start: str) -> list[dict[str, list[list[str]]]]:
    """Each markdown table whose header starts with ``header_start``: its rows by first cell."""
    lines = markdown.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith(header_start):
            rows: dict[str, list[list[str]]] = {}
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = [c.strip() for c in row.strip("|").split("|")]
                rows.setdefault(cells[0], []).append(cells)
            found.append(rows)
    return found


def table_rows(markdown: str, header_start: str) -> dict[str, list[list[str]]]:
    return tables(markdown, header_start)[0]


def test_report_verdicts_and_tables_follow_from_the_records(tmp_path):
    results = synthetic_results()
    md = reproduce_report.write_report(results, str(tmp_path / "results.md"), str(tmp_path / "fig"), "x.json")
    verdicts = {row[1]: row for rows in table_rows(md, "| # |").values() for row in rows}
    assert verdicts["FPQ beats LSQ at W2A2"][-1] == "reproduced"
    assert verdicts["FPQ's Hessian trace is lower than LSQ's (W2A4)"][-1] == "reproduced"
    assert verdicts["CR beats its baseline QAT (LSQ) at W2A2"][-1] == "not reproduced"
    assert verdicts["MEC-Quant beats LSQ at W2A2"][-1] == "inconclusive"
    assert verdicts["DNQ pre-training gives better PTQ accuracy at W3A3"][-1] == "reproduced"
    assert verdicts["DNQ's FP network has a smaller Hessian trace"][-1] == "reproduced"
    records = results["runs"]

    def acc(method, bits):
        return {
            r["seed"]: r["accuracy"]
            for r in records
            if r.get("method") == method
            and r.get("bits") == bits
            and r["group"] == "qat"
            and r["status"] == "ok"
        }

    fpq, lsq = acc("fpq", "W2A2"), acc("lsq", "W2A2")
    diffs = 100 * (np.array([fpq[s] for s in range(3)]) - np.array([lsq[s] for s in range(3)]))
    ci = scipy_stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert verdicts["FPQ beats LSQ at W2A2"][5] == f"{diffs.mean():+.2f} pts [{ci[0]:+.2f}, {ci[1]:+.2f}]"
    accuracy_rows = table_rows(md, "| method | W4A4")
    values = 100 * np.array(list(acc("cr", "W2A4").values()))
    assert accuracy_rows["cr"][0][2] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=3)"
    assert accuracy_rows["pact"][0][1:] == ["–", "–", "–"]
    ptq = table_rows(md, "| FP training |")
    dnq4 = 100 * np.array(
        [r["ptq"]["accuracy_by_bits"]["4"] for r in records if r.get("run_id", "").endswith("ptq_dnq")]
    )
    assert ptq["dnq"][0][4] == f"{dnq4.mean():.2f} ± {dnq4.std(ddof=1):.2f} (n=3)"
    assert "skipped: method pact not available" in md
    for name in ("accuracy_vs_bits", "trace_vs_accuracy", "trace_trajectories", "ptq"):
        path = tmp_path / "fig" / f"synthetic_{name}.png"
        assert path.stat().st_size > 1000 and f"fig/synthetic_{name}.png" in md


def test_sensitivity_section_gives_each_budget_its_own_paired_verdict(tmp_path):
    results = synthetic_results()
    md = reproduce_report.write_report(results, str(tmp_path / "results.md"), str(tmp_path / "fig"), "x.json")
    effects = table_rows(md, "| QAT budget | FPQ beats LSQ")
    verdicts = {row[1]: row for rows in table_rows(md, "| # |").values() for row in rows}
    main = effects["main grid: lr 0.01, 10 epochs"][0]
    assert main[1] == verdicts["FPQ beats LSQ at W2A2"][5] + " reproduced (n=3)"

    def accuracies(method, group):
        return [r["accuracy"] for r in sorted(results["runs"], key=lambda r: r["seed"])
                if r.get("group") == group and r.get("method") == method]  # fmt: skip

    group = "sensitivity:lr 0.03"
    diffs = 100 * (np.array(accuracies("fpq", group)) - np.array(accuracies("lsq", group)))
    ci = scipy_stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    expected = f"{diffs.mean():+.2f} pts [{ci[0]:+.2f}, {ci[1]:+.2f}] not reproduced (n=3)"
    assert effects["lr 0.03"][0][1] == expected
    assert effects["2x steps"][0][1].endswith("reproduced (n=3)")
    accuracy = table_rows(md, "| QAT budget | lsq |")
    values = 100 * np.array(accuracies("cr", "sensitivity:lr 0.003"))
    assert accuracy["lr 0.003"][0][3] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (n=3)"
    assert "lr 0.003 (lr 0.003, 1× the QAT length)" in md


def test_bn_reestimation_section_evaluates_the_accuracy_claims_on_re_estimated_statistics(tmp_path):
    results = synthetic_results()
    md = reproduce_report.write_report(results, str(tmp_path / "results.md"), str(tmp_path / "fig"), "x.json")
    section = md.split("## BatchNorm re-estimation after QAT")[1]
    accuracy = table_rows(section, "| method | W4A4")
    assert accuracy["lsq"][0][1:] == ["86.00 ± 1.00 (n=3)"] * 3
    assert accuracy["cr"][0][3] == "87.00 ± 1.00 (n=3)"
    effects = table_rows(section, "| claim |")
    verdicts = {row[1]: row for rows in table_rows(md, "| # |").values() for row in rows}
    running, reestimated = effects["CR beats its baseline QAT (LSQ) at W2A2"][0][1:]
    assert running.startswith(verdicts["CR beats its baseline QAT (LSQ) at W2A2"][5] + " not reproduced")
    assert reestimated == "+1.00 pts [+1.00, +1.00] reproduced (n=3)"  # the same +1 point in every seed


def test_diagnostics_are_paired_with_the_main_grid_s_lsq_and_have_no_verdict(tmp_path):
    results = synthetic_results()
    md = reproduce_report.write_report(results, str(tmp_path / "results.md"), str(tmp_path / "fig"), "x.json")
    row = table_rows(md, "| diagnostic |")["cr, ema_decay 0.9"][0]
    runs_by = {(r["group"], r["method"], r["seed"]): r for r in results["runs"] if r.get("bits") == "W2A2"}
    diffs = 100 * np.array(
        [runs_by["diagnostic:cr, ema_decay 0.9", "cr", k]["accuracy"] - runs_by["qat", "lsq", k]["accuracy"]
         for k in range(3)]
    )  # fmt: skip
    ci = scipy_stats.t.interval(0.95, 2, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert row[1] == "cr with ema_decay=0.9" and row[2] == "W2A2"
    assert row[-1] == f"{diffs.mean():+.2f} pts [{ci[0]:+.2f}, {ci[1]:+.2f}] (n=3)"
    assert row[4] == "76.00 ± 1.00 (n=3)"  # the EMA teacher's accuracy
    assert not any(v in row for v in ("reproduced", "not reproduced", "inconclusive"))


# ---------------------------------------------------------------- the study end to end


@pytest.fixture
def curvature_calls(monkeypatch):
    """A stand-in for ``jaxquant.curvature`` (the real one is exercised in
    :func:`test_hessian_trace_adapter_with_the_real_estimator`): its "trace" is ``Σθ²`` of the
    parameters it is given, so the recorded value shows which checkpoint was measured, at no
    compile cost. Returns the list of its calls."""
    calls = []

    def model_objective(model, variables, batches):
        return "eval-mode cross-entropy", variables["params"], batches

    def hutchinson_trace(loss_fn, params, data, key, *, num_probes, log):
        calls.append({"params": params, "batches": data, "num_probes": num_probes})
        return types.SimpleNamespace(trace=squared_norm(params), stderr=0.0, num_probes=num_probes)

    stand_in = types.SimpleNamespace(model_objective=model_objective, hutchinson_trace=hutchinson_trace)
    monkeypatch.setattr(adapters, "curvature_tools", lambda: stand_in)
    return calls


def squared_norm(tree) -> float:
    return sum(float(np.sum(np.square(leaf))) for leaf in jax.tree.leaves(tree))


def test_hessian_trace_adapter_with_the_real_estimator(fp_digits_run):
    config = tiny_config(method__name="fp")
    run = build_run(config)
    _, saved = load_raw(fp_digits_run)
    variables = {"params": saved["params"], **saved["model_state"]}
    batch = runs.probe_batch(run.train_split, 32, seed=0)
    batches = {key: value[None] for key, value in batch.items()}
    result = adapters.hessian_trace(run.ctx.model, variables, batches, num_probes=4, seed=0)
    again = adapters.hessian_trace(run.ctx.model, variables, batches, num_probes=4, seed=0)
    assert result["status"] == "ok" and result["num_probes"] == 4
    assert np.isfinite(result["value"]) and result["stderr"] >= 0
    assert again["value"] == result["value"]


def study_args(tmp_path, *extra):
    return [
        "--dataset", "digits", "--quick", "--fp-steps", "30", "--qat-steps", "8", "--methods", "lsq,cr",
        "--study-dir", str(tmp_path / "runs"), "--results", str(tmp_path / "results.json"),
        "--report", str(tmp_path / "docs" / "results.md"), "--figures", str(tmp_path / "docs" / "figures"),
        *extra,
    ]  # fmt: skip


def file_state(directory) -> dict[str, float]:
    """Modification time of every file under ``directory`` except the study's result files."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name != runs.RESULT_FILE:
                out[os.path.join(root, name)] = os.path.getmtime(os.path.join(root, name))
    return out


def test_quick_study_on_digits_resumes_and_reports(tmp_path, curvature_calls):
    results_path = tmp_path / "results.json"

    # 1. Part of the grid: the FP run only; its Hessian trace fails (exit status 1), the run is kept.
    def broken_estimator(*args, **kwargs):
        raise RuntimeError("probe exploded")

    broken = types.SimpleNamespace(
        model_objective=lambda *args: (None, None, None), hutchinson_trace=broken_estimator
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapters, "curvature_tools", lambda: broken)
        assert reproduce.main(study_args(tmp_path, "--max-runs", "1")) == 1
    first = {r["run_id"]: r for r in json.loads(results_path.read_text())["runs"]}
    assert first["seed0/fp"]["status"] == "ok" and first["seed0/qat_lsq_w2a2"]["status"] == "pending"
    assert first["seed0/fp"]["trace"] == {"status": "failed", "message": "RuntimeError: probe exploded"}
    fp_dir = tmp_path / "runs" / first["seed0/fp"]["workdir"]
    fp_files = file_state(fp_dir)

    # 2. The study is killed after LSQ trained but before its result was recorded.
    original = runs.Study.complete_analyses

    def killed_after_lsq_trained(self, spec, record, workdir):
        if spec.run_id == "seed0/qat_lsq_w2a2":
            raise KeyboardInterrupt
        return original(self, spec, record, workdir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runs.Study, "complete_analyses", killed_after_lsq_trained)
        with pytest.raises(KeyboardInterrupt):
            reproduce.main(study_args(tmp_path))
    after_kill = {r["run_id"]: r for r in json.loads(results_path.read_text())["runs"]}
    assert after_kill.keys() == first.keys() and after_kill["seed0/fp"]["trace"]["status"] == "ok"

    # 3. Started again: FP is read back (its trace now computed), LSQ resumes from its last
    # checkpoint, nothing retrains.
    assert reproduce.main(study_args(tmp_path)) == 0
    assert file_state(fp_dir) == fp_files
    results = json.loads(results_path.read_text())
    by_id = {r["run_id"]: r for r in results["runs"]}
    lsq = by_id["seed0/qat_lsq_w2a2"]
    assert lsq["status"] == "ok" and lsq["steps"] == 8 and lsq["resumed_from_step"] == 8
    assert by_id["seed0/fp"]["accuracy"] == first["seed0/fp"]["accuracy"]
    for record in (by_id["seed0/fp"], lsq):
        assert record["trace"]["status"] == "ok" and np.isfinite(record["trace"]["value"])
    assert "start" not in by_id["seed0/fp"] and 0.0 <= lsq["start"]["start_accuracy"] <= 1.0
    assert lsq["bn_reestimated"]["status"] == "ok" and 0.0 <= lsq["bn_reestimated"]["accuracy"] <= 1.0
    assert "teacher_accuracy" not in lsq["start"]  # LSQ has no teacher
    assert 0.0 <= by_id["seed0/qat_cr_w2a2"]["start"]["teacher_accuracy"] <= 1.0  # an EMA teacher
    assert len(record["config_hash"]) == 10 and record["wall_time_s"] > 0
    _, saved = load_raw(str(tmp_path / "runs" / lsq["workdir"]))
    assert lsq["trace"]["value"] == pytest.approx(squared_norm(saved["params"]))
    assert "step" in json.dumps(jax.tree_util.tree_map(lambda _: 0, saved["params"]))
    assert curvature_calls[-1]["batches"]["image"].shape == (1, 128, 8, 8, 1)

    # 4. A finished study: every run is read back, no file of any run changes.
    all_files = file_state(tmp_path / "runs")
    assert reproduce.main(study_args(tmp_path)) == 0
    assert file_state(tmp_path / "runs") == all_files
    assert json.loads(results_path.read_text())["runs"] == results["runs"]

    # 5. The markdown shows exactly the numbers of the JSON; --report-only regenerates it.
    md_path = tmp_path / "docs" / "results.md"
    md = md_path.read_text()
    fp_acc, lsq_acc = 100 * by_id["seed0/fp"]["accuracy"], 100 * lsq["accuracy"]
    assert f"FP starting point (plain FP training): {fp_acc:.2f} (n=1)." in md
    assert table_rows(md, "| method | W2A2")["lsq"][0][1] == f"{lsq_acc:.2f} (n=1)"
    trace_rows = table_rows(md.split("## Hessian trace of the final QAT checkpoints")[1], "| method | W2A2")
    start_rows = table_rows(md.split("starting point of QAT")[1], "| method | W2A2")
    assert start_rows["lsq"][0][1] == f"{100 * lsq['start']['start_accuracy']:.2f} (n=1)"
    assert trace_rows["lsq"][0][1] == f"{lsq['trace']['value']:.4g} (n=1)"
    counts = {}
    for record in results["runs"]:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    assert "Runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) in md
    assert (tmp_path / "docs" / "figures" / "digits_quick_accuracy_vs_bits.png").exists()
    md_path.unlink()
    assert reproduce.main(study_args(tmp_path, "--report-only")) == 0
    assert md_path.read_text() == md
    assert not re.search(r"\bnan\b", md)
