"""Study v2: the pre-registered reproduction of docs/study_protocol.md (issue #13).

    python benchmarks/study_v2.py                  # pilot, tuning, then the grid (resumable)
    python benchmarks/study_v2.py --max-runs 3     # train at most 3 runs in this call
    python benchmarks/study_v2.py --measure-cost   # project the grid from the runs measured so far

Every number of the protocol is a constant here (``tests/test_study_v2.py`` checks they agree
with docs/study_protocol.md). The study runs in three stages, each through the resumable
executor of :mod:`jaxquant.study.runs` (a finished run is read back, a killed one resumes):

1. the seed-0 FP run and the pilot (LSQ W2A2 for ``PILOT_EPOCHS`` epochs), whose validation
   curve sets the QAT length E (:func:`qat_length`);
2. the tuning runs of seed 0 at W2A2 (one per candidate of ``TUNED_FIELDS``; DNQ's with its
   W4A4 PTQ), whose validation accuracies choose each field (:func:`choose`);
3. the grid of the protocol's §7 for every seed with those choices.

A stage that cannot finish yet (``--max-runs`` reached, a run failed) ends the call; the
records so far are in ``benchmarks/results/study_v2.json`` with ``"partial": true``.

That file is committed, and with the archived FP workdirs of the grid
(``benchmarks/results/study_v2_checkpoints/``) it carries the study between working periods:
on a fresh checkout (``runs/`` gone) a run with a complete record there is not trained again,
unless a run still to execute starts from it, or its landscape (computed as soon as a seed's
LSQ and FPQ runs at W2A2 are in) is not recorded yet. Training is bit-identical on one
machine but not across machines, so every record holds the digest of the checkpoint it
started from; a grid run whose parent was trained again to other weights trains again (the
earlier record is kept under ``superseded_runs``). The pilot's curve comes from there too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

from report.study_v2 import DNQ_TUNING_TARGET, tuning_score, write_v2_report  # noqa: E402

from configs.common import fashion_cnn6  # noqa: E402
from jaxquant.study.adapters import OK  # noqa: E402
from jaxquant.study.runs import RunSpec, Study, TraceSettings, spec_hashes  # noqa: E402
from jaxquant.train.metrics import read_metrics  # noqa: E402

STUDY = "study_v2"
SEEDS = 5
VALIDATION_IMAGES = 5000
TRAIN_IMAGES = 60000 - VALIDATION_IMAGES
BATCH_SIZE = 256  # the fashion_cnn6 recipe's
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH_SIZE
PILOT_EPOCHS = 6
MIN_QAT_EPOCHS = 3
PLATEAU_TOLERANCE = 0.003  # E: the first epoch >= 3 within 0.3 points of the pilot's best
TIE_TOLERANCE = 0.001  # a candidate within 0.1 points of the default does not replace it
# (method, field): (default, other candidates); chosen on seed 0 at W2A2 by validation accuracy
TUNED_FIELDS = {
    ("fpq", "csd_weight"): (1.0, (0.1, 0.01)),
    ("cr", "ema_horizon_fraction"): (0.1, (0.3,)),
    ("mec", "beta"): (1.0, (10.0,)),
    ("dnq", "noise_scale"): (1.0, (0.5,)),
}
TUNING_SEED = 0
TUNING_BITS = (2, 2)
# (label, method, method fields) per bit setting: the claims' grid (protocol §7)
GRID = {
    (4, 4): (("lsq", "lsq", {}), ("fpq", "fpq", {})),
    (2, 4): (
        ("lsq", "lsq", {}),
        ("fpq", "fpq", {}),
        ("fpq_sfp_only", "fpq", {"csd_weight": 0.0}),
        ("fpq_csd_only", "fpq", {"sfp": False}),
        ("cr", "cr", {}),
        ("sam", "sam", {}),
    ),
    (2, 2): (("lsq", "lsq", {}), ("fpq", "fpq", {}), ("cr", "cr", {}), ("mec", "mec", {}), ("kd", "kd", {})),
}
DNQ_TARGETS = (4, 3)
PTQ_BITS = (8, 6, 4, 3)
PTQ_OBSERVERS = ("minmax", "mse")
CALIBRATION_DRAWS = (0, 1, 2)
TRAJECTORY_METHODS = ("lsq", "fpq", "cr", "mec")
TRAJECTORY_BITS = (2, 2)
TRACE = TraceSettings(
    batch_size=256, num_probes=30, seed=0, every_steps=STEPS_PER_EPOCH // 2, trajectory_probes=10
)


def bits_label(w_bits: int, a_bits: int) -> str:
    return f"W{w_bits}A{a_bits}"


def base_config(method: str, seed: int, epochs: float):
    """The protocol's recipe (``configs/common.py:fashion_cnn6``) with the validation split,
    a validation evaluation every epoch and ``epochs`` of training."""
    config = fashion_cnn6(method)
    config.seed = seed
    config.data.validation_images = VALIDATION_IMAGES
    config.train.num_epochs = epochs
    config.train.eval_every = STEPS_PER_EPOCH
    config.train.log_every = STEPS_PER_EPOCH // 2
    config.train.checkpoint_every = STEPS_PER_EPOCH
    return config


def fp_spec(seed: int, method: str = "fp", fields: dict | None = None, run_id: str = "", group: str = "fp"):
    """An FP-recipe run: plain FP, or DNQ with ``fields`` (its target bits, noise scale)."""
    config = base_config(method, seed, config_epochs(method))
    config.method.update(fields or {})
    labels = dict(seed=seed, group=group, method=method, bits="FP", w_bits=None, a_bits=None)
    labels.update(target_bits=(fields or {}).get("target_bits"))
    return RunSpec(run_id or f"seed{seed}/{method}", "train", config, labels, flatness=True)


def config_epochs(method: str) -> float:
    return fashion_cnn6(method).train.num_epochs


def qat_spec(seed, bits, label, method, fields, epochs, group="qat", run_id=""):
    """A QAT run from the seed's FP run, ``epochs`` long, at ``bits``."""
    config = base_config(method, seed, epochs)
    config.quant.w_bits, config.quant.a_bits = bits
    config.method.update(fields)
    run_id = run_id or f"seed{seed}/{label}_{bits_label(*bits).lower()}"
    labels = dict(
        seed=seed, group=group, method=label, bits=bits_label(*bits), w_bits=bits[0], a_bits=bits[1]
    )
    parent = f"seed{seed}/fp"
    spec = RunSpec(run_id, "train", config, labels, parent, flatness=True, weight_clipping=True)  # change 7
    spec.trajectory = label in TRAJECTORY_METHODS and tuple(bits) == TRAJECTORY_BITS
    return spec


