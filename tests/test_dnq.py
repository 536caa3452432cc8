"""DNQ: quantizer-matched Gaussian noise, only in training, never in evaluation or checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.methods import MethodContext, get_method
from jaxquant.methods.dnq import method_config
from jaxquant.models import create_model, forward
from jaxquant.objectives.noise import running_range_update, sam_weight_perturbation
from jaxquant.quant.gaussian_noise import NOISE_STATS, GaussianQuantNoise
from jaxquant.quant.layers import QDense
from jaxquant.quant.policy import FULL_PRECISION, LayerQuant, QuantizerSpec
from jaxquant.train.checkpoint import load_raw
from jaxquant.train.loop import train_and_evaluate

BITS = 4
DRAWS = 200


def noisy_outputs(layer, variables, x, draws=DRAWS):
    """``draws`` training-mode outputs of ``layer``, each with its own noise key."""

    def one(key):
        y, _ = layer.apply(variables, x, train=True, rngs={"noise": key}, mutable=[NOISE_STATS])
        return y

    return jax.vmap(one)(jax.random.split(jax.random.PRNGKey(1), draws))


def test_weight_noise_std_is_step_over_sqrt12_per_channel():
    spec = QuantizerSpec(bits=BITS, signed=False, channel_axis=-1)
    layer = QDense(8, use_bias=False, quant=LayerQuant(perturbation=GaussianQuantNoise(weight=spec)))
    eye = jnp.eye(64)
    variables = layer.init(jax.random.PRNGKey(0), eye)
    kernel = np.asarray(variables["params"]["kernel"])
    noise = np.asarray(noisy_outputs(layer, variables, eye)) - kernel  # x = I: y = W + ε
    low, high = np.minimum(kernel.min(0), 0), np.maximum(kernel.max(0), 0)
    expected = (high - low) / (2**BITS - 1) / np.sqrt(12)  # s_W per output channel
    samples = noise.shape[0] * noise.shape[1]
    np.testing.assert_allclose(noise.std(axis=(0, 1)), expected, rtol=5 / np.sqrt(2 * samples))
    assert np.all(np.abs(noise.mean(axis=(0, 1))) < 5 * expected / np.sqrt(samples))


def test_input_noise_std_follows_the_running_range_with_probability_p():
    spec = QuantizerSpec(bits=BITS, signed=False)
    noise = GaussianQuantNoise(input=spec, p=0.5)
    layer = QDense(16, use_bias=False, quant=LayerQuant(perturbation=noise), kernel_init=nn_identity)
    x = jax.random.uniform(jax.random.PRNGKey(2), (32, 16), minval=-1.0, maxval=3.0)
    variables = layer.init(jax.random.PRNGKey(0), x)
    delta = np.asarray(noisy_outputs(layer, variables, x)) - np.asarray(x)  # W = I: y = x + ε
    perturbed = np.any(delta != 0, axis=(1, 2))
    assert abs(perturbed.mean() - 0.5) < 4 * 0.5 / np.sqrt(DRAWS)
    # the first update sets the running range to the batch's: s_x = (max − min)/(2^b − 1)
    expected = (float(x.max()) - float(x.min())) / (2**BITS - 1) / np.sqrt(12)
    samples = delta[perturbed].size
    np.testing.assert_allclose(delta[perturbed].std(), expected, rtol=5 / np.sqrt(2 * samples))


def nn_identity(key, shape, dtype=jnp.float32):
    return jnp.eye(*shape, dtype=dtype)


def test_running_range_update_is_an_ema_after_the_first_batch():
    first = running_range_update(0.0, 0.0, -2.0, 4.0, 0.9, jnp.asarray(False))
    np.testing.assert_allclose(first, (-2.0, 4.0))
    later = running_range_update(-2.0, 4.0, -1.0, 6.0, 0.9, jnp.asarray(True))
    np.testing.assert_allclose(later, (0.9 * -2 + 0.1 * -1, 0.9 * 4 + 0.1 * 6))


def test_sam_perturbation_moves_weights_by_rho_along_the_gradient():
    params = {"a": jnp.ones(3), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.asarray([3.0, 0.0, 0.0]), "b": jnp.asarray([[0.0, 4.0], [0.0, 0.0]])}
    moved = sam_weight_perturbation(params, grads, 0.05)
    np.testing.assert_allclose(moved["a"], [1 + 0.05 * 3 / 5, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(moved["b"], [[0, 0.05 * 4 / 5], [0, 0]], rtol=1e-6)


def test_noise_is_off_in_eval_and_in_checkpoints(tmp_path):
    config = tiny_config(train__num_steps=10, train__checkpoint_every=10, train__log_every=5)
    config.method = method_config()
    summary = train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(summary["test_loss"])
    _, saved = load_raw(str(tmp_path))
    assert int(saved["model_state"][NOISE_STATS]["conv1"]["input_range"]["updates"]) == 10
    model = get_method("dnq").policy(config)
    model = create_model(config.model.name, 10, model, **config.model.kwargs)
    plain = create_model(config.model.name, 10, FULL_PRECISION, **config.model.kwargs)
    images = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 1))
    params, state = saved["params"], saved["model_state"]
    evals = [forward(model, params, state, images, False, jax.random.PRNGKey(k))[0] for k in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    # the checkpoint holds the clean weights: the plain FP model computes the same function
    clean, _, _ = forward(plain, params, {"batch_stats": state["batch_stats"]}, images, train=False)
    np.testing.assert_allclose(evals[0], clean, rtol=1e-6, atol=1e-6)
    noisy, new_state, _ = forward(model, params, state, images, train=True, rng=jax.random.PRNGKey(0))
    assert not np.allclose(noisy, evals[0])
    assert int(new_state[NOISE_STATS]["conv1"]["input_range"]["updates"]) == 11


def test_sam_scheme_takes_the_gradient_at_the_ascent_point():
    config = tiny_config()
    config.method = method_config(scheme="sam", sam_rho=0.1)
    target = jnp.asarray([1.0, -2.0])

    def loss_fn(params, state, batch, rng):  # L(w) = ‖w − t‖², ∇L = 2(w − t)
        loss = jnp.sum((params - target) ** 2)
        return loss, {"model_state": state, "metrics": {}}

    params = jnp.asarray([4.0, 2.0])
    ctx = MethodContext(config=config, model=None)
    (loss, _), grads = get_method("dnq").grads(ctx, loss_fn, params, {}, None, None)
    g = 2 * (params - target)
    np.testing.assert_allclose(loss, 25.0)
    np.testing.assert_allclose(grads, 2 * (params + 0.1 * g / jnp.linalg.norm(g) - target), rtol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scheme", "gauss", r"method.scheme='gauss' is not allowed: choose one of \['weight'"),
        ("p", 1.5, r"method.p=1.5 is out of range"),
        ("target_bits", 0, r"method.target_bits=0 is out of range: allowed integers 1..16"),
    ],
)
def test_bad_fields_are_one_line_errors(field, value, message):
    config = tiny_config()
    config.method = method_config(**{field: value})
    with pytest.raises(ValueError, match=message):
        get_method("dnq").validate(config)


def test_schemes_choose_which_tensors_are_perturbed():
    config = tiny_config()
    for scheme, weight, inputs in [
        ("weight", True, False),
        ("activation", False, True),
        ("both", True, True),
    ]:
        config.method = method_config(scheme=scheme)
        middle = get_method("dnq").policy(config).layer("middle").perturbation
        assert (middle.weight is not None, middle.input is not None) == (weight, inputs)
        assert middle.weight is None or middle.weight.bits == 4
    config.method = method_config(perturb_first_last=False)
    assert get_method("dnq").policy(config).layer("first").perturbation is None
    config.method = method_config()
    first = get_method("dnq").policy(config).layer("first").perturbation
    assert first.weight.bits == first.input.bits == 8
    for scheme in ("none", "sam"):
        config.method = method_config(scheme=scheme)
        assert get_method("dnq").policy(config).layer("middle").perturbation is None
