"""The markdown of the report: tables, the sections and the whole document (:func:`write_report`).

Every number in it is computed from the records (:mod:`.statistics`, :mod:`.claims`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from jaxquant.study.stats import paired_t_interval

from .claims import CLAIMS, bits_label, effect_cell, evaluate_claim, sensitivity_claims, verdict_rows
from .plots import plot_accuracy_vs_bits, plot_ptq, plot_trace_vs_accuracy, plot_trajectories
from .statistics import (
    ACCURACY_MIN_EFFECT,
    OK,
    TRACE_RELATIVE_MIN_EFFECT,
    format_cell,
    interval_text,
    metric_scale,
    paired_values,
    values_by_seed,
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_counts(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


def not_finished_rows(records) -> list[list[str]]:
    """One row per distinct reason a run did not finish, with the runs it concerns."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for record in records:
        if record["status"] != OK:
            reasons.setdefault((record["status"], record.get("message", "")), []).append(record["run_id"])
    return [
        [status, message, str(len(ids)), ", ".join(ids[:4]) + (" …" if len(ids) > 4 else "")]
        for (status, message), ids in reasons.items()
    ]


def cell(records, metric: str, group: str, method: str, bits: str) -> str:
    """The table cell of ``metric`` over seeds: accuracies in %, traces raw."""
    values = list(values_by_seed(records, metric, group, method, bits).values())
    return format_cell(values, *metric_scale(metric)[:2])


def group_table(records, metric: str, group: str, methods, bit_settings) -> list[list[str]]:
    return [[method, *(cell(records, metric, group, method, b) for b in bit_settings)] for method in methods]


def filled_rows(records, metric: str, methods, bit_settings) -> list[list[str]]:
    """The rows of the QAT table of ``metric`` that have at least one value."""
    return [
        row
        for row in group_table(records, metric, "qat", methods, bit_settings)
        if any(value != "–" for value in row[1:])
    ]


def ptq_rows(records, sources, ptq_bits) -> list[list[str]]:
    return [
        [
            source,
            cell(records, "accuracy", "fp", source, "FP"),
            *(cell(records, "ptq_accuracy", "ptq", source, str(b)) for b in ptq_bits),
            cell(records, "trace", "fp", source, "FP"),
        ]
        for source in sources
    ]


def analysis_gaps(records, key: str) -> list[str]:
    """The distinct reasons why finished runs lack analysis ``key`` (``trace``, ``trajectory``)."""
    messages = []
    for record in records:
        analysis = record.get(key) if record.get("status") == OK else None
        if analysis and analysis.get("status") != OK and analysis.get("message") not in messages:
            messages.append(analysis.get("message"))
    return messages


def figure(md_dir: str, path: str | None, alt: str, missing: str, gaps: Sequence[str] = ()) -> str:
    if path is None:
        return f"_Not plotted: {missing}" + "".join(f"; {gap}" for gap in gaps) + "._"
    return f"![{alt}]({os.path.relpath(path, md_dir)})"


def epochs_text(epochs: float) -> str:
    return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")


def settings_rows(settings: dict[str, Any]) -> list[list[str]]:
    def length(epochs_key, steps_key):
        steps = settings[steps_key]
        return f"{steps} steps" if steps > 0 else epochs_text(settings[epochs_key])

    trace = settings["trace"]
    rows = [
        ["dataset", settings["dataset"]],
        ["model", f"{settings['model']} widths {tuple(settings['widths'])}"],
        ["batch size", str(settings["batch_size"])],
        ["augmentation (every run)", f"random crop ±{settings['crop_padding']} px, flip {settings['flip']}"],
        ["FP and DNQ training", f"{length('fp_epochs', 'fp_steps')}, lr {settings['fp_learning_rate']}"],
        ["QAT (every method)", f"{length('qat_epochs', 'qat_steps')}, lr {settings['qat_learning_rate']}"],
        ["seeds", str(settings["seeds"])],
        ["QAT bit settings", ", ".join(bits_label(w, a) for w, a in settings["bit_settings"])],
        ["PTQ bits", ", ".join(str(b) for b in settings["ptq_bits"])],
        [
            "Hessian trace",
            f"{trace['num_probes']} Rademacher probes on {trace['batch_size']} fixed training "
            f"images (probe seed {trace['seed']})",
        ],
        [
            "trace trajectory",
            f"every {trace['every_steps']} steps, {trace['trajectory_probes']} probes, for "
            + ", ".join(settings["trajectory_methods"]),
        ],
    ]
    if settings.get("sensitivity_variants"):
        variants = "; ".join(
            f"{label} (lr {lr}, {factor}× the QAT length)"
            for label, lr, factor in settings["sensitivity_variants"]
        )
        bits = ", ".join(bits_label(w, a) for w, a in settings["sensitivity_bits"])
        methods = ", ".join(settings["sensitivity_methods"])
        rows.append(["sensitivity variants", f"{variants}; for {methods} at {bits}"])
    return rows


