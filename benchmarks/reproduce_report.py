"""The report of the reproduction study, generated only from the results JSON.

``write_report(results, md_path, figure_dir)`` turns the records written by
``benchmarks/reproduce.py`` into ``docs/results.md`` (tables of mean ± std over seeds, a
verdict per claim of methods.md §6) and PNG plots. Every number in the markdown is computed
here from the records, nothing else.

Statistics: runs of a method and its baseline with the same seed start from the same FP
checkpoint and read the same batches, so each claim's effect is the mean of the per-seed
differences with a paired Student-t 95% interval (:func:`jaxquant.study.stats.paired_t_interval`).
Verdict rule (:func:`jaxquant.study.stats.verdict`): *reproduced* when the whole interval lies
on the claimed side of 0; *not reproduced* when it excludes every effect of at least the
minimal effect size in the claimed direction (0.5 accuracy points; 10% of the baseline's
mean Hessian trace); *inconclusive* otherwise, and always with fewer than 2 seeds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxquant.study.stats import INCONCLUSIVE, mean_std, paired_t_interval, verdict  # noqa: E402

ACCURACY_MIN_EFFECT = 0.005
TRACE_RELATIVE_MIN_EFFECT = 0.10
OK = "ok"


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


def format_cell(values: Sequence[float], scale: float, fmt: str) -> str:
    """``mean ± std (n)`` of ``values × scale``; ``–`` for no values, no std for one."""
    if not values:
        return "–"
    mean, std = mean_std([v * scale for v in values])
    if std is None:
        return f"{mean:{fmt}} (n=1)"
    return f"{mean:{fmt}} ± {std:{fmt}} (n={len(values)})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


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
    seeds = tuple(sorted(set(ours) & set(theirs)))
    if not seeds:
        return ClaimResult(claim, (), (), (), None, None, INCONCLUSIVE)
    a, b = tuple(ours[s] for s in seeds), tuple(theirs[s] for s in seeds)
    interval = paired_t_interval(a, b)
    if claim.metric == "trace":
        min_effect = TRACE_RELATIVE_MIN_EFFECT * abs(mean_std(b)[0])
    else:
        min_effect = ACCURACY_MIN_EFFECT
    return ClaimResult(
        claim, seeds, a, b, interval, min_effect, verdict(interval, claim.direction, min_effect)
    )


def claim_scale(claim: Claim) -> tuple[float, str, str]:
    """(scale, format, unit) for showing a claim's values: accuracy in %, trace raw."""
    return (1.0, ".4g", "") if claim.metric == "trace" else (100.0, ".2f", " pts")


def effect_text(result: ClaimResult) -> str:
    """``mean [low, high]`` of a claim's paired difference, accuracy in points, trace raw."""
    scale, fmt, unit = claim_scale(result.claim)
    interval = result.interval
    text = f"{interval.mean * scale:+{fmt}}{unit}"
    if interval.low is not None:
        text += f" [{interval.low * scale:+{fmt}}, {interval.high * scale:+{fmt}}]"
    return text


def verdict_rows(results: list[ClaimResult], bit_settings: Sequence[str]) -> list[list[str]]:
    rows = []
    for result in results:
        claim = result.claim
        scale, fmt, _ = claim_scale(claim)
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
    return format_cell(values, *((1.0, ".4g") if metric == "trace" else (100.0, ".2f")))


def group_table(records, metric: str, group: str, methods, bit_settings) -> list[list[str]]:
    return [[method, *(cell(records, metric, group, method, b) for b in bit_settings)] for method in methods]


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


def errorbar_series(records, metric: str, group: str, method: str, keys) -> tuple[list, list, list]:
    """``(positions, means, stds)`` in % over the ``keys`` (bit labels) where ``method`` has
    finished runs; a position is the key's index."""
    positions, means, stds = [], [], []
    for i, key in enumerate(keys):
        values = list(values_by_seed(records, metric, group, method, key).values())
        if values:
            mean, std = mean_std([100 * v for v in values])
            positions.append(i)
            means.append(mean)
            stds.append(std or 0.0)
    return positions, means, stds


def bits_label(w_bits: int, a_bits: int) -> str:
    return f"W{w_bits}A{a_bits}"


