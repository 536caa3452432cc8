"""``mode = 'export'``: a finished QAT or PTQ run as an integer model, checked by integer arithmetic.

The run is ``config.init_from`` (its workdir or checkpoints folder; the files go into the
workdir), or, without ``init_from``, the workdir itself (the files go into ``<workdir>/export``);
nothing of the source run is changed. A PTQ run (``mode = 'ptq'``) exports the bit setting
``export.bits`` (``""``: its only one) from the calibrated variables PTQ saved. Written:

* ``model.safetensors`` (``safetensors.numpy``; loads without jaxquant) and ``manifest.json``:
  the graph, per layer the integer weight codes (smallest integer dtype of the ``b``-bit grid,
  or packed below 8 bits with ``export.pack``), steps, zero points, bit widths, granularity and
  input quantizer, and how BatchNorm is handled (in float, not folded; the manifest says why);
  see :mod:`jaxquant.export.tensors`;
* ``export_report.json``: the size table (FP32 bytes against exported bytes) and, with
  ``export.evaluate``, the integer evaluator's test accuracy (:mod:`jaxquant.export.integer`,
  run from the two files) beside the fake-quantized evaluation of the same variables, the share
  of identical predictions and the largest logit difference.

An FP run, a run without a checkpoint, a PTQ run without saved variables and a model or
quantizer the evaluator does not cover are one-line errors before anything is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.numpy import save_file

from jaxquant import parallel
from jaxquant.data import load_splits
from jaxquant.export.graph import check_supported, model_graph
from jaxquant.export.integer import MANIFEST_FILE, TENSORS_FILE, IntegerModel
from jaxquant.export.tensors import BN_HANDLING, export_tensors, size_rows
from jaxquant.models import create_model
from jaxquant.ptq import load_variables, parse_bits, ptq_policy, read_report
from jaxquant.train.checkpoint import CheckpointError
from jaxquant.train.loop import write_config
from jaxquant.train.metrics import format_table
from jaxquant.train.setup import as_tuples, init_from_errors, load_run, read_run_config, run_workdir

REPORT_FILE = "export_report.json"
FORMAT = "jaxquant-integer-export"
SIZE_COLUMNS = ["tensor", "bits", "storage", "fp32_bytes", "int_bytes"]
AGREEMENT_COLUMNS = ["bits", "fake_quant_accuracy", "integer_accuracy", "agreement", "max_logit_diff"]


def source_and_output(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """``(source run workdir, output folder)``."""
    if config.init_from:
        return run_workdir(config.init_from), workdir
    return run_workdir(workdir), os.path.join(workdir, "export")


def ptq_source(source: str, ptq_config: ml_collections.ConfigDict, bits: str):
    """``(model, variables, test split, label, description)`` of one bit setting of a PTQ run."""
    report = read_report(source)
    labels = [row["bits"] for row in report["results"]]
    if not bits and len(labels) > 1:
        raise ValueError(f"export.bits is needed: the PTQ run {source!r} has the bit settings {labels}")
    settings = parse_bits(bits or labels[0], "export.bits")
    if len(settings) != 1 or settings[0].label not in labels:
        raise ValueError(f"export.bits={bits!r} is not one bit setting of the PTQ run: choose from {labels}")
    setting = settings[0]
    row = report["results"][labels.index(setting.label)]
    if "variables" not in row or not os.path.exists(os.path.join(source, row["variables"])):
        raise CheckpointError(
            f"the PTQ run {source!r} saved no calibrated variables for {setting.label}: run mode=ptq again"
        )
    _, test_split = load_splits(ptq_config.data.source, ptq_config.data.name, ptq_config.data.data_dir)
    policy = ptq_policy(ptq_config, setting)
    model = create_model(
        report["model"], test_split.num_classes, policy, **as_tuples(report.get("model_kwargs", {}))
    )
    variables = jax.tree_util.tree_map(jnp.asarray, load_variables(source, row["variables"]))
    description = {"kind": "ptq", "method": f"ptq:{report['observer']}", "step": report["checkpoint_step"]}
    return model, variables, test_split, setting.label, report["model"], description


def qat_source(source: str):
    """``(model, variables, test split, label, description)`` of a QAT run's latest checkpoint."""
    with init_from_errors(source):
        loaded = load_run(source)
    config = loaded.config
    if not loaded.quantized:
        raise ValueError(
            f"{source!r} is a full-precision run (method {config.method.name!r}): nothing to export; "
            "export a QAT run or a PTQ run of it"
        )
    label = f"w{config.quant.w_bits}a{config.quant.a_bits}"
    description = {"kind": "qat", "method": config.method.name, "step": int(loaded.step)}
    return loaded.model, loaded.variables, loaded.run.test_split, label, config.model.name, description


