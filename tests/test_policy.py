"""Quantization policy: roles, per-channel axes, enum errors, and min/max calibration."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.methods import policy_from_config
from jaxquant.models import create_model
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.layers import QConv, QDense, Quantizer
from jaxquant.quant.policy import QuantizerSpec, QuantPolicy

POLICY = QuantPolicy(w_bits=2, a_bits=3)


def test_first_and_last_layer_at_8_bits_middle_at_policy_bits():
    first, middle, last = (POLICY.layer(role) for role in ("first", "middle", "last"))
    assert (first.weight.bits, first.input.bits) == (8, 8)
    assert (last.weight.bits, last.input.bits) == (8, 8)
    assert (middle.weight.bits, middle.input.bits) == (2, 3)


def test_group_protocol_defaults():
    """methods.md §0: asymmetric, weights per output channel, activations per tensor, min/max."""
    middle = POLICY.layer("middle")
    assert middle.weight.channel_axis == -1 and middle.input.channel_axis is None
    assert not middle.weight.symmetric and not middle.weight.signed and not middle.input.signed
    assert middle.weight.init == middle.input.init == "minmax"


def test_full_precision_policy_has_no_quantizers():
    layer = QuantPolicy().layer("middle")
    assert layer.weight is None and layer.input is None
    assert not QuantPolicy().quantizes


def test_first_last_bits_none_keeps_policy_bits_everywhere():
    policy = QuantPolicy(w_bits=4, a_bits=4, first_last_bits=None)
    assert policy.layer("first").weight.bits == policy.layer("last").input.bits == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weight_granularity", "row"),
        ("act_granularity", "pixel"),
        ("scheme", "affine"),
        ("init", "percentile"),
    ],
)
def test_unknown_enum_value_is_a_one_line_error_naming_the_field(field, value):
    config = tiny_config(**{f"quant__{field}": value})
    with pytest.raises(ValueError) as error:
        policy_from_config(config)
    message = str(error.value)
    assert f"quant.{field}={value!r}" in message and "choose one of" in message
    assert "\n" not in message


@pytest.mark.parametrize(("field", "value"), [("w_bits", 0), ("a_bits", 17), ("first_last_bits", 0)])
def test_bits_out_of_range_name_the_field(field, value):
    expected = rf"quant\.{field}={value} is out of range: allowed integers 1\.\.16"
    with pytest.raises(ValueError, match=expected):
        policy_from_config(tiny_config(**{f"quant__{field}": value}))


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="layer role='hidden'"):
        POLICY.layer("hidden")


def init_layer(layer, x):
    """The variables' shapes (abstract init: nothing is compiled)."""
    return jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), x))


@pytest.mark.parametrize(("granularity", "expected"), [("channel", (1, 1, 1, 8)), ("tensor", ())])
def test_conv_weight_step_shape(granularity, expected):
    """Conv kernels are HWIO: per output channel means axis -1, step shape (1, 1, 1, Cout)."""
    quant = QuantPolicy(w_bits=4, a_bits=4, weight_granularity=granularity).layer("middle")
    variables = init_layer(QConv(8, (3, 3), quant=quant), jnp.ones((2, 6, 6, 3)))
    assert variables["params"]["weight_quant"]["step"].shape == expected
    assert variables["quant_state"]["weight_quant"]["zero_point"].shape == expected
    assert variables["params"]["input_quant"]["step"].shape == ()


@pytest.mark.parametrize(("granularity", "expected"), [("channel", (1, 1, 1, 5)), ("tensor", ())])
def test_activation_step_shape(granularity, expected):
    quant = QuantPolicy(w_bits=4, a_bits=4, act_granularity=granularity).layer("middle")
    variables = init_layer(QConv(8, (3, 3), quant=quant), jnp.ones((2, 6, 6, 5)))
    assert variables["params"]["input_quant"]["step"].shape == expected


def test_dense_weight_step_is_per_output_unit():
    quant = QuantPolicy(w_bits=4, a_bits=4).layer("last")
    variables = init_layer(QDense(7, quant=quant), jnp.ones((2, 12)))
    assert variables["params"]["weight_quant"]["step"].shape == (1, 7)