def plot_accuracy_vs_bits(records, methods, bit_settings, path) -> str | None:
    """QAT test accuracy (mean ± std over seeds) per method against the bit setting."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for method in methods:
        xs, means, stds = errorbar_series(records, "accuracy", "qat", method, bit_settings)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
            drawn = True
    fp = list(values_by_seed(records, "accuracy", "fp", "fp", "FP").values())
    if fp:
        ax.axhline(100 * mean_std(fp)[0], color="k", linestyle="--", linewidth=1, label="FP")
    ax.set_xticks(range(len(bit_settings)), bit_settings)
    return finish(fig, ax, drawn, path, "bit setting", "test accuracy (%)", ncol=2)


def plot_trace_vs_accuracy(records, methods, bit_settings, path) -> str | None:
    """One point per finished QAT run: Hessian trace of the final checkpoint vs test accuracy."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "osD^v<>"
    drawn = False
    for ci, method in enumerate(methods):
        for bi, bits in enumerate(bit_settings):
            traces = values_by_seed(records, "trace", "qat", method, bits)
            accs = values_by_seed(records, "accuracy", "qat", method, bits)
            seeds = sorted(set(traces) & set(accs))
            if seeds:
                ax.scatter(
                    [traces[s] for s in seeds],
                    [100 * accs[s] for s in seeds],
                    color=f"C{ci % 10}",
                    marker=markers[bi % len(markers)],
                    label=f"{method} {bits}",
                )
                drawn = True
    ax.set_xscale("log")
    xlabel = "Hessian trace (Hutchinson, fixed probe batch)"
    return finish(fig, ax, drawn, path, xlabel, "quantized test accuracy (%)", ncol=2, fontsize=7)


def plot_trajectories(records, methods, bit_settings, path) -> str | None:
    """The Hessian trace logged during QAT, mean over seeds, one panel per bit setting."""
    fig, axes = plt.subplots(1, len(bit_settings), figsize=(4.5 * len(bit_settings), 3.5), squeeze=False)
    drawn = False
    for ax, bits in zip(axes[0], bit_settings, strict=True):
        for ci, method in enumerate(methods):
            curves = [
                r["trajectory"]
                for r in records
                if r.get("group") == "qat"
                and r.get("method") == method
                and r.get("bits") == bits
                and r.get("status") == OK
                and (r.get("trajectory") or {}).get("status") == OK
            ]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c["steps"]) for c in curves)))
            means = [mean_std([c["values"][c["steps"].index(s)] for c in curves])[0] for s in steps]
            ax.plot(steps, means, marker=".", color=f"C{ci % 10}", label=f"{method} (n={len(curves)})")
            drawn = True
        ax.set_title(bits)
        ax.set_xlabel("QAT step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel("Hessian trace")
    axes[0][0].legend(fontsize=8)
    return save(fig, path)


def plot_ptq(records, sources, ptq_bits, path) -> str | None:
    """PTQ test accuracy (mean ± std over seeds) against bits for each FP training."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for source in sources:
        positions, means, stds = errorbar_series(
            records, "ptq_accuracy", "ptq", source, [str(b) for b in ptq_bits]
        )
        if positions:
            xs = [ptq_bits[i] for i in positions]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"{source}-trained, then PTQ")
            drawn = True
    ax.invert_xaxis()
    ax.set_xticks(list(ptq_bits))
    return finish(fig, ax, drawn, path, "PTQ bits (W = A)", "test accuracy (%)")


def finish(fig, ax, drawn: bool, path: str, xlabel: str, ylabel: str, ncol=1, fontsize=8) -> str | None:
    """Label, save and close a one-panel figure; nothing is saved when nothing was drawn."""
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize, ncol=ncol)
    ax.grid(alpha=0.3)
    return save(fig, path)


def save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        rows = [
            row
            for row in group_table(records, metric, "qat", methods, bit_settings)
            if any(value != "–" for value in row[1:])
        ]
        if rows:
            lines += [caption, "", markdown_table(["method", *bit_settings], rows), ""]
    return lines


def bn_lines(records, methods, bit_settings) -> list[str]:
    """The section on BatchNorm re-estimation: QAT accuracy with re-estimated statistics, and
    the accuracy claims evaluated on it; empty when no record has it."""
    rows = [
        row
        for row in group_table(records, "bn_accuracy", "qat", methods, bit_settings)
        if any(value != "–" for value in row[1:])
    ]
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


def sensitivity_claims(settings: dict[str, Any]) -> list[Claim]:
    """The QAT claims whose method, baseline and bits all run under every sensitivity variant."""
    methods = set(settings.get("sensitivity_methods") or ())
    bits = {bits_label(w, a) for w, a in settings.get("sensitivity_bits") or ()}
    return [c for c in CLAIMS if c.group == "qat" and {c.method, c.baseline} <= methods and c.bits in bits]


def effect_cell(result: ClaimResult) -> str:
    """``effect [95% CI] verdict (n)`` of one claim result (``–`` without paired runs)."""
    if not result.seeds:
        return "–"
    return f"{effect_text(result)} {result.verdict} (n={len(result.seeds)})"


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
            seeds = sorted(set(ours) & set(lsq))
            effect = "–"
            if seeds:
                interval = paired_t_interval([ours[k] for k in seeds], [lsq[k] for k in seeds])
                effect = f"{100 * interval.mean:+.2f} pts"
                if interval.low is not None:
                    effect += f" [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]"
                effect += f" (n={len(seeds)})"
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
