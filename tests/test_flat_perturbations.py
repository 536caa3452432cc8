"""FPQ's SFP inside the quantized layers: conv inputs only, training only, after or before
the input quantizer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.quant.layers import QConv, QDense
from jaxquant.quant.perturbations import FeatureNoise
from jaxquant.quant.policy import QuantPolicy

X = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 1))


def identity_layer(layer_cls, position):
    """A 1→1 layer with kernel 1 and FP weights: its output is its (quantized, perturbed) input."""
    policy = QuantPolicy(a_bits=4, first_last_bits=None, perturbation=FeatureNoise(1.0, "layer", position))
    kwargs = {"kernel_size": (1, 1)} if layer_cls is QConv else {"use_bias": False}
    return layer_cls(1, quant=policy.layer("middle"), kernel_init=nn.initializers.ones, **kwargs)


def run(layer, train):
    variables = layer.init(jax.random.PRNGKey(1), X)
    out = layer.apply(variables, X, train=train, rngs={"noise": jax.random.PRNGKey(2)})
    return variables, np.asarray(out)


@pytest.mark.parametrize("position", ["after_quant", "before_quant"])
def test_sfp_is_off_in_eval_mode(position):
    layer = identity_layer(QConv, position)
    variables, out = run(layer, train=False)
    plain = QConv(1, (1, 1), quant=QuantPolicy(a_bits=4, first_last_bits=None).layer("middle"))
    np.testing.assert_array_equal(out, np.asarray(plain.apply(variables, X)))


def test_sfp_after_quant_adds_bounded_noise_to_the_quantized_input():
    layer = identity_layer(QConv, "after_quant")
    variables, clean = run(layer, train=False)
    _, noisy = run(layer, train=True)
    step = float(variables["params"]["input_quant"]["step"])
    delta = noisy - clean
    assert np.all(delta != 0) and np.abs(delta).max() <= step / 2 + 1e-6


def test_sfp_before_quant_perturbs_the_input_of_the_quantizer():
    layer = identity_layer(QConv, "before_quant")
    variables, clean = run(layer, train=False)
    _, noisy = run(layer, train=True)
    step = float(variables["params"]["input_quant"]["step"])
    grid = noisy / step
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)  # still on the quantization grid
    assert np.any(noisy != clean)  # some inputs crossed a rounding boundary
    assert np.abs(noisy - clean).max() <= step + 1e-6


def test_sfp_leaves_dense_layers_alone():
    layer = identity_layer(QDense, "after_quant")
    _, clean = run(layer, train=False)
    _, trained = run(layer, train=True)
    np.testing.assert_array_equal(clean, trained)


def test_feature_noise_checks_its_fields():
    with pytest.raises(ValueError, match=r"method.position='middle'.*\['after_quant', 'before_quant'\]"):
        FeatureNoise(0.1, "layer", "middle")
    with pytest.raises(ValueError, match="method.p=1.5 is a probability"):
        FeatureNoise(1.5)
    assert jnp.array_equal(FeatureNoise().perturb_weight(None, X, True), X)
