"""Resumable execution of a grid of runs, each in its own workdir named by its config hash.

A run is a :class:`RunSpec`: a complete config plus the run it starts from (``parent``, whose
workdir becomes ``init_from``). Its workdir is ``<study_dir>/<run_id>-<hash>``, where the hash
covers the config (without ``name`` and ``init_from``) and the parent's hash, so a changed
setting never reuses another setting's checkpoints. A finished run leaves
``study_result.json`` there and is read back instead of trained again; an unfinished one
resumes from its latest checkpoint through the train loop; the results file is rewritten
after every run (runs not reached yet keep their record from the last call), so a killed
study continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxquant.study import adapters
from jaxquant.study.adapters import OK, UNAVAILABLE

FAILED = "failed"
PENDING = "pending"
RESULT_FILE = "study_result.json"
# Fields that never change a run's numbers (its name, where it starts from, what it writes
# besides the checkpoint), dotted for nested ones: adding or changing one reuses the run.
HASH_EXCLUDED_FIELDS = ("name", "init_from", "export", "train.tensorboard")


@dataclasses.dataclass
class RunSpec:
    """One grid point. ``kind``: ``train`` (FP or QAT, through ``run_mode``) or ``ptq``."""

    run_id: str
    kind: str
    config: ml_collections.ConfigDict
    labels: dict[str, Any]
    parent: str | None = None
    trace: bool = False
    trajectory: bool = False
    ptq_bits: tuple[int, ...] = ()
    # QAT: record the accuracy before the first step, of an EMA teacher, and after BN re-estimation
    qat_analyses: bool = False
    # the flatness record of the final checkpoint: trace, per-layer traces and kernel norms,
    # top eigenvalue (:func:`checkpoint_flatness`)
    flatness: bool = False
    # the fraction of each layer's latent weights outside its grid in the final checkpoint
    # (:func:`checkpoint_weight_clipping`); not in :meth:`Study.analysis_keys`, so a record
    # without it stays complete
    weight_clipping: bool = False
    # compared with runs from the same parent: its record is valid only with the parent
    # checkpoint it started from (``parent_digest``), so a parent trained again to another
    # checkpoint makes it train again
    paired: bool = True
    # keep the finished workdir (final checkpoint) as a .tar.gz in the study's archive folder,
    # restored on a checkout without it, so that its later runs start from the same weights
    archive: bool = False


@dataclasses.dataclass(frozen=True)
class TraceSettings:
    """The fixed probe of every Hessian trace: ``batch_size`` training images drawn with
    ``seed`` (the same images and Rademacher probes for every checkpoint), ``num_probes``
    probes; the trajectory probe runs every ``every_steps`` steps during training."""

    batch_size: int = 128
    num_probes: int = 10
    seed: int = 0
    every_steps: int = 100
    trajectory_probes: int = 10
    eigen_iterations: int = 20  # the flatness record's top eigenvalue (Lanczos steps)


def config_hash(config: ml_collections.ConfigDict, parent_hash: str | None = None) -> str:
    """10 hex digits of the SHA-256 of the config (sorted JSON, without the
    :data:`HASH_EXCLUDED_FIELDS`) and of the parent run's hash."""
    fields = config.to_dict()
    for dotted in HASH_EXCLUDED_FIELDS:
        *parents, leaf = dotted.split(".")
        block = fields
        for key in parents:
            block = block.get(key, {})
        block.pop(leaf, None)
    text = json.dumps({"config": fields, "parent": parent_hash}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def spec_hashes(specs: list[RunSpec]) -> dict[str, str]:
    """Every spec's :func:`config_hash` (its parent's hash included), in order; a parent must
    come before the runs that start from it."""
    hashes: dict[str, str] = {}
    for spec in specs:
        if spec.parent and spec.parent not in hashes:
            raise ValueError(f"run {spec.run_id!r} starts from {spec.parent!r}, which is not before it")
        hashes[spec.run_id] = config_hash(spec.config, hashes.get(spec.parent) if spec.parent else None)
    return hashes


def checkpoint_digest(saved: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of a checkpoint's ``params`` and ``model_state`` (every
    leaf's path, dtype, shape and bytes): which weights a run ended with, or started from."""
    digest = hashlib.sha256()
    tree = {"params": saved["params"], "model_state": saved.get("model_state", {})}
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(tree)[0], key=lambda kv: str(kv[0])):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


def archive_workdir(workdir: str, path: str) -> None:
    """Write ``workdir`` (its final checkpoint only, no lock or event files) to the
    ``.tar.gz`` ``path`` atomically, under the workdir's own name."""
    import tarfile

    from jaxquant.train.checkpoint import Checkpointer

    final = str(Checkpointer(os.path.join(workdir, "checkpoints")).latest_step())
    name = os.path.basename(workdir)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if len(parts) >= 3 and parts[1] == "checkpoints" and parts[2] != final:
            return None
        if parts[-1].startswith((".jaxquant", "events.out.tfevents")):
            return None
        info.mtime = 0
        return info

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with tarfile.open(f"{path}.tmp", "w:gz") as tar:
        tar.add(workdir, arcname=name, filter=keep)
    os.replace(f"{path}.tmp", path)


def write_json(path: str, value: Any) -> None:
    """Write ``value`` as JSON atomically (a temporary file renamed over ``path``)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters) for a results record."""
    first_line = (str(error).splitlines() or [""])[0][:300]
    return f"{type(error).__name__}: {first_line}"


def has_failure(record: dict[str, Any]) -> bool:
    """Whether the run, or the Hessian trace of its checkpoint, failed."""
    return record["status"] == FAILED or (record.get("trace") or {}).get("status") == FAILED


def probe_batch(split, size: int, seed: int) -> dict[str, np.ndarray]:
    """``size`` training examples drawn without replacement by ``seed``: the fixed probe batch."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(split), size=min(size, len(split)), replace=False))
    return split.batch(indices)


class FinishedRun:
    """A trained run loaded from its workdir (:func:`~jaxquant.train.setup.load_run`) and its
    test-set evaluation step, each made once on first use and shared by all its analyses."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir

    @functools.cached_property
    def loaded(self):
        from jaxquant.train.setup import load_run

        return load_run(self.workdir)

    @property
    def run(self):
        return self.loaded.run

    @property
    def saved(self) -> dict[str, Any]:
        """The final checkpoint: ``params``, ``model_state`` and the method's ``extra``."""
        return {**self.loaded.variables_dict, "extra": self.loaded.extra}

    @functools.cached_property
    def eval_step(self):
        from jaxquant.train.loop import make_eval_step

        return make_eval_step(self.run.ctx.model)

    def test_accuracy(self, params, model_state: dict[str, Any]) -> float:
        from jaxquant.train.loop import evaluate

        run, batch_size = self.run, self.config.data.eval_batch_size
        result = evaluate(self.eval_step, params, model_state, run.test_split, batch_size, run.mesh)
        return float(result["accuracy"])


def probe_inputs(finished: FinishedRun, settings: TraceSettings) -> tuple[dict, dict]:
    """``(variables, batches)`` of the run's final checkpoint and the fixed probe batch (with a
    leading batch-group axis), the inputs of every curvature record."""
    saved = finished.saved
    variables = {"params": saved["params"], **saved.get("model_state", {})}
    batch = probe_batch(finished.run.train_split, settings.batch_size, settings.seed)
    return variables, {key: value[None] for key, value in batch.items()}


def checkpoint_trace(finished: FinishedRun, settings: TraceSettings) -> dict:
    """The Hessian trace of the run's final checkpoint on the fixed probe batch."""
    variables, batches = probe_inputs(finished, settings)
    start = time.time()
    result = adapters.hessian_trace(
        finished.run.ctx.model, variables, batches, settings.num_probes, settings.seed
    )
    return {**result, "batch_size": int(len(batches["label"][0])), "wall_time_s": time.time() - start}


def checkpoint_flatness(finished: FinishedRun, settings: TraceSettings) -> dict:
    """The flatness record (:func:`~jaxquant.study.adapters.hessian_flatness`) of the run's
    final checkpoint on the fixed probe batch, with the same probes for every run."""
    variables, batches = probe_inputs(finished, settings)
    start = time.time()
    result = adapters.hessian_flatness(
        finished.run.ctx.model,
        variables,
        batches,
        settings.num_probes,
        settings.seed,
        settings.eigen_iterations,
    )
    return {**result, "batch_size": int(len(batches["label"][0])), "wall_time_s": time.time() - start}


def checkpoint_weight_clipping(finished: FinishedRun, settings: TraceSettings) -> dict:
    """The fraction of each layer's latent weights outside its grid in the run's final
    checkpoint (:func:`~jaxquant.study.adapters.weight_clipping`, a forward pass of the fixed
    probe batch); descriptive, beside the flatness record."""
    variables, batches = probe_inputs(finished, settings)
    return adapters.weight_clipping(finished.run.ctx.model, variables, batches["image"][0])


def start_and_teacher_accuracy(finished: FinishedRun) -> dict:
    """Test accuracy of a QAT run's starting point, the network its first step sees (init,
    ``init_from`` loaded, quantizers calibrated: rebuilt from the config), and, for a method
    with an EMA teacher, of that teacher in the run's final checkpoint."""
    from jaxquant.methods.common import TeacherMethod
    from jaxquant.models import split_variables
    from jaxquant.train.setup import create_train_state

    run = finished.run
    start = create_train_state(run)
    result = {"status": OK, "start_accuracy": finished.test_accuracy(start.params, start.model_state)}
    if isinstance(run.method, TeacherMethod) and run.method.ema_teacher(finished.config):
        teacher = split_variables(finished.saved["extra"]["teacher"])
        result["teacher_accuracy"] = finished.test_accuracy(*teacher)
    return result


BN_IMAGES = 2048


def bn_reestimated_accuracy(finished: FinishedRun, num_images: int = BN_IMAGES) -> dict[str, Any]:
    """Test accuracy of the run's final checkpoint after its BatchNorm statistics are
    re-estimated (:func:`~jaxquant.train.batchnorm.reestimate_batch_stats`) on ``num_images``
    clean training images drawn with ``config.seed``."""
    from jaxquant.data.pipeline import calibration_images
    from jaxquant.train.batchnorm import reestimate_batch_stats

    run, saved, seed = finished.run, finished.saved, finished.config.seed
    images = calibration_images(run.train_split, num_images, seed)
    model_state = reestimate_batch_stats(run.ctx.model, saved["params"], saved.get("model_state", {}), images)
    accuracy = finished.test_accuracy(saved["params"], model_state)
    return {"status": OK, "accuracy": accuracy, "num_images": int(len(images))}


class Study:
    """Runs ``specs`` in order under ``study_dir`` and keeps ``results_path`` up to date.

    ``header`` is stored at the top of the results file (the study's settings); its
    ``machine``, when it has one, goes into the record of every run this call trains;
    ``max_runs`` caps how many runs train in this call (the rest stay ``pending``).

    A run whose workdir is gone (a fresh checkout) but whose complete record, with the same
    config hash, is in the results file is taken from there and not trained again, unless a
    later run that still has to execute starts from it or its id is in ``keep_checkpoints``:
    then it trains again and its record says whether it reproduced the earlier weights (the
    earlier record goes to ``superseded_runs`` when not). A paired run's record holds the
    digest of the checkpoint it started from and is valid only while its parent has it. A
    spec with ``archive`` keeps its finished workdir in ``archive_dir``, restored when gone.
    ``after_run(records)`` is called after every run; the dict it returns updates the header.
    """

    def __init__(
        self,
        study_dir: str,
        specs: list[RunSpec],
        results_path: str,
        header: dict[str, Any],
        trace_settings: TraceSettings,
        max_runs: int | None = None,
        log: Callable[[str], None] = print,
        keep_checkpoints: Iterable[str] = (),
        after_run: Callable[[dict[str, dict[str, Any]]], dict[str, Any] | None] | None = None,
        archive_dir: str | None = None,
    ):
        ids = [spec.run_id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError("run ids of a study must be unique")
        self.study_dir = os.path.abspath(study_dir)
        self.specs = specs
        self.results_path = results_path
        self.header = header
        self.trace_settings = trace_settings
        self.max_runs = max_runs
        self.log = log
        self.after_run = after_run
        self.archive_dir = archive_dir
        self.records: dict[str, dict[str, Any]] = {}
        self.earlier, self.superseded = self.read_earlier_records()
        self.hashes = spec_hashes(specs)
        self.restore_archives()
        self.from_results_file = self.plan_reuse(set(keep_checkpoints))
        self.trained = 0

    def read_earlier_records(self) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """The records of the last call's results file, kept for the runs this call has not
        reached yet, so that a study killed early still reports everything known; and its
        ``superseded_runs``: earlier records of a run trained again to other weights."""
        if not os.path.exists(self.results_path):
            return {}, []
        with open(self.results_path) as f:
            content = json.load(f)
        records = {record["run_id"]: record for record in content.get("runs", [])}
        return records, list(content.get("superseded_runs", []))

    def archive_path(self, spec: RunSpec) -> str | None:
        if not (self.archive_dir and spec.archive):
            return None
        name = f"{spec.run_id}-{self.hashes[spec.run_id]}".replace("/", "_")
        return os.path.join(self.archive_dir, f"{name}.tar.gz")

    def restore_archives(self) -> None:
        """Unpack the archived workdir of every archived spec whose workdir is not finished here."""
        import tarfile

        for spec in self.specs:
            path = self.archive_path(spec)
            workdir = self.workdir(spec)
            if path and os.path.exists(path) and self.read_finished(spec, workdir) is None:
                shutil.rmtree(workdir, ignore_errors=True)
                os.makedirs(os.path.dirname(workdir), exist_ok=True)
                with tarfile.open(path) as tar:
                    tar.extractall(os.path.dirname(workdir), filter="data")
                self.log(f"[study] {spec.run_id}: workdir restored from {path}")

    def workdir(self, spec: RunSpec) -> str:
        return os.path.join(self.study_dir, f"{spec.run_id}-{self.hashes[spec.run_id]}")

    def run(self) -> list[dict[str, Any]]:
        """Execute or read back every spec; return the records (also written to the file)."""
        for position, spec in enumerate(self.specs, start=1):
            record = self.execute(spec)
            self.records[spec.run_id] = record
            progress = f" [{position} of {len(self.specs)}]"
            self.log(f"[study] {spec.run_id}: {record['status']}" + self.describe(record) + progress)
            if self.after_run is not None:
                self.header.update(self.after_run(self.records) or {})
            self.save()
        return list(self.records.values())

    @staticmethod
    def analysis_keys(spec: RunSpec) -> list[str]:
        """The measured analyses :meth:`complete_analyses` adds to ``spec``'s record (the
        loss-term ratios, read from the metrics when the workdir is there, and the weight
        clipping, added after the grid began, are not among them)."""
        keys = ["trace"] * spec.trace + ["flatness"] * spec.flatness
        return keys + ["bn_reestimated", "start"] * spec.qat_analyses + ["trajectory"] * spec.trajectory

    def is_complete(self, spec: RunSpec, record: dict[str, Any] | None) -> bool:
        """Whether ``record`` is a finished run of ``spec``'s config with every analysis."""
        if not record or record.get("status") != OK or record.get("config_hash") != self.hashes[spec.run_id]:
            return False
        return all((record.get(key) or {}).get("status") == OK for key in self.analysis_keys(spec))

    def is_reusable(
        self, spec: RunSpec, record: dict[str, Any] | None, parent: dict[str, Any] | None
    ) -> bool:
        """Complete, and for a paired run, started from the checkpoint ``parent`` ended with."""
        if not self.is_complete(spec, record):
            return False
        if not (spec.paired and spec.parent):
            return True
        started_from = record.get("parent_digest")
        return started_from is not None and started_from == (parent or {}).get("checkpoint_digest")

    def plan_reuse(self, keep_checkpoints: set[str]) -> set[str]:
        """The ids taken from the results file: complete there, finished in no workdir, and
        neither in ``keep_checkpoints`` nor the start of a run that will execute."""
        children: dict[str, list[str]] = {}
        for spec in self.specs:
            if spec.parent:
                children.setdefault(spec.parent, []).append(spec.run_id)
        here = {spec.run_id: self.read_finished(spec, self.workdir(spec)) for spec in self.specs}
        current = {run_id: record or self.earlier.get(run_id) for run_id, record in here.items()}
        executes: dict[str, bool] = {}
        reuse = set()
        for spec in reversed(self.specs):
            starts = children.get(spec.run_id, [])
            needed = spec.run_id in keep_checkpoints or any(executes[child] for child in starts)
            parent = current.get(spec.parent) if spec.parent else None
            if here[spec.run_id] is not None:
                executes[spec.run_id] = not self.is_complete(spec, here[spec.run_id])
            elif self.is_reusable(spec, self.earlier.get(spec.run_id), parent) and not needed:
                reuse.add(spec.run_id)
                executes[spec.run_id] = False
            else:
                executes[spec.run_id] = True
        return reuse

    @staticmethod
    def describe(record: dict[str, Any]) -> str:
        if record.get("message"):
            return f" ({record['message']})"
        if record.get("accuracy") is not None:
            return f" (accuracy {record['accuracy']:.4f})"
        return ""

    def save(self) -> None:
        """Write the header and the records: this call's specs in order, then the results
        file's records of runs outside them (an earlier stage's call must not drop a later
        stage's records, the only copy once the workdirs are gone)."""
        ids = [spec.run_id for spec in self.specs]
        known = [self.records.get(i) or self.earlier.get(i) for i in ids]
        known += [record for run_id, record in self.earlier.items() if run_id not in set(ids)]
        content = {**self.header, "runs": [r for r in known if r is not None]}
        if self.superseded:
            content["superseded_runs"] = self.superseded
        write_json(self.results_path, content)

    def base_record(self, spec: RunSpec) -> dict[str, Any]:
        return {
            "run_id": spec.run_id,
            "kind": spec.kind,
            **spec.labels,
            "config_hash": self.hashes[spec.run_id],
            "parent": spec.parent,
            "workdir": os.path.relpath(self.workdir(spec), self.study_dir),
        }

    def execute(self, spec: RunSpec) -> dict[str, Any]:
        record = self.base_record(spec)
        workdir = self.workdir(spec)
        finished = self.read_finished(spec, workdir)
        if finished is not None:
            self.log(f"[study] {spec.run_id}: finished earlier, read back from {workdir}")
            return self.keep_archive(spec, self.complete_analyses(spec, finished, workdir), workdir)
        parent = self.records.get(spec.parent) if spec.parent else None
        if spec.run_id in self.from_results_file:
            if self.is_reusable(spec, self.earlier[spec.run_id], parent):
                self.log(f"[study] {spec.run_id}: finished earlier, taken from {self.results_path}")
                return {**self.earlier[spec.run_id], **record}
            if parent is not None and parent["status"] == OK:
                self.log(f"[study] {spec.run_id}: its parent now has other weights; training again")
        if parent is not None and parent["status"] != OK:
            status = PENDING if parent["status"] == PENDING else UNAVAILABLE
            return {
                **record,
                "status": status,
                "message": f"skipped: depends on {spec.parent} ({parent['status']})",
            }
        if self.max_runs is not None and self.trained >= self.max_runs:
            return {**record, "status": PENDING, "message": "not run yet (max_runs reached)"}
        try:
            record.update(self.train(spec, workdir))
            self.trained += 1
        except Exception as error:  # noqa: BLE001 - one failed run must not end the study
            self.trained += 1
            traceback.print_exc()
            return {**record, "status": FAILED, "message": error_line(error)}
        finally:
            jax.clear_caches()
        if record["status"] == OK:
            earlier = self.earlier.get(spec.run_id)
            record = self.complete_analyses(spec, record, workdir)
            if self.is_complete(spec, earlier) and spec.kind == "train":
                same = record["accuracy"] == earlier["accuracy"]
                if earlier.get("checkpoint_digest"):
                    same = record["checkpoint_digest"] == earlier["checkpoint_digest"]
                record.update(reproduces_earlier_record=same, earlier_accuracy=earlier["accuracy"])
                if not same and earlier not in self.superseded:
                    self.superseded.append(earlier)
                write_json(os.path.join(workdir, RESULT_FILE), record)
            record = self.keep_archive(spec, record, workdir)
        return record

    def keep_archive(self, spec: RunSpec, record: dict[str, Any], workdir: str) -> dict[str, Any]:
        """Archive a finished run's workdir (:func:`archive_workdir`) if its spec asks for it."""
        path = self.archive_path(spec)
        if path and record.get("status") == OK and not os.path.exists(path):
            archive_workdir(workdir, path)
            self.log(f"[study] {spec.run_id}: workdir archived in {path}")
        return record

    def read_finished(self, spec: RunSpec, workdir: str) -> dict[str, Any] | None:
        path = os.path.join(workdir, RESULT_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            record = json.load(f)
        if record.get("config_hash") != self.hashes[spec.run_id] or record.get("status") != OK:
            return None
        return {**record, **self.base_record(spec)}

    def run_config(self, spec: RunSpec) -> ml_collections.ConfigDict:
        config = ml_collections.ConfigDict(spec.config.to_dict())
        config.name = spec.run_id
        if spec.parent:
            config.init_from = os.path.join(self.study_dir, self.records[spec.parent]["workdir"])
        return config

    def train(self, spec: RunSpec, workdir: str) -> dict[str, Any]:
        """Run the spec through ``run_mode`` in ``workdir`` (resuming); the record fields."""
        from jaxquant.modes import run_mode
        from jaxquant.train.checkpoint import Checkpointer

        config = self.run_config(spec)
        fields: dict[str, Any] = {}
        if spec.kind == "ptq":
            config = adapters.ptq_config(config, config.init_from, list(spec.ptq_bits))
        if spec.trajectory:
            every, probes = self.trace_settings.every_steps, self.trace_settings.trajectory_probes
            adapters.enable_trace_trajectory(config, every, probes)
        resumed_from = None
        if os.path.isdir(os.path.join(workdir, "checkpoints")) and spec.kind == "train":
            resumed_from = Checkpointer(os.path.join(workdir, "checkpoints")).latest_step()
        self.log(f"[study] {spec.run_id}: running in {workdir}")
        if spec.parent:
            fields["parent_digest"] = self.records[spec.parent].get("checkpoint_digest")
        start = time.time()
        summary = run_mode(config, workdir)
        fields["wall_time_s"] = time.time() - start
        fields["resumed_from_step"] = resumed_from
        if self.header.get("machine"):
            fields["machine"] = self.header["machine"]
        fields["method_config"] = spec.config.method.to_dict()
        if spec.kind == "ptq":
            ptq = adapters.read_ptq_report(workdir)
            if ptq["status"] != OK:
                return {"status": FAILED, "message": ptq["message"], **fields}
            fields["ptq"] = ptq
        else:
            fields.update(
                accuracy=summary["test_accuracy"], test_loss=summary["test_loss"], steps=summary["steps"]
            )
            if "validation_accuracy" in summary:
                fields["validation_accuracy"] = summary["validation_accuracy"]
        return {"status": OK, **fields}

    def complete_analyses(self, spec: RunSpec, record: dict[str, Any], workdir: str) -> dict[str, Any]:
        """Add the analyses that are missing or failed (e.g. the curvature tools arrived after
        the run trained): the Hessian trace, the flatness record, the weights outside the grid,
        the trajectory, and for QAT the accuracy after BatchNorm re-estimation and of the
        starting point; save the record as finished. A failed analysis is recorded and retried
        on the next call; the training is kept."""
        record = dict(record)
        finished, settings = FinishedRun(self.run_config(spec), workdir), self.trace_settings
        measures = []
        if spec.trace:
            measures.append(("trace", lambda: checkpoint_trace(finished, settings)))
        if spec.flatness:
            measures.append(("flatness", lambda: checkpoint_flatness(finished, settings)))
        if spec.qat_analyses:
            measures.append(("bn_reestimated", lambda: bn_reestimated_accuracy(finished)))
            measures.append(("start", lambda: start_and_teacher_accuracy(finished)))
        if spec.weight_clipping:
            measures.append(("weight_clipping", lambda: checkpoint_weight_clipping(finished, settings)))
        for key, measure in measures:
            if (record.get(key) or {}).get("status") == OK:
                continue
            try:
                record[key] = measure()
            except Exception as error:  # noqa: BLE001 - retried on the next call; training is kept
                traceback.print_exc()
                record[key] = {"status": FAILED, "message": error_line(error)}
        if spec.kind == "train" and "loss_terms" not in record:
            record["loss_terms"] = adapters.read_loss_term_ratios(workdir)
        if spec.trajectory and "trajectory" not in record:
            record["trajectory"] = adapters.read_trace_trajectory(workdir)
        if spec.kind == "train" and "checkpoint_digest" not in record:
            record["checkpoint_digest"] = checkpoint_digest(finished.saved)
        if spec.parent and record.get("parent_digest") is None:  # trained here, from this parent
            record["parent_digest"] = self.records[spec.parent].get("checkpoint_digest")
        write_json(os.path.join(workdir, RESULT_FILE), record)
        return record