def test_weight_channel_axis_of_a_layer_is_configurable():
    assert POLICY.layer("middle", weight_channel_axis=0).weight.channel_axis == 0


def test_spec_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits=0"):
        QuantizerSpec(bits=0, signed=False)


def expected_minmax_step(tensor, axes, bits):
    """methods.md §0: ``s = (max − min)/(2^b − 1)`` over a range widened to contain 0."""
    lo = np.minimum(np.min(tensor, axis=axes), 0.0)
    hi = np.maximum(np.max(tensor, axis=axes), 0.0)
    return (hi - lo) / (2**bits - 1)


def test_calibrate_sets_steps_from_data():
    """After ``calibrate``: weight steps = per-output-channel min/max of the kernel; input steps =
    min/max of what the layer sees; the first layer at 8 bits, the middle one at w_bits/a_bits."""
    model = create_model("small_cnn", 10, QuantPolicy(w_bits=3, a_bits=2), widths=(4, 6))
    images = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, (16, 8, 8, 1)), jnp.float32)
    init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 1)))
    calibrated = calibrate(model, init, images)
    params, state = calibrated["params"], calibrated["quant_state"]

    conv1_kernel = np.asarray(params["conv1"]["kernel"])
    np.testing.assert_allclose(
        params["conv1"]["weight_quant"]["step"].reshape(-1),
        expected_minmax_step(conv1_kernel, (0, 1, 2), 3),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        params["conv0"]["weight_quant"]["step"].reshape(-1),
        expected_minmax_step(np.asarray(params["conv0"]["kernel"]), (0, 1, 2), 8),
        rtol=1e-5,
    )
    head = np.asarray(params["head"]["kernel"])
    np.testing.assert_allclose(
        params["head"]["weight_quant"]["step"].reshape(-1), expected_minmax_step(head, 0, 8), rtol=1e-5
    )
    # the first layer's input is the image batch itself (8 bits)
    np.testing.assert_allclose(
        params["conv0"]["input_quant"]["step"], expected_minmax_step(np.asarray(images), None, 8), rtol=1e-5
    )
    lo = min(float(images.min()), 0.0)
    first_step = float(params["conv0"]["input_quant"]["step"])
    assert float(state["conv0"]["input_quant"]["zero_point"]) == np.round(-lo / first_step)
    # the middle conv sees relu(bn(conv0 output)) (BN at its initial running statistics):
    # z = 0 and s = max/(2^a − 1)
    _, taps = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(calibrated, images)
    seen = np.maximum(np.asarray(taps["intermediates"]["conv0"]["conv_out"][0]) / np.sqrt(1 + 1e-5), 0.0)
    assert float(state["conv1"]["input_quant"]["zero_point"]) == 0.0
    np.testing.assert_allclose(params["conv1"]["input_quant"]["step"], seen.max() / 3, rtol=1e-4)


def quantizer_bits(model, image_shape):
    """``{module path: bits}`` of every quantizer in ``model``, from an abstract (traced) init."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Quantizer):
            seen["/".join(context.module.path)] = context.module.spec.bits
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, *image_shape))))
    return seen


@pytest.mark.parametrize(
    ("name", "middle_layers"),
    [("resnet20", 3 * 3 * 2 + 2), ("resnet18", 4 * 2 * 2 + 3)],  # 2 convs per block + projections
)
def test_resnet_stem_and_head_at_8_bits_every_other_layer_at_policy_bits(name, middle_layers):
    bits = quantizer_bits(create_model(name, 10, QuantPolicy(w_bits=2, a_bits=3)), (8, 8, 3))
    edge = {k: v for k, v in bits.items() if k.startswith(("stem/", "head/"))}
    assert edge == {f"{m}/{q}": 8 for m in ("stem", "head") for q in ("input_quant", "weight_quant")}
    middle = {k: v for k, v in bits.items() if k not in edge}
    assert len(middle) == 2 * middle_layers
    assert {v for k, v in middle.items() if k.endswith("weight_quant")} == {2}
    assert {v for k, v in middle.items() if k.endswith("input_quant")} == {3}
