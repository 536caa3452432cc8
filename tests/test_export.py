"""``mode='export'``: the integer model's files, the integer evaluator's agreement with fake
quantization, PTQ export, bad input through the CLI, and TensorBoard event files.

Every QAT method's export is in ``test_method_checkpoints.py`` (it reuses those runs)."""

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import read_events, tiny_config

from jaxquant import parallel
from jaxquant.export import run_export
from jaxquant.export.integer import MANIFEST_FILE, TENSORS_FILE, pack_codes, unpack_codes
from jaxquant.ptq import run_ptq
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.metrics import MetricsWriter, read_metrics, scalar_tags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree_hash(folder: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def lsq_run(fp_digits_run, tmp_path_factory):
    """A 10-step LSQ W2A2 run from the FP fixture (TensorBoard on, the default)."""
    workdir = str(tmp_path_factory.mktemp("lsq_w2a2"))
    config = tiny_config(
        method__name="lsq",
        init_from=fp_digits_run,
        quant__w_bits=2,
        quant__a_bits=2,
        train__num_steps=10,
        train__log_every=5,
        train__bn_reestimate_images=64,
        optim__learning_rate=0.005,
    )
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def exported(lsq_run, tmp_path_factory):
    """``(export folder, summary, source hashes before, after)``: the run exported packed."""
    before = tree_hash(lsq_run)
    folder = str(tmp_path_factory.mktemp("lsq_export"))
    summary = run_export(tiny_config(mode="export", init_from=lsq_run, export__pack=True), folder)
    return folder, summary, before, tree_hash(lsq_run)


def read_manifest(folder):
    with open(os.path.join(folder, MANIFEST_FILE)) as f:
        return json.load(f)


def test_manifest_describes_every_layer(exported):
    folder, _, _, _ = exported
    manifest = read_manifest(folder)
    assert set(manifest["layers"]) == {"conv0", "conv1", "head"}
    assert manifest["batch_norm"]["handling"] == "float" and manifest["batch_norm"]["why"]
    assert set(manifest["batch_norms"]) == {"bn0", "bn1"}
    assert [op["op"] for op in manifest["graph"]][-2:] == ["global_mean", "dense"]
    bits = {name: layer["weight"]["bits"] for name, layer in manifest["layers"].items()}
    assert bits == {"conv0": 8, "conv1": 2, "head": 8}
    for layer in manifest["layers"].values():
        weight, quantizer = layer["weight"], layer["input"]
        assert weight["granularity"] == "channel" and weight["kind"] == "lsq"
        assert len(weight["step_values"]) == layer["kernel_shape"][-1] == len(weight["zero_point_values"])
        assert quantizer["granularity"] == "tensor" and quantizer["step"] > 0
        assert {"kind", "bits", "zero_point", "q_min", "q_max"} <= set(quantizer)
    assert manifest["layers"]["conv1"]["weight"]["packing"]["bits_per_code"] == 2
    assert manifest["layers"]["conv0"]["weight"]["packing"] is None


def test_tensors_load_without_jaxquant(exported):
    """Plain ``safetensors.numpy.load_file`` in a fresh interpreter that never imports jaxquant."""
    folder, _, _, _ = exported
    script = (
        "import sys, json; from safetensors.numpy import load_file; "
        f"t = load_file({os.path.join(folder, TENSORS_FILE)!r}); "
        "assert 'jaxquant' not in sys.modules; "
        "print(json.dumps({k: [str(v.dtype), list(v.shape)] for k, v in t.items()}))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", check=True)
    tensors = json.loads(out.stdout)
    manifest = read_manifest(folder)
    assert tensors["conv0.weight_codes"] == ["uint8", manifest["layers"]["conv0"]["kernel_shape"]]
    assert tensors["head.weight_codes"][0] == "uint8"
    packed_count = int(np.prod(manifest["layers"]["conv1"]["kernel_shape"]))
    assert tensors["conv1.weight_codes"] == ["uint8", [-(-packed_count // 4)]]  # four 2-bit codes a byte
    assert tensors["conv1.weight_step"] == ["float32", [manifest["layers"]["conv1"]["kernel_shape"][-1]]]


def test_integer_evaluation_agrees_with_fake_quantization(exported):
    _, summary, _, _ = exported
    agreement = summary["agreement"]
    assert agreement["test_images"] == 360
    assert agreement["agreement"] >= 0.999, agreement
    assert abs(agreement["integer_accuracy"] - agreement["fake_quant_accuracy"]) <= 0.001, agreement


def test_size_table_and_source_untouched(exported):
    folder, summary, before, after = exported
    with open(os.path.join(folder, "export_report.json")) as f:
        total = json.load(f)["sizes"][-1]
    assert total["tensor"] == "total" and 0 < total["int_bytes"] < total["fp32_bytes"] / 2
    assert "fp32_bytes" in summary["size_table"] and "2-bit packed" in summary["size_table"]
    assert before == after


@pytest.mark.parametrize("bits_per_code", [1, 2, 4])
def test_packing_round_trips(bits_per_code):
    codes = np.random.default_rng(0).integers(-3, 2**bits_per_code - 3, size=(3, 3, 5, 7))
    packed = pack_codes(codes, bits_per_code, -3)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits_per_code // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits_per_code, -3, list(codes.shape)), codes)


def test_ptq_run_exports_the_chosen_bit_setting(fp_digits_run, tmp_path):
    ptq_dir, export_dir = str(tmp_path / "ptq"), str(tmp_path / "export")
    config = tiny_config(mode="ptq", init_from=fp_digits_run, ptq__bits="8,4", ptq__calibration_images=64)
    config.train.bn_reestimate_images = 64
    run_ptq(config, ptq_dir)
    with pytest.raises(ValueError, match=r"export.bits is needed: .*\['w8a8', 'w4a4'\]"):
        run_export(tiny_config(mode="export", init_from=ptq_dir), export_dir)
    summary = run_export(tiny_config(mode="export", init_from=ptq_dir, export__bits="w4a4"), export_dir)
    assert summary["bits"] == "w4a4" and read_manifest(export_dir)["source"]["kind"] == "ptq"
    assert summary["agreement"]["agreement"] >= 0.999, summary["agreement"]


def test_bad_input_is_one_error_line_and_changes_nothing(fp_digits_run, lsq_run, tmp_path):
    """An FP run, a run without its checkpoint, a ViT run: ``jaxquant: error:``, exit status 2."""
    no_checkpoint, vit = tmp_path / "no_checkpoint", tmp_path / "vit"
    with open(os.path.join(lsq_run, "config.json")) as f:
        fields = json.load(f)
    for folder, model in ((no_checkpoint, "small_cnn"), (vit, "vit_micro")):
        folder.mkdir()
        (folder / "config.json").write_text(
            json.dumps({**fields, "model": {**fields["model"], "name": model}})
        )
    cases = {
        "fp": (fp_digits_run, "is a full-precision run (method 'fp'): nothing to export"),
        "no_checkpoint": (str(no_checkpoint), "cannot be loaded"),
        "vit": (str(vit), "model.name='vit_micro' is not supported by the integer evaluator"),
    }
    before = {name: tree_hash(source) for name, (source, _) in cases.items()}
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}

    def run(name):
        flags = [
            "--config.mode=export",
            f"--config.init_from={cases[name][0]}",
            f"--workdir={tmp_path / 'out' / name}",
        ]
        command = [sys.executable, "-m", "jaxquant.main", f"--config={REPO}/tests/cli_config.py", *flags]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)

    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(run, cases), strict=True))
    for name, result in results.items():
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("jaxquant: error: "), (name, result.stderr)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert tree_hash(cases[name][0]) == before[name]
        assert not os.path.exists(tmp_path / "out" / name / MANIFEST_FILE)


