"""MobileNetV1/V2 (and ResNet-50) build, quantize every conv, sow features and run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxquant.models import create_model
from jaxquant.models.mobilenet import scaled_channels
from jaxquant.quant.policy import QuantPolicy

POLICY = QuantPolicy(w_bits=4, a_bits=4, weight_kind="dorefa", act_kind="pact", first_last_kind="lsq")


def test_scaled_channels_rounds_to_multiples_of_eight():
    assert [scaled_channels(c, 0.25) for c in (32, 24, 16, 1280)] == [8, 8, 8, 320]
    assert scaled_channels(96, 0.75) == 72 and scaled_channels(32, 1.0) == 32


@pytest.mark.parametrize("name, depthwise", [("mobilenet_v1", 13), ("mobilenet_v2", 17)])
def test_mobilenet_runs_quantized_at_small_width(name, depthwise):
    model = create_model(name, 10, POLICY, width_multiplier=0.25)
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    init = jax.jit(lambda x: model.init_with_output(jax.random.PRNGKey(1), x, train=True, mutable=True))
    logits, variables = init(images)  # one compile: init and a training-mode forward pass
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    features = variables["intermediates"]["features"][0]
    assert features.shape[0] == 2 and features.shape[1] == (1024 // 4 if name == "mobilenet_v1" else 1280)

    kernels = {
        "/".join(k.key for k in path[:-1]): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
        if path[-1].key == "kernel"
    }
    dw = [shape for shape in kernels.values() if len(shape) == 4 and shape[2] == 1 and shape[3] > 1]
    assert len(dw) == depthwise  # one (3, 3, 1, C) kernel per depthwise conv
    assert all(shape[:2] == (3, 3) for shape in dw)
    alphas = [p for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"]) if p[-1].key == "alpha"]
    assert len(alphas) == len(kernels) - 2  # PACT on every input but the stem's and the head's
    stem_quant = variables["params"]["stem"]["conv"]["input_quant"]
    assert set(stem_quant) == {"step"}  # first layer: LSQ 8-bit on the signed image


def test_resnet50_shapes():
    model = create_model("resnet50", 100, POLICY)

    def build():
        x = jnp.zeros((2, 32, 32, 3))
        variables = model.init(jax.random.PRNGKey(0), x)
        return variables, model.apply(variables, x, mutable=["intermediates"])

    variables, (logits, updates) = jax.eval_shape(build)
    assert logits.shape == (2, 100)
    assert updates["intermediates"]["features"][0].shape == (2, 2048)
    weights = sum(
        np.prod(v.shape)
        for p, v in jax.tree_util.tree_leaves_with_path(variables["params"])
        if p[-1].key == "kernel"
    )
    assert 23.5e6 < weights < 23.8e6  # CIFAR ResNet-50 with a 100-class head: 23.65 M weights
