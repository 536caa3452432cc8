"""Vision transformers: structure, quantizer placement, DNQ training and PTQ."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from jaxquant.defaults import get_config
from jaxquant.methods.base import policy_from_config
from jaxquant.methods.dnq import method_config
from jaxquant.models import create_model
from jaxquant.modes import run_mode
from jaxquant.ptq import read_report
from jaxquant.train.loop import train_and_evaluate

TINY_VIT = {"hidden": 16, "depth": 1, "heads": 2}


def test_vit_quantizers_follow_the_policy_and_fields():
    policy = policy_from_config(get_config())  # W4A4, first/last 8 bits
    images = jnp.zeros((2, 8, 8, 1))

    def shapes(model, **apply_kwargs):  # traced only, nothing runs
        variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
        return variables, jax.eval_shape(lambda v: model.apply(v, images, **apply_kwargs), variables)

    model = create_model("vit_micro", 10, policy, **TINY_VIT)
    variables, (logits, taps) = shapes(model, mutable=["intermediates"])
    block = variables["quant_state"]["block0"]
    assert set(block) == {"qkv", "proj", "fc1", "fc2", "norm1_quant", "norm2_quant", "attention_quant"}
    assert variables["quant_state"]["patch_embed"]["weight_quant"]["zero_point"].shape[-1] == 16
    assert model.policy.layer("first").weight.bits == 8 and model.policy.layer("middle").weight.bits == 4
    assert logits.shape == (2, 10) and taps["intermediates"]["features"][0].shape == (2, 16)

    fields_off = dict(quantize_norm_inputs=False, quantize_attention=False, **TINY_VIT)
    variables, _ = shapes(create_model("vit_micro", 10, policy, **fields_off))
    assert set(variables["quant_state"]["block0"]) == {"qkv", "proj", "fc1", "fc2"}
    variables, _ = shapes(create_model("vit_micro", 10, **TINY_VIT))
    assert "quant_state" not in variables


def test_vit_trains_with_dnq_and_ptq_runs_on_it(tmp_path):
    config = tiny_config(model__name="vit_micro", optim__name="adamw", optim__learning_rate=3e-3)
    config.model.kwargs = TINY_VIT
    config.method = method_config()
    config.train.num_steps = 10
    summary = train_and_evaluate(config, str(tmp_path / "dnq"))
    assert summary["steps"] == 10 and np.isfinite(summary["test_loss"])

    config.mode = "ptq"
    config.init_from = str(tmp_path / "dnq")
    config.ptq.bits = "4"
    config.ptq.calibration_images = 64
    result = run_mode(config, str(tmp_path / "ptq"))
    (row,) = read_report(str(tmp_path / "ptq"))["results"]
    assert row["bits"] == "w4a4" and 0.0 <= row["ptq_accuracy"] <= 1.0
    assert result["fp_accuracy"] == summary["test_accuracy"]
    steps = row["step_sizes"]
    for name in (
        "block0/qkv/weight_quant",
        "block0/attention_quant",
        "block0/norm1_quant",
        "head/input_quant",
    ):
        assert np.all(np.asarray(steps[name]) > 0), name
    assert len(steps["block0/qkv/weight_quant"]) == 3 * TINY_VIT["hidden"]
