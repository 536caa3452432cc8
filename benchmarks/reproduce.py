"""The reproduction study of methods.md §6: do the four papers' claims hold on real data?

    python benchmarks/reproduce.py                       # the whole grid on Fashion-MNIST (~3.7 CPU-h)
    python benchmarks/reproduce.py --quick               # 1 seed, W2A2 only, short runs (~7 min)
    python benchmarks/reproduce.py --quick --methods lsq,cr  # the quick grid, two QAT methods only
    python benchmarks/reproduce.py --report-only         # regenerate docs/ from the results JSON
    python benchmarks/reproduce.py --measure-cost        # time one FP and one LSQ epoch, project the grid

The grid, per seed: FP pretraining; QAT with every method of ``QAT_METHODS`` at W4A4, W2A4 and
W2A2 from that FP checkpoint (same epochs, learning rate and budget for every method); DNQ
training with the FP run's epochs and learning rate; the same PTQ at 8/6/4/3 bits of both FP
networks; the Hessian trace of every final checkpoint on one fixed probe batch; the trace
trajectory during QAT for ``TRAJECTORY_METHODS``; then claims 1–3 under the
``SENSITIVITY_VARIANTS`` budgets (every method and LSQ alike) and the ``DIAGNOSTICS`` runs of
one method's [design] fields (reported, never in a verdict). Every grid point is a run of
``jaxquant.modes.run_mode`` in its own workdir under ``--study-dir`` (see
``jaxquant.study.runs``): a finished run is read back, an interrupted one resumes, a method or
mode this checkout lacks is recorded as ``unavailable``. Results go to
``benchmarks/results/<study>.json``, the report to ``docs/results_v1.md`` (Fashion-MNIST, full
grid) or ``docs/results_<study>.md``, its plots to ``docs/figures/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from typing import Any

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]  # this checkout's jaxquant and report module

from reproduce_report import bits_label, write_report  # noqa: E402

from jaxquant.defaults import get_config  # noqa: E402
from jaxquant.study import adapters  # noqa: E402
from jaxquant.study.runs import (  # noqa: E402
    FinishedRun,
    RunSpec,
    Study,
    TraceSettings,
    checkpoint_trace,
    has_failure,
)

QAT_METHODS = ("lsq", "pact", "lsq_plus", "kd", "sam", "fpq", "cr", "mec")
TRAJECTORY_METHODS = ("lsq", "fpq", "cr", "mec")
BIT_SETTINGS = ((4, 4), (2, 4), (2, 2))
PTQ_BITS = (8, 6, 4, 3)
# Claims 1–3 again under other QAT budgets: each variant runs every claim's method and its
# baseline alike (same seeds, same FP checkpoints), so no method gets more tuning than LSQ.
SENSITIVITY_METHODS = ("lsq", "fpq", "cr", "mec")
SENSITIVITY_BITS = ((2, 2),)
SENSITIVITY_VARIANTS = (("lr 0.003", 0.003, 1), ("lr 0.03", 0.03, 1), ("2x steps", 0.01, 2))
# Diagnostics of one method's [design] fields, at the sensitivity bits: extra runs for that
# method alone, so they are reported beside the verdicts and never change one.
# (label, method, ((field, value), ...))
DIAGNOSTICS = (
    ("cr, ema_decay 0.9", "cr", (("ema_decay", 0.9),)),
    ("cr, teacher fp", "cr", (("teacher", "fp"),)),
)
# Step cost relative to LSQ assumed in the projection until each method is measured (the
# train-step benchmark's expectations: one extra teacher forward ≈ 1.5, two passes ≈ 2).
ASSUMED_COST_VS_LSQ = {
    "lsq": 1.0,
    "pact": 1.0,
    "lsq_plus": 1.0,
    "kd": 1.5,
    "sam": 2.0,
    "fpq": 1.5,
    "cr": 2.0,
    "mec": 1.5,
}
ASSUMED_DNQ_COST_VS_FP = 1.3
ASSUMED_PTQ_COST_PER_BITS = 0.1  # calibration + one test-set evaluation, in FP epochs
# One final-checkpoint trace (10 probes, 128 images, compile included) in LSQ epochs, used only
# by --measure-cost on a checkout without the trace estimator. Measured 20.5 against 54 CPU-s
# under heavy load (0.38); at idle 8.3 against 47.6 CPU-s (0.18), so this errs on the high side.
ASSUMED_TRACE_IN_LSQ_EPOCHS = 0.38


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """Everything that defines the grid; stored at the top of the results file."""

    dataset: str
    quick: bool
    seeds: int
    bit_settings: tuple[tuple[int, int], ...]
    qat_methods: tuple[str, ...]
    trajectory_methods: tuple[str, ...]
    ptq_bits: tuple[int, ...]
    model: str
    widths: tuple[int, ...]
    batch_size: int
    crop_padding: int
    flip: bool
    fp_epochs: float
    fp_learning_rate: float
    qat_epochs: float
    qat_learning_rate: float
    fp_steps: int
    qat_steps: int
    trace: TraceSettings
    # (label, QAT learning rate, factor on the QAT length) of each sensitivity variant
    sensitivity_variants: tuple[tuple[str, float, int], ...] = ()
    sensitivity_methods: tuple[str, ...] = ()
    sensitivity_bits: tuple[tuple[int, int], ...] = ()
    diagnostics: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def name(self) -> str:
        return self.dataset + ("_quick" if self.quick else "")


# Sized with --measure-cost (benchmarks/README.md): the Fashion-MNIST grid ≈ 3 h on this 2-core CPU.
SHARED_PRESET = dict(model="small_cnn", widths=(16, 32), qat_learning_rate=0.01, flip=False)
PRESETS = {
    "fashion_mnist": dict(
        SHARED_PRESET, batch_size=256, crop_padding=2, fp_epochs=8, fp_learning_rate=0.1, qat_epochs=1,
        trace=TraceSettings(batch_size=128, num_probes=10, seed=0, every_steps=78, trajectory_probes=10),
    ),
    "digits": dict(
        SHARED_PRESET, batch_size=64, crop_padding=1, fp_epochs=30, fp_learning_rate=0.05, qat_epochs=10,
        trace=TraceSettings(batch_size=128, num_probes=10, seed=0, every_steps=40, trajectory_probes=10),
    ),
}  # fmt: skip
QUICK = {
    "fashion_mnist": dict(seeds=1, bit_settings=((2, 2),), fp_epochs=1, qat_steps=150, every_steps=50),
    "digits": dict(seeds=1, bit_settings=((2, 2),), fp_epochs=10, qat_steps=60, every_steps=20),
}


def study_settings(
    dataset: str,
    quick: bool,
    seeds: int | None = None,
    fp_steps: int = -1,
    qat_steps: int = -1,
    methods: tuple[str, ...] | None = None,
) -> StudySettings:
    """The grid for ``dataset``; ``quick`` is the 1-seed W2A2 subset with short runs;
    ``methods`` keeps only these QAT methods (default: all of ``QAT_METHODS``)."""
    if dataset not in PRESETS:
        raise ValueError(f"--dataset={dataset!r} is not allowed: choose one of {sorted(PRESETS)}")
    unknown = sorted(set(methods or ()) - set(QAT_METHODS))
    if unknown or methods == ():
        allowed = ", ".join(QAT_METHODS)
        raise ValueError(f"--methods={','.join(methods)!r} is not allowed: choose from {allowed}")
    preset = dict(PRESETS[dataset])
    fields = dict(
        seeds=3,
        bit_settings=BIT_SETTINGS,
        fp_steps=-1,
        qat_steps=-1,
        sensitivity_variants=SENSITIVITY_VARIANTS,
        sensitivity_methods=SENSITIVITY_METHODS,
        sensitivity_bits=SENSITIVITY_BITS,
        diagnostics=DIAGNOSTICS,
    )
    if quick:
        q = QUICK[dataset]
        fields.update(seeds=q["seeds"], bit_settings=q["bit_settings"], fp_steps=-1, qat_steps=q["qat_steps"])
        fields.update(sensitivity_variants=(), sensitivity_methods=(), sensitivity_bits=(), diagnostics=())
        preset["fp_epochs"] = q["fp_epochs"]
        preset["trace"] = dataclasses.replace(preset["trace"], every_steps=q["every_steps"])
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds={seeds} is not allowed: use 1 or more")
        fields["seeds"] = seeds
    if fp_steps > 0:
        fields["fp_steps"] = fp_steps
    if qat_steps > 0:
        fields["qat_steps"] = qat_steps
    return StudySettings(
        dataset=dataset,
        quick=quick,
        qat_methods=tuple(m for m in QAT_METHODS if methods is None or m in methods),
        trajectory_methods=tuple(m for m in TRAJECTORY_METHODS if methods is None or m in methods),
        ptq_bits=PTQ_BITS,
        **fields,
        **preset,
    )


def base_config(settings: StudySettings, seed: int):
    """The shared config of every run of one seed (data, model, batch, logging)."""
    config = get_config()
    config.seed = seed
    config.data.name = settings.dataset
    config.data.batch_size = settings.batch_size
    config.data.crop_padding = settings.crop_padding
    config.data.flip = settings.flip
    config.data.eval_batch_size = 500
    config.model.name = settings.model
    config.model.kwargs = {"widths": settings.widths}
    config.train.log_every = 50
    config.train.checkpoint_every = 100
    return config


def training_config(settings: StudySettings, seed: int, method: str, qat: bool, w_bits=None, a_bits=None):
    config = base_config(settings, seed)
    config.method = adapters.method_block(config.method, method)
    epochs, steps, lr = (
        (settings.qat_epochs, settings.qat_steps, settings.qat_learning_rate)
        if qat
        else (settings.fp_epochs, settings.fp_steps, settings.fp_learning_rate)
    )
    config.optim.learning_rate = lr
    config.train.num_epochs = epochs
    config.train.num_steps = steps
    if qat:
        config.quant.w_bits, config.quant.a_bits = w_bits, a_bits
    return config


def fp_training(settings: StudySettings, seed: int, method: str, run_id: str) -> RunSpec:
    """A full-precision training run (plain ``fp`` or ``dnq``) with the FP epochs and lr."""
    config = training_config(settings, seed, method, qat=False)
    labels = dict(seed=seed, group="fp", method=method, w_bits=None, a_bits=None, bits="FP")
    return RunSpec(run_id, "train", config, labels, trace=True)


def qat_run(
    settings: StudySettings, seed: int, fp_id: str, prefix: str, group: str, method: str, bits: tuple
) -> RunSpec:
    """A QAT run of ``method`` at ``bits = (w_bits, a_bits)`` from the seed's FP run with the
    main grid's budget, id ``seed<k>/<prefix>_<bits>``; a variant changes its ``config`` afterwards."""
    w_bits, a_bits = bits
    label = bits_label(w_bits, a_bits)
    return RunSpec(
        f"seed{seed}/{prefix}_{label.lower()}",
        "train",
        training_config(settings, seed, method, True, w_bits, a_bits),
        dict(seed=seed, group=group, method=method, w_bits=w_bits, a_bits=a_bits, bits=label),
        parent=fp_id,
        trace=True,
        qat_analyses=True,
    )


