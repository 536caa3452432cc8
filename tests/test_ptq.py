"""Post-training quantization: bits parsing, errors, and 8-bit PTQ of the FP digits run."""

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_config

from jaxquant.modes import run_mode
from jaxquant.ptq import BitSetting, parse_bits, read_report
from jaxquant.train.checkpoint import CheckpointError


def test_parse_bits():
    assert parse_bits("8,6,4,3") == [BitSetting(8, 8), BitSetting(6, 6), BitSetting(4, 4), BitSetting(3, 3)]
    assert parse_bits("w4a8, 2") == [BitSetting(4, 8), BitSetting(2, 2)]
    assert parse_bits(4) == [BitSetting(4, 4)]
    assert parse_bits("W2A4")[0].label == "w2a4"


@pytest.mark.parametrize(
    ("bits", "message"),
    [
        ("8,17", r"ptq.bits=17 is out of range: allowed integers 1..16"),
        ("0", r"ptq.bits=0 is out of range"),
        ("w4a-1", r"ptq.bits=-1 is out of range"),
        ("8,four", r"entry 'four' is neither a bit width nor 'w<b>a<b>'"),
        (",", r"is empty"),
    ],
)
def test_bad_bits_are_one_line_errors(bits, message, tmp_path):
    config = tiny_config(mode="ptq", init_from=str(tmp_path), ptq__bits=bits)
    with pytest.raises(ValueError, match=message):
        run_mode(config, str(tmp_path / "ptq"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "no_such_run")
    with pytest.raises(CheckpointError, match="checkpoint '.*no_such_run' does not exist"):
        run_mode(tiny_config(mode="ptq", init_from=missing), str(tmp_path / "ptq"))
    with pytest.raises(ValueError, match="mode='ptq' needs --config.init_from"):
        run_mode(tiny_config(mode="ptq"), str(tmp_path / "ptq"))


def test_cli_reports_bad_ptq_input_in_one_line(tmp_path):
    command = [
        sys.executable, "-m", "jaxquant.main", "--config", "configs/ptq_digits.py",
        "--workdir", str(tmp_path), f"--config.init_from={tmp_path / 'nothing'}", "--config.ptq.bits=8,20",
    ]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "jaxquant: error: ptq.bits=20 is out of range: allowed integers 1..16"


def test_ptq_8_bits_is_within_one_point_of_fp_as_a_pipeline_stage(fp_digits_run, tmp_path):
    config = tiny_config(mode="pipeline")
    # without re-estimation the FP row is the FP run's own evaluation
    ptq = {"bits": "8", "bn_reestimate": False}
    config.stages = {"ptq": {"mode": "ptq", "init_from": fp_digits_run, "ptq": ptq}}
    summary = run_mode(config, str(tmp_path))
    report = read_report(str(tmp_path / "ptq"))
    with open(os.path.join(fp_digits_run, "summary.json")) as f:
        fp_accuracy = json.load(f)["test_accuracy"]
    assert report["fp_accuracy"] == pytest.approx(fp_accuracy)
    (result,) = report["results"]
    assert result["bits"] == "w8a8" and result["observer"] == "minmax"
    assert abs(result["ptq_accuracy"] - fp_accuracy) <= 0.01
    steps = result["step_sizes"]
    assert len(steps["conv0/weight_quant"]) == 16  # per output channel of the first conv
    assert isinstance(steps["conv1/input_quant"], float) and steps["conv1/input_quant"] > 0
    assert report["calibration_images"] == 256 and report["bn_reestimate"] is False
    (row,) = summary["stages"]
    assert row["method"] == "ptq:minmax" and row["w_bits"] == 8 and row["steps"] == 200
    assert "w8a8_accuracy" in summary["table"]