def method_config_rows(records, methods) -> list[list[str]]:
    """The method block of each method's first finished run: what was run, field by field."""
    rows = []
    for method in methods:
        for record in records:
            if record.get("method") == method and record.get("status") == OK and "method_config" in record:
                fields = ", ".join(
                    f"{k}={v}" for k, v in sorted(record["method_config"].items()) if k != "name"
                )
                rows.append([method, fields or "(no fields)"])
                break
    return rows


def start_lines(records, methods, bit_settings) -> list[str]:
    """Tables of the QAT starting points (the calibrated FP network before the first step)
    and of the final EMA teachers, where the records have them."""
    lines = []
    tables = (
        ("start_accuracy", "Test accuracy (%) of the starting point of QAT: the FP checkpoint with "
         "its quantizers calibrated, before the first step."),
        ("teacher_accuracy", "Test accuracy (%) of the EMA teacher at the end of QAT (methods with an "
         "EMA teacher only)."),
    )  # fmt: skip
    for metric, caption in tables:
        rows = filled_rows(records, metric, methods, bit_settings)
        if rows:
            lines += [caption, "", markdown_table(["method", *bit_settings], rows), ""]
    return lines


def bn_lines(records, methods, bit_settings) -> list[str]:
    """The section on BatchNorm re-estimation: QAT accuracy with re-estimated statistics, and
    the accuracy claims evaluated on it; empty when no record has it."""
    rows = filled_rows(records, "bn_accuracy", methods, bit_settings)
    if not rows:
        return []
    claims = [c for c in CLAIMS if c.group == "qat" and c.metric == "accuracy"]
    effects = []
    for claim in claims:
        running = evaluate_claim(records, claim)
        reestimated = evaluate_claim(records, dataclasses.replace(claim, metric="bn_accuracy"))
        effects.append([claim.text, effect_cell(running), effect_cell(reestimated)])
    return [
        "## BatchNorm re-estimation after QAT",
        "",
        "The QAT accuracies above use the BatchNorm running statistics as training left them: an "
        "exponential average over the last augmented batches. Here each final checkpoint is "
        "evaluated again after its statistics are re-estimated on clean training images "
        "(`jaxquant.train.batchnorm.reestimate_batch_stats`; Nagel et al. 2022), the same for every "
        "method. Test accuracy (%), mean ± std over seeds:",
        "",
        markdown_table(["method", *bit_settings], rows),
        "",
        "The accuracy claims with the running statistics (as in the verdict table) and with "
        "re-estimated statistics (effect [95% CI] verdict):",
        "",
        markdown_table(["claim", "running statistics", "re-estimated statistics"], effects),
        "",
    ]