def sensitivity_runs(settings: StudySettings, seed: int, fp_id: str) -> list[RunSpec]:
    """The QAT runs of every sensitivity variant for one seed, from that seed's FP run; their
    group is ``sensitivity:<label>`` and their only change is the QAT learning rate and length."""
    specs = []
    for label, learning_rate, length_factor in settings.sensitivity_variants:
        slug = label.replace(" ", "")
        for bits in settings.sensitivity_bits:
            for method in settings.sensitivity_methods:
                group = f"sensitivity:{label}"
                spec = qat_run(settings, seed, fp_id, f"sens_{slug}_{method}", group, method, bits)
                spec.config.optim.learning_rate = learning_rate
                spec.config.train.num_epochs = settings.qat_epochs * length_factor
                if settings.qat_steps > 0:
                    spec.config.train.num_steps = settings.qat_steps * length_factor
                specs.append(spec)
    return specs


def diagnostic_runs(settings: StudySettings, seed: int, fp_id: str) -> list[RunSpec]:
    """One QAT run per diagnostic and sensitivity bit setting for one seed: the main grid's
    run of that method with the diagnostic's [design] fields set; group ``diagnostic:<label>``."""
    specs = []
    for label, method, fields in settings.diagnostics:
        slug = label.replace(", ", "_").replace(" ", "")
        for bits in settings.sensitivity_bits:
            spec = qat_run(settings, seed, fp_id, f"diag_{slug}", f"diagnostic:{label}", method, bits)
            spec.config.method.update(dict(fields))
            specs.append(spec)
    return specs