def ptq_spec(parent: RunSpec, observer: str, draw: int, bits=PTQ_BITS, group="ptq") -> RunSpec:
    """PTQ of the FP-recipe run ``parent`` with ``observer`` and calibration ``draw``."""
    from jaxquant.study.adapters import ptq_config

    config = ptq_config(parent.config, "", list(bits))
    config.ptq.observer = observer
    config.ptq.calibration_draw = draw
    labels = dict(parent.labels, group=group, source=parent.labels["method"], observer=observer, draw=draw)
    labels["bits"] = "PTQ"
    run_id = f"{parent.run_id}/ptq_{observer}_draw{draw}"
    return RunSpec(run_id, "ptq", config, labels, parent=parent.run_id, ptq_bits=tuple(bits))


def pilot_stage() -> list[RunSpec]:
    """The seed-0 FP run and the pilot: LSQ W2A2, PILOT_EPOCHS epochs, validation each epoch."""
    pilot = qat_spec(0, (2, 2), "lsq", "lsq", {}, PILOT_EPOCHS, group="pilot", run_id="pilot/lsq_w2a2")
    pilot.trajectory = pilot.paired = False
    return [fp_spec(0), pilot]


def validation_curve(workdir: str) -> list[tuple[int, float]]:
    """``(epoch, validation accuracy)`` of a run from its metrics (the last record per step)."""
    by_step = {}
    for row in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if row.get("kind") == "validation":
            by_step[int(row["step"])] = float(row["accuracy"])
    return [(step // STEPS_PER_EPOCH, by_step[step]) for step in sorted(by_step)]


def qat_length(curve: list[tuple[int, float]]) -> int:
    """E: the smallest epoch ``e ≥ MIN_QAT_EPOCHS`` whose validation accuracy is within
    ``PLATEAU_TOLERANCE`` of the curve's best (the pilot's length caps it)."""
    best = max(accuracy for _, accuracy in curve)
    eligible = [
        epoch for epoch, accuracy in curve if epoch >= MIN_QAT_EPOCHS and accuracy >= best - PLATEAU_TOLERANCE
    ]
    return min(eligible) if eligible else max(epoch for epoch, _ in curve)


def candidate_id(method: str, field: str, value) -> str:
    """The run id of one tuning candidate (the grid has its own seed-0 runs)."""
    if method == "dnq":
        return f"seed{TUNING_SEED}/dnq_t{DNQ_TUNING_TARGET}_{field}{value}"
    return f"seed{TUNING_SEED}/{method}_{bits_label(*TUNING_BITS).lower()}_{field}{value}"


def dnq_candidate(value, group: str) -> RunSpec:
    fields = {"target_bits": DNQ_TUNING_TARGET, "noise_scale": value}
    return fp_spec(TUNING_SEED, "dnq", fields, candidate_id("dnq", "noise_scale", value), group)


def tuning_stage(epochs: int) -> list[RunSpec]:
    """Seed-0 runs of every candidate of ``TUNED_FIELDS``: QAT at ``TUNING_BITS``; DNQ at
    target ``DNQ_TUNING_TARGET`` with its minmax PTQ (draw 0) at that width."""
    specs = []
    for (method, field), (default, others) in TUNED_FIELDS.items():
        for value in (default, *others):
            run_id = candidate_id(method, field, value)
            if method == "dnq":
                network = dnq_candidate(value, "tuning")
                specs += [network, ptq_spec(network, "minmax", 0, group="tuning")]
            else:
                specs.append(
                    qat_spec(
                        TUNING_SEED, TUNING_BITS, method, method, {field: value}, epochs, "tuning", run_id
                    )
                )
    for spec in specs:  # a record of the choice: it stays valid whatever the seed's FP is now
        spec.paired = False
    return specs


def choose(default, candidates: dict[Any, float]) -> Any:
    """The candidate with the highest validation accuracy; the default unless another beats
    it by more than ``TIE_TOLERANCE``."""
    best = max(candidates, key=lambda value: candidates[value])
    return best if candidates[best] > candidates[default] + TIE_TOLERANCE else default


def choices_from(records: dict[str, dict[str, Any]]) -> tuple[dict | None, dict]:
    """``({(method, field): chosen value} or None while a candidate is missing, the scores)``."""
    scores: dict[str, dict[str, float | None]] = {}
    chosen = {}
    for (method, field), (default, others) in TUNED_FIELDS.items():
        per_value = {}
        for value in (default, *others):
            run_id = candidate_id(method, field, value)
            if method == "dnq":
                run_id += "/ptq_minmax_draw0"
            per_value[value] = tuning_score(records.get(run_id))
        scores[f"{method}.{field}"] = {str(v): score for v, score in per_value.items()}
        if any(score is None for score in per_value.values()):
            return None, scores
        chosen[(method, field)] = choose(default, per_value)
    return chosen, scores


def tuned_fields(method: str, chosen: dict) -> dict[str, Any]:
    return {field: value for (m, field), value in chosen.items() if m == method}


SLICE_POINTS = 25  # 1-D slices: α in [−SLICE_RADIUS, SLICE_RADIUS]
SLICE_RADIUS = 1.0
LINE_MARGIN = 0.25  # the LSQ → FPQ line: α in [−margin, 1 + margin]
LANDSCAPE_BITS = "W2A2"


def grid_stage(epochs: int, chosen: dict, seeds: int = SEEDS) -> list[RunSpec]:
    """The protocol's §7 grid for every seed with the chosen [design] fields. Its seed-0 runs
    are not the tuning runs (protocol, change 3): every QAT run of a seed starts from the
    seed's FP checkpoint of the grid, which is archived so that it survives the checkout.

    Per seed: FP, then each network right before its PTQ runs, then the QAT runs, the
    landscape's pair at ``LANDSCAPE_BITS`` first, so that a checkpoint trained again on a
    fresh checkout is used before the working period can end."""
    specs = []
    for seed in range(seeds):
        networks = [fp_spec(seed)]
        networks[0].archive = True
        for target in DNQ_TARGETS:
            fields = {"target_bits": target, **tuned_fields("dnq", chosen)}
            networks.append(fp_spec(seed, "dnq", fields, f"seed{seed}/dnq_t{target}"))
        for network in networks:
            specs.append(network)
            for observer in PTQ_OBSERVERS:
                for draw in CALIBRATION_DRAWS:
                    specs.append(ptq_spec(network, observer, draw))
        qat = []
        for bits, runs in GRID.items():
            for label, method, fields in runs:
                merged = {**tuned_fields(method, chosen), **fields}
                qat.append(qat_spec(seed, bits, label, method, merged, epochs))
        landscape_first = sorted(
            qat,
            key=lambda spec: (
                spec.labels["bits"] != LANDSCAPE_BITS or spec.labels["method"] not in ("lsq", "fpq")
            ),
        )
        specs += landscape_first
    return specs


def merge(*stages: list[RunSpec]) -> list[RunSpec]:
    """The stages' specs in order of first appearance; a later spec with an id already
    present is the same run (same config, checked) and its labels replace the earlier's."""
    out: dict[str, RunSpec] = {}
    for stage in stages:
        for spec in stage:
            earlier = out.get(spec.run_id)
            if earlier is not None and earlier.config.to_dict() != spec.config.to_dict():
                raise ValueError(f"run {spec.run_id!r} appears twice with different configs")
            out[spec.run_id] = spec
    return list(out.values())


def landscape_pair(records: dict[str, dict[str, Any]], seed: int) -> tuple[dict, dict] | None:
    """The finished grid records of LSQ and FPQ at ``LANDSCAPE_BITS`` for ``seed``, if both are."""
    found = {}
    for record in records.values():
        if (record.get("group"), record.get("bits"), record.get("seed")) == ("qat", LANDSCAPE_BITS, seed):
            if record.get("method") in ("lsq", "fpq") and record.get("status") == OK:
                found[record["method"]] = record
    return (found["lsq"], found["fpq"]) if len(found) == 2 else None


def landscape_ids(specs: list[RunSpec], seed: int) -> tuple[str, str]:
    """The run ids of the LSQ and the FPQ grid runs at ``LANDSCAPE_BITS`` for ``seed``."""
    found = {}
    for spec in specs:
        labels = spec.labels
        if (labels["group"], labels["bits"], labels["seed"]) == ("qat", LANDSCAPE_BITS, seed):
            found[labels["method"]] = spec.run_id
    return found["lsq"], found["fpq"]


def line_with_bn_reestimated(model, start, end, batches, alphas, images) -> list[float]:
    """``L(θ(α))`` on ``batches`` along the line ``θ(α) = (1 − α)·start + α·end``
    (:func:`~jaxquant.curvature.checkpoint_line`), each point's BatchNorm statistics
    re-estimated on ``images`` (:func:`~jaxquant.train.batchnorm.reestimate_batch_stats`)
    instead of interpolated: the loss of the network each point's weights make, which
    interpolated statistics can misstate when the two kernels differ in scale."""
    import jax

    from jaxquant import curvature
    from jaxquant.train.batchnorm import reestimate_batch_stats

    origin, direction = curvature.checkpoint_line(start, end)
    loss_fn = jax.jit(curvature.model_loss(model))
    losses = []
    for alpha in alphas:
        point = jax.tree_util.tree_map(lambda o, d, a=float(alpha): o + a * d, origin, direction)
        state = {key: value for key, value in point.items() if key != "params"}
        state = reestimate_batch_stats(model, point["params"], state, images)
        losses.append(float(loss_fn({"params": point["params"], **state}, batches)))
    return losses


def recorded_landscape(cache: str, key: list[str], earlier: list[dict] = ()) -> dict[str, Any] | None:
    """The landscape of the LSQ and FPQ runs with hashes ``key`` already measured: the one in
    ``cache`` or in ``earlier`` (the results file's), one with the re-estimated line first."""
    known = [item for item in earlier if item.get("runs") == key]
    if os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached.get("runs") == key:
            known.insert(0, cached)
    return next((item for item in known if "line_bn_reestimated" in item), known[0] if known else None)


def measure_landscape(workdirs: dict[str, str], seed: int, key: list[str], out: dict | None) -> dict:
    """The slices and the interpolated line (unless ``out`` has them) and the line with
    BatchNorm re-estimated, from the ``lsq`` and ``fpq`` workdirs (see :func:`landscape`)."""
    import jax
    import numpy as np

    from jaxquant import curvature
    from jaxquant.data.pipeline import calibration_images
    from jaxquant.study.runs import BN_IMAGES, FinishedRun, probe_inputs
    from jaxquant.train.setup import load_run

    loaded = {name: load_run(workdir) for name, workdir in workdirs.items()}
    finished = {name: FinishedRun(loaded[name].config, workdir) for name, workdir in workdirs.items()}
    batches = probe_inputs(finished["fpq"], TRACE)[1]
    line_alphas = np.union1d(np.linspace(-LINE_MARGIN, 1 + LINE_MARGIN, SLICE_POINTS), [0.0, 1.0])
    start, end = loaded["lsq"].variables, loaded["fpq"].variables
    if out is None:
        alphas = np.linspace(-SLICE_RADIUS, SLICE_RADIUS, SLICE_POINTS)
        out = {"runs": key, "seed": seed, "alphas": alphas.tolist(), "slices": {}}
        for name in ("lsq", "fpq"):
            variables, probe = probe_inputs(finished[name], TRACE)
            loss_fn, params, data = curvature.model_objective(loaded[name].model, variables, probe)
            direction = curvature.filter_normalized_direction(jax.random.PRNGKey(seed), params)
            out["slices"][name] = np.asarray(
                curvature.slice_1d(loss_fn, params, data, direction, alphas)
            ).tolist()
        loss_fn = curvature.model_loss(loaded["fpq"].model)
        out["line"] = {
            "alphas": line_alphas.tolist(),
            "losses": np.asarray(curvature.interpolate(loss_fn, start, end, batches, line_alphas)).tolist(),
        }
    images = calibration_images(finished["fpq"].run.train_split, BN_IMAGES, seed)
    losses = line_with_bn_reestimated(loaded["fpq"].model, start, end, batches, line_alphas, images)
    return {
        **out,
        "line_bn_reestimated": {"alphas": line_alphas.tolist(), "losses": losses, "images": len(images)},
    }


def landscape(
    study_dir: str, lsq: dict[str, Any], fpq: dict[str, Any], seed: int, earlier: list[dict] = ()
) -> dict[str, Any]:
    """On the fixed probe batch: the loss along one filter-normalised random direction (the
    seed's, kernels only) through the LSQ and through the FPQ checkpoint, and along the line
    from LSQ (α = 0) to FPQ (α = 1) with FPQ's model (both start from the seed's FP run), its
    BatchNorm statistics interpolated with the weights (``line``) and re-estimated at every
    point (``line_bn_reestimated``, :func:`line_with_bn_reestimated` on ``BN_IMAGES`` clean
    training images of the seed; protocol, change 4).
    Cached in ``<study_dir>/landscape_seed<k>.json`` under the two runs' hashes; one of
    ``earlier`` (the results file's) with those hashes is taken as it is, its re-estimated
    line added when it lacks one and both workdirs are here."""
    from jaxquant.study.runs import write_json

    cache = os.path.join(study_dir, f"landscape_seed{seed}.json")
    key = [lsq["config_hash"], fpq["config_hash"]]
    out = recorded_landscape(cache, key, earlier)
    workdirs = {
        name: os.path.join(study_dir, record["workdir"]) for name, record in (("lsq", lsq), ("fpq", fpq))
    }
    if out is not None and ("line_bn_reestimated" in out or not all(map(os.path.isdir, workdirs.values()))):
        return out
    out = measure_landscape(workdirs, seed, key, out)
    write_json(cache, out)
    return out


def landscapes(
    study_dir: str, records: dict[str, dict[str, Any]], earlier: list[dict] = ()
) -> list[dict[str, Any]]:
    """:func:`landscape` of every seed whose LSQ and FPQ runs at ``LANDSCAPE_BITS`` finished;
    one that fails is left out (and tried again on the next call), the runs are kept."""
    import traceback

    out = []
    for seed in range(SEEDS):
        pair = landscape_pair(records, seed)
        if pair is None:
            continue
        try:
            out.append(landscape(study_dir, *pair, seed, earlier))
        except Exception:  # noqa: BLE001 - an analysis must not end the study
            traceback.print_exc()
    return out


def landscape_checkpoints(specs: list[RunSpec], earlier: list[dict]) -> set[str]:
    """The LSQ and FPQ runs whose landscape is not in ``earlier``: their checkpoints are needed."""
    hashes = spec_hashes(specs)
    known = [item.get("runs") for item in earlier]
    needed = set()
    for seed in range(SEEDS):
        pair = landscape_ids(specs, seed)
        if [hashes[run_id] for run_id in pair] not in known:
            needed.update(pair)
    return needed


def read_results(path: str) -> dict[str, Any]:
    """The results file's content, or ``{}`` before the first call."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def pilot_curve(study_dir: str, record: dict[str, Any], earlier: dict[str, Any]) -> list[tuple[int, float]]:
    """The pilot's validation curve: from its metrics, or, with its workdir gone, from the
    results file that recorded the same run."""
    metrics = os.path.join(study_dir, record["workdir"], "metrics.jsonl")
    if os.path.exists(metrics):
        return validation_curve(os.path.dirname(metrics))
    return [tuple(point) for point in earlier["pilot"]["validation_by_epoch"]]


def cpu_model() -> str | None:
    """The CPU's model name and a digest of its feature flags (XLA's CPU kernels depend on them)."""
    import hashlib

    try:
        with open("/proc/cpuinfo") as f:
            fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in f)}
    except OSError:
        return platform.processor() or None
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:8]
    return f"{fields.get('model name', '')} (flags {flags})"


def enable_compilation_cache(root: str, min_compile_time_s: float = 0.5) -> str:
    """Turn on JAX's persistent compilation cache under ``root``, in one folder per CPU (an
    executable is compiled for its CPU's features), for what takes ``min_compile_time_s`` or
    more to compile; return the folder. A run of a method at some bits compiles what the same
    run of another seed compiled, so each later one loads it from disk; the executables are the
    same, and so are the numbers (protocol, change 6)."""
    import hashlib

    import jax

    folder = os.path.join(root, hashlib.sha256(str(cpu_model()).encode()).hexdigest()[:12])
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    return folder


def header(command: str, stage: str, extra: dict) -> dict[str, Any]:
    return {
        "study": STUDY,
        "protocol": "docs/study_protocol.md",
        "stage": stage,
        "partial": stage != "grid finished",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "accelerator": None,
        },
        "settings": {
            "seeds": SEEDS,
            "validation_images": VALIDATION_IMAGES,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "pilot_epochs": PILOT_EPOCHS,
            "tuned_fields": {f"{m}.{f}": [d, *o] for (m, f), (d, o) in TUNED_FIELDS.items()},
            "trace": dataclasses.asdict(TRACE),
        },
        **extra,
    }


def run_stages(
    study_dir: str, results: str, command: str, max_runs: int | None, archive_dir: str | None = None
) -> dict[str, Any]:
    """Run the three stages as far as they go in this call (the grid's FP workdirs archived
    under ``archive_dir``); return the last header."""
    budget = [max_runs]
    earlier = read_results(results)

    def execute(specs, stage, extra, keep=(), after_run=None):
        study_header = header(command, stage, extra)
        study = Study(
            study_dir, specs, results, study_header, TRACE, budget[0], print, keep, after_run, archive_dir
        )
        records = {record["run_id"]: record for record in study.run()}
        extra.update({key: study_header[key] for key in extra})
        if budget[0] is not None:
            budget[0] = max(0, budget[0] - study.trained)
        return records

    pilot = pilot_stage()
    records = execute(pilot, "pilot", {})
    if any(records[spec.run_id]["status"] != OK for spec in pilot):
        return {"stage": "pilot"}
    curve = pilot_curve(study_dir, records["pilot/lsq_w2a2"], earlier)
    epochs = qat_length(curve)
    extra = {"pilot": {"validation_by_epoch": curve, "qat_epochs": epochs}}
    print(f"[study_v2] pilot: validation by epoch {curve} -> QAT length {epochs} epochs")
    tuning = tuning_stage(epochs)
    records = execute(merge(pilot, tuning), "tuning", extra)
    chosen, scores = choices_from(records)
    extra["tuning"] = {"scores": scores}
    if chosen is None:
        return {"stage": "tuning", **extra}
    extra["tuning"]["chosen"] = {f"{m}.{f}": value for (m, f), value in chosen.items()}
    print(f"[study_v2] tuning: {extra['tuning']}")
    grid = grid_stage(epochs, chosen)
    specs = merge(pilot, tuning, grid)
    recorded = earlier.get("landscape", [])
    extra["landscape"] = recorded

    def add_landscapes(records):  # as soon as a seed's LSQ and FPQ runs are both in
        return {"landscape": landscapes(study_dir, records, recorded)}

    records = execute(specs, "grid", extra, landscape_checkpoints(specs, recorded), add_landscapes)
    finished = all(records[spec.run_id]["status"] == OK for spec in specs)
    execute(specs, "grid finished" if finished else "grid", extra)  # every record read back
    return {"stage": "grid finished" if finished else "grid", **extra}


def measure_cost(results: str) -> dict[str, Any]:
    """Project the grid's wall-clock from the runs measured so far: the seed-0 FP run's
    seconds per epoch and each method's seconds per epoch where it has run, else LSQ's
    scaled by the train-step benchmark's ratio (benchmarks/README.md)."""
    content = read_results(results)
    runs = [r for r in content["runs"] if r.get("status") == OK and r.get("wall_time_s")]
    per_epoch: dict[str, list[float]] = {}
    for r in runs:
        if r["kind"] == "train" and r.get("steps"):
            per_epoch.setdefault(r["method"], []).append(r["wall_time_s"] * STEPS_PER_EPOCH / r["steps"])
    ptq = [r["wall_time_s"] for r in runs if r["kind"] == "ptq"]
    measured = {method: sum(v) / len(v) for method, v in per_epoch.items()}
    step_ratio_vs_lsq = {"fpq": 1 / 0.62 * 0.91, "cr": 0.91 / 0.76, "mec": 0.91 / 0.84, "kd": 1.3, "sam": 2.0}
    step_ratio_vs_lsq.update(fpq_sfp_only=1.2, fpq_csd_only=1.3)
    lsq = measured.get("lsq")
    if lsq is None or "fp" not in measured:
        return {"status": "needs the seed-0 FP run and the pilot", "measured_s_per_epoch": measured}
    epochs = content.get("pilot", {}).get("qat_epochs", MIN_QAT_EPOCHS)

    def epoch_cost(label):
        return measured.get(label, lsq * step_ratio_vs_lsq.get(label, 1.0))

    fp_epochs, dnq = config_epochs("fp"), measured.get("dnq", measured["fp"] * 1.3)
    per_seed = {
        "fp": fp_epochs * measured["fp"],
        "dnq": len(DNQ_TARGETS) * fp_epochs * dnq,
        "qat": sum(epochs * epoch_cost(label) for runs in GRID.values() for label, _, _ in runs),
        "ptq": 3 * len(PTQ_OBSERVERS) * len(CALIBRATION_DRAWS) * (sum(ptq) / len(ptq) if ptq else 60.0),
    }
    tuning = sum(epochs * epoch_cost(m) * len(o) for (m, _), (_, o) in TUNED_FIELDS.items() if m != "dnq")
    tuning += fp_epochs * dnq
    total = SEEDS * sum(per_seed.values()) + tuning
    ptq_cost = per_seed["ptq"] / (3 * len(PTQ_OBSERVERS) * len(CALIBRATION_DRAWS))
    done = {"fp": 0, "dnq": 0, "qat": 0, "ptq": 0}
    grid_cost_done = 0.0
    for r in runs:
        if r.get("group") == "qat":
            done["qat"] += 1
            grid_cost_done += epochs * epoch_cost(r["method"])
        elif r.get("group") == "fp":
            done[r["method"]] += 1
            grid_cost_done += fp_epochs * (measured["fp"] if r["method"] == "fp" else dnq)
        elif r.get("group") == "ptq":
            done["ptq"] += 1
            grid_cost_done += ptq_cost
    remaining = SEEDS * sum(per_seed.values()) - grid_cost_done
    if "chosen" not in content.get("tuning", {}):
        remaining += tuning
    return {
        "measured_s_per_epoch": measured,
        "qat_epochs": epochs,
        "per_seed_s": per_seed,
        "tuning_s": tuning,
        "total_h": total / 3600,
        "grid_runs_done": done,
        "remaining_h": remaining / 3600,
        "note": "wall-clock on this machine, traces and evaluations included in the measured runs",
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study-dir", default=os.path.join(REPO, "runs", "study", STUDY))
    parser.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results", f"{STUDY}.json"))
    parser.add_argument("--max-runs", type=int, default=None, help="train at most this many runs")
    parser.add_argument("--measure-cost", action="store_true", help="project the grid from the runs so far")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from the JSON")
    parser.add_argument(
        "--archive-dir",
        default=os.path.join(REPO, "benchmarks", "results", f"{STUDY}_checkpoints"),
        help="where the grid's FP workdirs are archived (committed: later QAT runs start from them)",
    )
    parser.add_argument(
        "--compilation-cache",
        default=os.path.join(REPO, "runs", "xla_cache"),
        help="JAX's persistent compilation cache, one folder per CPU under it ('' turns it off)",
    )
    parser.add_argument("--report", default=os.path.join(REPO, "docs", "results.md"))
    parser.add_argument("--figures", default=os.path.join(REPO, "docs", "figures"))
    args = parser.parse_args(argv)
    if args.measure_cost:
        if not os.path.exists(args.results):
            print(f"study_v2: error: {args.results} does not exist: run the pilot first", file=sys.stderr)
            return 2
        print(json.dumps(measure_cost(args.results), indent=2))
        return 0
    if not args.report_only:
        if args.compilation_cache:
            print(f"[study_v2] compilation cache: {enable_compilation_cache(args.compilation_cache)}")
        command = "python benchmarks/study_v2.py " + shlex.join(argv)
        state = run_stages(args.study_dir, args.results, command.strip(), args.max_runs, args.archive_dir)
        print(f"[study_v2] stopped at stage {state['stage']!r}; results: {args.results}")
    elif not os.path.exists(args.results):
        print(f"study_v2: error: {args.results} does not exist: run the study first", file=sys.stderr)
        return 2
    write_v2_report(read_results(args.results), args.report, args.figures)
    print(f"[study_v2] report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