def budgets(settings: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, record group)`` of the main QAT budget and of each sensitivity variant."""
    steps = settings["qat_steps"]
    length = f"{steps} steps" if steps > 0 else epochs_text(settings["qat_epochs"])
    main = (f"main grid: lr {settings['qat_learning_rate']}, {length}", "qat")
    variants = [(label, f"sensitivity:{label}") for label, _, _ in settings.get("sensitivity_variants") or ()]
    return [main, *variants]


def sensitivity_lines(records, settings: dict[str, Any]) -> list[str]:
    """The section on claims 1–3 under the other QAT budgets; empty without variants."""
    claims = sensitivity_claims(settings)
    if not settings.get("sensitivity_variants") or not claims:
        return []
    methods = list(settings["sensitivity_methods"])
    bit_settings = [bits_label(w, a) for w, a in settings["sensitivity_bits"]]
    lines = [
        "## Sensitivity: the QAT claims under other budgets",
        "",
        "The same claims with every method and its baseline re-run alike under each budget below "
        "(same seeds, same FP checkpoints, [design] fields at their defaults), so that no method "
        "is tuned more than LSQ. A verdict that changes with the budget is fragile.",
        "",
    ]
    for bits in bit_settings:
        rows = [
            [label, *(cell(records, "accuracy", group, method, bits) for method in methods)]
            for label, group in budgets(settings)
        ]
        lines += [f"Test accuracy (%) at {bits}, mean ± std over seeds:", ""]
        lines += [markdown_table(["QAT budget", *methods], rows), ""]
    rows = []
    for label, group in budgets(settings):
        results = [evaluate_claim(records, dataclasses.replace(c, group=group)) for c in claims]
        rows.append([label, *(effect_cell(result) for result in results)])
    lines += ["Effect of each claim (method − baseline, paired over seeds) and its verdict:", ""]
    lines += [markdown_table(["QAT budget", *(c.text for c in claims)], rows), ""]
    return lines


def diagnostic_lines(records, settings: dict[str, Any]) -> list[str]:
    """The section on the diagnostic runs: each against the main grid's LSQ run of the same
    seed and bits (paired effect, no verdict); empty without diagnostics."""
    diagnostics = settings.get("diagnostics") or ()
    if not diagnostics:
        return []
    rows = []
    for label, method, fields in diagnostics:
        for w_bits, a_bits in settings["sensitivity_bits"]:
            bits = bits_label(w_bits, a_bits)
            ours = values_by_seed(records, "accuracy", f"diagnostic:{label}", method, bits)
            main = values_by_seed(records, "accuracy", "qat", method, bits)
            lsq = values_by_seed(records, "accuracy", "qat", "lsq", bits)
            seeds, a, b = paired_values(ours, lsq)
            effect = "–"
            if seeds:
                effect = f"{interval_text(paired_t_interval(a, b), 100.0, '.2f', ' pts')} (n={len(seeds)})"
            fields_text = ", ".join(f"{key}={value}" for key, value in fields)
            teacher = cell(records, "teacher_accuracy", f"diagnostic:{label}", method, bits)
            rows.append(
                [
                    label,
                    f"{method} with {fields_text}",
                    bits,
                    format_cell(list(ours.values()), 100.0, ".2f"),
                    teacher,
                    format_cell(list(main.values()), 100.0, ".2f"),
                    format_cell(list(lsq.values()), 100.0, ".2f"),
                    effect,
                ]
            )
    header = ["diagnostic", "run", "bits", "test accuracy (%)", "EMA teacher (%)", "method, defaults",
              "lsq", "effect vs lsq [95% CI]"]  # fmt: skip
    return [
        "## Diagnostics: [design] fields of one method (not used for any verdict)",
        "",
        "Extra runs of a single method with one [design] field changed, from the same FP "
        "checkpoints and with the main grid's QAT budget. They explain a result; they are not a "
        "fair comparison, because the baseline gets no such extra runs, so no verdict above uses them.",
        "",
        markdown_table(header, rows),
        "",
    ]


def write_report(results: dict[str, Any], md_path: str, figure_dir: str, source: str) -> str:
    """Write the markdown report and its plots; return the markdown text."""
    records = results["runs"]
    settings = results["settings"]
    study = results["study"]
    methods = list(settings["qat_methods"])
    bit_settings = [bits_label(w, a) for w, a in settings["bit_settings"]]
    ptq_bits = list(settings["ptq_bits"])
    md_dir = os.path.dirname(os.path.abspath(md_path))
    plots = {
        "accuracy": plot_accuracy_vs_bits(
            records, methods, bit_settings, os.path.join(figure_dir, f"{study}_accuracy_vs_bits.png")
        ),
        "scatter": plot_trace_vs_accuracy(
            records, methods, bit_settings, os.path.join(figure_dir, f"{study}_trace_vs_accuracy.png")
        ),
        "trajectory": plot_trajectories(
            records,
            list(settings["trajectory_methods"]),
            bit_settings,
            os.path.join(figure_dir, f"{study}_trace_trajectories.png"),
        ),
        "ptq": plot_ptq(records, ["fp", "dnq"], ptq_bits, os.path.join(figure_dir, f"{study}_ptq.png")),
    }
    claims = [evaluate_claim(records, claim) for claim in CLAIMS]
    counts = run_counts(records)
    wall = sum(r.get("wall_time_s") or 0.0 for r in records if r.get("status") == OK)
    lines = [
        f"# Reproduction study: {study}",
        "",
        f"Generated by `{results['command']}` from `{source}`; do not edit by hand "
        "(regenerate with `--report-only`). Every number below is computed from that file.",
        "",
        "Runs: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + f"; training wall time of the finished runs {wall / 3600:.2f} h.",
        "",
        "## Verdicts (methods.md §6)",
        "",
        "Effect = mean over seeds of the paired difference method − baseline (same seed, same FP "
        "checkpoint), with its paired Student-t 95% interval in brackets. Accuracy in % points, "
        "trace in raw units. **reproduced**: the interval lies entirely on the claimed side of 0; "
        f"**not reproduced**: it excludes every effect of at least {100 * ACCURACY_MIN_EFFECT:.1f} points "
        f"(trace: {100 * TRACE_RELATIVE_MIN_EFFECT:.0f}% of the baseline mean) in the claimed direction; "
        "**inconclusive**: otherwise, and always with fewer than 2 seeds.",
        "",
        markdown_table(
            ["#", "claim", "paper reports", "method", "baseline", "effect [95% CI]", "seeds", "verdict"],
            verdict_rows(claims, bit_settings),
        ),
        "",
        "## QAT test accuracy (%), mean ± std over seeds",
        "",
        f"FP starting point (plain FP training): {cell(records, 'accuracy', 'fp', 'fp', 'FP')}.",
        "",
        markdown_table(
            ["method", *bit_settings],
            group_table(records, "accuracy", "qat", methods, bit_settings),
        ),
        "",
        figure(md_dir, plots["accuracy"], "accuracy vs bits", "no finished QAT runs"),
        "",
        *start_lines(records, methods, bit_settings),
        *bn_lines(records, methods, bit_settings),
        "## Hessian trace of the final QAT checkpoints, mean ± std over seeds",
        "",
        markdown_table(
            ["method", *bit_settings], group_table(records, "trace", "qat", methods, bit_settings)
        ),
        "",
        figure(
            md_dir,
            plots["scatter"],
            "trace vs accuracy",
            "no QAT run with a Hessian trace",
            analysis_gaps(records, "trace"),
        ),
        "",
        "## Hessian trace during QAT",
        "",
        figure(
            md_dir,
            plots["trajectory"],
            "trace trajectories",
            "no QAT run with a trace trajectory",
            analysis_gaps(records, "trajectory"),
        ),
        "",
        "## DNQ vs plain FP training, then the same PTQ: test accuracy (%)",
        "",
        markdown_table(
            ["FP training", "before PTQ", *(f"W{b}A{b}" for b in ptq_bits), "Hessian trace (FP)"],
            ptq_rows(records, ["fp", "dnq"], ptq_bits),
        ),
        "",
        figure(md_dir, plots["ptq"], "PTQ accuracy vs bits", "no finished PTQ runs"),
        "",
        *sensitivity_lines(records, settings),
        *diagnostic_lines(records, settings),
        "## What was run",
        "",
        "Every method gets the same budget: one run per seed and bit setting, the same epochs, "
        "learning rate and FP checkpoint, and its [design] fields at their defaults (below); no "
        "method was tuned. (The diagnostic runs above are extra runs of one method and enter no verdict.)",
        "",
        markdown_table(["setting", "value"], settings_rows(settings)),
        "",
        markdown_table(["method", "method fields"], method_config_rows(records, ["fp", "dnq", *methods])),
    ]
    missing = not_finished_rows(records)
    if missing:
        lines += [
            "",
            "## Runs that did not finish",
            "",
            markdown_table(["status", "reason", "runs", "e.g."], missing),
        ]
    text = "\n".join(lines) + "\n"
    os.makedirs(md_dir, exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)
    return text