def study_grid(settings: StudySettings) -> list[RunSpec]:
    """The runs of the study in execution order (a run's parent comes before it); the
    sensitivity and diagnostic runs of every seed come last, after the whole main grid."""
    specs, sensitivity = [], []
    for seed in range(settings.seeds):
        fp_id, dnq_id = f"seed{seed}/fp", f"seed{seed}/dnq"
        specs.append(fp_training(settings, seed, "fp", fp_id))
        for bits in settings.bit_settings:
            for method in settings.qat_methods:
                spec = qat_run(settings, seed, fp_id, f"qat_{method}", "qat", method, bits)
                spec.trajectory = method in settings.trajectory_methods
                specs.append(spec)
        specs.append(fp_training(settings, seed, "dnq", dnq_id))
        for source, parent in (("fp", fp_id), ("dnq", dnq_id)):
            specs.append(
                RunSpec(
                    f"seed{seed}/ptq_{source}",
                    "ptq",
                    base_config(settings, seed),
                    dict(seed=seed, group="ptq", method=source, w_bits=None, a_bits=None, bits="PTQ"),
                    parent=parent,
                    ptq_bits=settings.ptq_bits,
                )
            )
        sensitivity += sensitivity_runs(settings, seed, fp_id) + diagnostic_runs(settings, seed, fp_id)
    return specs + sensitivity