def load_source(config: ml_collections.ConfigDict, source: str):
    with init_from_errors(source):
        source_config = read_run_config(source)
    if source_config.mode == "ptq":
        check_supported(read_report(source)["model"])
        return ptq_source(source, source_config, str(config.export.bits))
    if source_config.mode != "train":
        raise ValueError(f"{source!r} is a mode={source_config.mode!r} run: export a QAT or PTQ run")
    check_supported(source_config.model.name)
    return qat_source(source)


def test_batches(split, batch_size: int):
    """``(images, labels)`` of the whole split in order, ``batch_size`` at a time."""
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(start + batch_size, len(split))))
        yield batch["image"], batch["label"]


def compare(fake_forward, integer_model: IntegerModel, split, batch_size: int) -> dict[str, Any]:
    """Accuracy of both evaluations, the share of equal predictions and ``max |Δ logit|``."""
    fake_correct = integer_correct = agree = 0
    max_diff = 0.0
    for images, labels in test_batches(split, batch_size):
        fake = np.asarray(fake_forward(jnp.asarray(images)))
        integer = np.asarray(integer_model(jnp.asarray(images)))
        fake_correct += int(np.sum(fake.argmax(-1) == labels))
        integer_correct += int(np.sum(integer.argmax(-1) == labels))
        agree += int(np.sum(fake.argmax(-1) == integer.argmax(-1)))
        max_diff = max(max_diff, float(np.max(np.abs(fake - integer))))
    count = len(split)
    return {
        "fake_quant_accuracy": fake_correct / count,
        "integer_accuracy": integer_correct / count,
        "agreement": agree / count,
        "max_logit_diff": max_diff,
        "test_images": count,
    }


def write_export(output: str, tensors, manifest) -> None:
    """Both files into ``output``, each written beside and renamed into place."""
    os.makedirs(output, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output) as scratch:
        save_file(tensors, os.path.join(scratch, TENSORS_FILE))
        with open(os.path.join(scratch, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
        for name in (TENSORS_FILE, MANIFEST_FILE):
            os.replace(os.path.join(scratch, name), os.path.join(output, name))


def run_export(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Export the run (module docstring); return the summary with both tables."""
    source, output = source_and_output(config, workdir)
    model, variables, test_split, label, model_name, description = load_source(config, source)
    graph = model_graph(model, model_name, test_split.image_shape)
    images = jnp.asarray(next(test_batches(test_split, config.data.eval_batch_size))[0])
    tensors, layers, batch_norms = export_tensors(model, variables, graph, images, bool(config.export.pack))
    manifest = {
        "format": FORMAT,
        "version": 1,
        "tensors_file": TENSORS_FILE,
        "source": {"workdir": source, "model": model_name, "bits": label, **description},
        "input": {
            "shape": list(test_split.image_shape),
            "layout": "NHWC",
            "note": "normalised as in training",
        },
        "num_classes": int(test_split.num_classes),
        "batch_norm": BN_HANDLING,
        "float_ops": ["batch_norm", "relu", "add", "max_pool", "global_mean", "logits"],
        "packing": "lsb-first k-bit fields" if config.export.pack else None,
        "layers": layers,
        "batch_norms": batch_norms,
        "graph": graph.ops,
    }
    rows = size_rows(tensors, layers, batch_norms)
    size_table = format_table(rows, SIZE_COLUMNS)
    report = {"source": manifest["source"], "sizes": rows}
    if parallel.is_lead_process():
        write_config(config, output)
        write_export(output, tensors, manifest)
    print(f"[{config.name}] exported {source} ({label}) to {output}\n\n{size_table}", flush=True)
    summary = {"name": config.name, "export": output, "size_table": size_table, "bits": label}
    if config.export.evaluate:
        fake_forward = jax.jit(lambda x: model.apply(variables, x, train=False))
        agreement = {"bits": label, **compare(fake_forward, IntegerModel(output), test_split, 256)}
        shown = {**agreement, "agreement": f"{100 * agreement['agreement']:.2f}"}
        table = format_table([shown], AGREEMENT_COLUMNS)
        print("\n" + table, flush=True)
        report["evaluation"] = agreement
        summary.update(agreement=agreement, table=table)
    if parallel.is_lead_process():
        with open(os.path.join(output, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
    return summary


__all__ = ["IntegerModel", "run_export"]
