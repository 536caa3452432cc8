"""``benchmarks/accelerator.py --quick`` runs on this CPU and writes every figure it prints."""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import accelerator  # noqa: E402


def test_quick_benchmark_measures_every_setting(tmp_path):
    out = tmp_path / "accelerator.json"
    result = accelerator.main(
        ["--quick", "--models", "small_cnn", "--rounds", "1", "--steps", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["backend"] == "cpu" and result["device_count"] >= 1
    settings = {(r["method"], r["dtype"]) for r in result["train_steps"]}
    assert settings == {(m, d) for m in ("fp", "lsq") for d in ("float32", "bfloat16")}
    for row in result["train_steps"]:
        assert row["images_per_s"] > 0 and row["batch"] == 8
        if row["flops_per_step"] is not None:  # XLA:CPU reports FLOPs; no peak is known for a CPU
            assert row["achieved_flops"] > 0 and row["peak_fraction"] is None
    assert result["hvp"]["hvp_over_step"] > 0
    assert result["scaling"]["speedup"] > 0 and result["scaling"]["devices"] == result["device_count"]