def default_paths(settings: StudySettings) -> dict[str, str]:
    """Where a study writes: runs, results JSON, report, figures."""
    report = "results_v1.md" if settings.name == "fashion_mnist" else f"results_{settings.name}.md"
    return {
        "study_dir": os.path.join(REPO, "runs", "study", settings.name),
        "results": os.path.join(REPO, "benchmarks", "results", f"{settings.name}.json"),
        "report": os.path.join(REPO, "docs", report),
        "figures": os.path.join(REPO, "docs", "figures"),
    }


def run_study(
    settings: StudySettings, study_dir: str, results_path: str, command: str, max_runs: int | None = None
) -> list[dict]:
    header = {
        "study": settings.name,
        "settings": dataclasses.asdict(settings),
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    study = Study(study_dir, study_grid(settings), results_path, header, settings.trace, max_runs)
    return study.run()


def report(results_path: str, md_path: str, figure_dir: str) -> str:
    with open(results_path) as f:
        results = json.load(f)
    return write_report(results, md_path, figure_dir, os.path.relpath(results_path, os.path.dirname(md_path)))


def time_one_epoch(settings: StudySettings, method: str, workdir: str, init_from: str = "") -> dict:
    """Wall and process CPU time (all threads) of one full training epoch through
    ``train_and_evaluate`` (compile and the final test evaluation included), the median
    logged steps/s after the first window, and the 1-minute load average around it."""
    from jaxquant.train.loop import train_and_evaluate
    from jaxquant.train.metrics import read_metrics

    qat = method != "fp"
    config = training_config(settings, 0, method, qat, *((2, 2) if qat else (None, None)))
    config.train.num_epochs, config.train.num_steps = 1, -1
    config.init_from = init_from
    load = os.getloadavg()[0]
    start, cpu_start = time.time(), time.process_time()
    summary = train_and_evaluate(config, workdir)
    wall, cpu = time.time() - start, time.process_time() - cpu_start
    rates = [
        r["steps_per_sec"]
        for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if r["kind"] == "train"
    ][1:]
    return {
        "method": method,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": summary["steps"],
        "steady_steps_per_s": float(np.median(rates)) if rates else None,
        "test_accuracy": summary["test_accuracy"],
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def project_cost(
    settings: StudySettings, fp_epoch_s: float, lsq_epoch_s: float, trace_s: float, steps_per_epoch: int
) -> dict:
    """Seconds of the whole grid from the cost of one FP epoch, one LSQ epoch and one final
    Hessian trace (each with its compile and evaluation); other methods scale by
    ``ASSUMED_COST_VS_LSQ``, a trajectory point costs a trace scaled by its probe count, a
    sensitivity run costs its QAT run times its length factor plus one trace, a diagnostic
    run its QAT run plus one trace."""
    qat_steps = settings.qat_steps if settings.qat_steps > 0 else settings.qat_epochs * steps_per_epoch
    trajectory_points = qat_steps // settings.trace.every_steps
    qat_runs = len(settings.qat_methods) * len(settings.bit_settings)
    sensitivity_runs_per_seed = len(sensitivity_runs(settings, 0, "seed0/fp"))
    per_seed = {
        "fp": settings.fp_epochs * fp_epoch_s,
        "dnq": settings.fp_epochs * fp_epoch_s * ASSUMED_DNQ_COST_VS_FP,
        "qat": sum(ASSUMED_COST_VS_LSQ[m] for m in settings.qat_methods)
        * len(settings.bit_settings)
        * (qat_steps / steps_per_epoch)
        * lsq_epoch_s,
        "final_traces": (2 + qat_runs) * trace_s,
        "trajectories": len(settings.trajectory_methods)
        * len(settings.bit_settings)
        * trajectory_points
        * trace_s
        * settings.trace.trajectory_probes
        / settings.trace.num_probes,
        "ptq": 2 * len(settings.ptq_bits) * ASSUMED_PTQ_COST_PER_BITS * fp_epoch_s,
        "sensitivity": sum(factor for _, _, factor in settings.sensitivity_variants)
        * sum(ASSUMED_COST_VS_LSQ[m] for m in settings.sensitivity_methods)
        * len(settings.sensitivity_bits)
        * (qat_steps / steps_per_epoch)
        * lsq_epoch_s
        + sensitivity_runs_per_seed * trace_s,
        "diagnostics": len(settings.sensitivity_bits)
        * sum(
            ASSUMED_COST_VS_LSQ[method] * qat_steps / steps_per_epoch * lsq_epoch_s + trace_s
            for _, method, _ in settings.diagnostics
        ),
    }
    runs = len(study_grid(settings))
    return {"runs": runs, "per_seed_s": per_seed, "total_s": settings.seeds * sum(per_seed.values())}


def time_trace(settings: StudySettings, workdir: str) -> dict | None:
    """Wall and CPU time of the final-checkpoint Hessian trace of the run in ``workdir``."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    start, cpu_start = time.time(), time.process_time()
    result = checkpoint_trace(FinishedRun(config, workdir), settings.trace)
    return {**result, "wall_s": time.time() - start, "cpu_s": time.process_time() - cpu_start}


def measure_cost(settings: StudySettings) -> dict:
    """Time one FP epoch, one LSQ W2A2 epoch from it and the Hessian trace of the LSQ
    checkpoint, and project the whole grid from them (wall and process CPU seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        fp = time_one_epoch(settings, "fp", os.path.join(tmp, "fp"))
        lsq = time_one_epoch(settings, "lsq", os.path.join(tmp, "lsq"), os.path.join(tmp, "fp"))
        trace = time_trace(settings, os.path.join(tmp, "lsq"))
    out = {"fp_epoch": fp, "lsq_epoch": lsq, "trace": trace}
    for clock in ("wall_s", "cpu_s"):
        trace_s = trace[clock] if trace else ASSUMED_TRACE_IN_LSQ_EPOCHS * lsq[clock]
        out[f"projection_{clock}"] = project_cost(settings, fp[clock], lsq[clock], trace_s, fp["steps"])
    return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(PRESETS))
    parser.add_argument("--quick", action="store_true", help="1 seed, W2A2 only, short runs")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick 1)")
    parser.add_argument(
        "--methods",
        type=lambda text: tuple(text.split(",")) if text else (),
        default=None,
        help=f"comma-separated QAT methods of the grid (default all: {','.join(QAT_METHODS)})",
    )
    parser.add_argument("--fp-steps", type=int, default=-1, help="FP/DNQ training steps instead of epochs")
    parser.add_argument("--qat-steps", type=int, default=-1, help="QAT steps instead of epochs")
    parser.add_argument("--study-dir", default=None, help="run workdirs (default runs/study/<study>)")
    parser.add_argument(
        "--results", default=None, help="results JSON (default benchmarks/results/<study>.json)"
    )
    parser.add_argument("--report", default=None, help="markdown report (default docs/results[_<study>].md)")
    parser.add_argument("--figures", default=None, help="folder of the plots (default docs/figures)")
    parser.add_argument(
        "--max-runs", type=int, default=None, help="train at most this many runs, then report"
    )
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    parser.add_argument(
        "--measure-cost",
        action="store_true",
        help="time one FP epoch, one LSQ epoch and a Hessian trace; project the grid",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        settings = study_settings(
            args.dataset, args.quick, args.seeds, args.fp_steps, args.qat_steps, args.methods
        )
    except ValueError as error:
        print(f"reproduce: error: {error}", file=sys.stderr)
        return 2
    paths = default_paths(settings)
    results = args.results or paths["results"]
    md = args.report or paths["report"]
    figures = args.figures or paths["figures"]
    if args.measure_cost:
        print(json.dumps(measure_cost(settings), indent=2))
        return 0
    if not args.report_only:
        command = "python benchmarks/reproduce.py " + shlex.join(argv)
        records = run_study(
            settings, args.study_dir or paths["study_dir"], results, command.strip(), args.max_runs
        )
        failed = [r["run_id"] for r in records if has_failure(r)]
    elif not os.path.exists(results):
        print(f"reproduce: error: {results} does not exist: run the study first", file=sys.stderr)
        return 2
    else:
        failed = []
    report(results, md, figures)
    print(f"results: {results}\nreport: {md}")
    if failed:
        print(f"reproduce: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
