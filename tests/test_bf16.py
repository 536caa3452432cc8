"""``model.compute_dtype = bfloat16``: convs and matmuls in bfloat16 on the quantizers' exact
integer codes, everything else (parameters, optimiser, BatchNorm, quantizers, curvature) in
float32; a digits run trains to within a point of float32."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant import curvature
from jaxquant.methods import get_method
from jaxquant.models import create_model
from jaxquant.quant import quantizers as qz
from jaxquant.quant.layers import QConv, Quantizer, compute_operand
from jaxquant.quant.policy import QuantizerSpec, QuantPolicy
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.setup import build_run, create_train_state


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_bfloat16_operands_are_the_float32_integer_codes(bits):
    x = jax.random.normal(jax.random.PRNGKey(bits), (64, 5, 5, 3)) * 2.0
    spec = QuantizerSpec(bits=bits, signed=False, kind="lsq")
    quantizer = Quantizer(spec, is_activation=True)
    variables = quantizer.init(jax.random.PRNGKey(0), x)
    x_hat, step = quantizer.apply(variables, x)
    operand, scale = compute_operand(x_hat, step, "bfloat16")
    assert operand.dtype == jnp.bfloat16 and scale is step
    zero = variables["quant_state"]["zero_point"]
    codes = qz.quantize_to_int(x, step, zero, 0, 2**bits - 1) - zero
    np.testing.assert_array_equal(np.asarray(operand, np.float32), np.asarray(codes))
    assert float(jnp.max(jnp.abs(codes))) <= 2**bits - 1  # on the b-bit grid


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_a_quantized_conv_in_bfloat16_equals_float32(bits):
    """Integer operands and float32 accumulation: the same result up to summation order."""
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 9, 9, 16))
    f32 = QuantPolicy(w_bits=bits, a_bits=bits, first_last_bits=None)
    layer = QConv(32, quant=f32.layer("middle"))
    variables = layer.init(jax.random.PRNGKey(1), x)
    variables = jax.jit(lambda v: layer.apply(v, x, mutable=["params", "quant_state"])[1])(variables)
    want = layer.apply(variables, x)
    bf16 = QConv(32, quant=dataclasses.replace(f32, compute_dtype="bfloat16").layer("middle"))
    got = bf16.apply(variables, x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max())
    )
    plain = QConv(32, quant=dataclasses.replace(QuantPolicy(), compute_dtype="bfloat16").layer("middle"))
    fp_variables = {"params": variables["params"]}
    assert not np.allclose(plain.apply(fp_variables, x), QConv(32).apply(fp_variables, x), rtol=1e-6, atol=0)


def test_a_bfloat16_run_keeps_float32_state_and_trains_within_a_point(fp_digits_run, tmp_path):
    accuracies = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(method__name="lsq", init_from=fp_digits_run, train__num_steps=60)
        config.model.compute_dtype = dtype
        config.train.bn_reestimate_images = 256
        accuracies[dtype] = train_and_evaluate(config, str(tmp_path / dtype))["test_accuracy"]
    assert abs(accuracies["bfloat16"] - accuracies["float32"]) <= 0.01, accuracies
    run = build_run(config)
    assert run.policy.compute_dtype == "bfloat16"
    state = create_train_state(run)
    dtypes = {
        leaf.dtype for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state, state.model_state))
    }
    assert dtypes <= {jnp.dtype("float32"), jnp.dtype("int32")}


def test_curvature_is_measured_in_float32():
    config = tiny_config(method__name="lsq")
    policy = get_method("lsq").policy(config)
    images = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 8, 8, 1))
    batches = {"image": images, "label": jnp.zeros((1, 32), jnp.int32)}
    traces = []
    for dtype in ("float32", "bfloat16"):
        model = create_model("small_cnn", 10, dataclasses.replace(policy, compute_dtype=dtype), widths=(4, 8))
        variables = jax.jit(lambda r, m=model: m.init(r, images[0], train=False))(jax.random.PRNGKey(0))
        loss_fn, params, data = curvature.model_objective(model, variables, batches)
        estimate = curvature.hutchinson_trace(
            loss_fn, params, data, jax.random.PRNGKey(1), num_probes=2, log=None
        )
        traces.append(float(estimate.trace))
    assert traces[0] == traces[1]


def test_an_unknown_compute_dtype_is_a_one_line_error():
    config = tiny_config()
    config.model.compute_dtype = "float16"
    with pytest.raises(ValueError, match="model.compute_dtype='float16' is not allowed"):
        build_run(config)