def test_tensorboard_events_hold_every_scalar_of_metrics_jsonl(lsq_run):
    expected = {}
    for record in read_metrics(os.path.join(lsq_run, "metrics.jsonl")):
        fields = {k: v for k, v in record.items() if k not in ("kind", "step", "time")}
        for tag, value in scalar_tags(record["kind"], fields).items():
            expected.setdefault(tag, []).append((record["step"], value))
    events = read_events(lsq_run)
    assert {"train/loss", "train/accuracy", "eval/accuracy"} <= set(expected)
    assert set(events) == set(expected)
    for tag, points in expected.items():
        assert [step for step, _ in events[tag]] == [step for step, _ in points], tag
        np.testing.assert_allclose(
            [v for _, v in events[tag]], [v for _, v in points], rtol=1e-6, err_msg=tag
        )


def test_curvature_records_become_scalars(tmp_path):
    writer = MetricsWriter(str(tmp_path / "metrics.jsonl"), tensorboard=True)
    writer.write(
        "curvature", 4, {"trace": 12.5, "num_probes": 3, "layer_traces": {"conv0": 1.5, "head": 2.0}}
    )
    writer.close()
    events = read_events(str(tmp_path))
    assert events == {
        "curvature/trace": [(4, 12.5)],
        "curvature/num_probes": [(4, 3.0)],
        "curvature/layer_traces/conv0": [(4, 1.5)],
        "curvature/layer_traces/head": [(4, 2.0)],
    }


def test_only_the_lead_process_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "is_lead_process", lambda: False)
    writer = MetricsWriter(str(tmp_path / "metrics.jsonl"), tensorboard=True)
    writer.write("train", 1, {"loss": 1.0})
    writer.close()
    assert os.listdir(tmp_path) == []
