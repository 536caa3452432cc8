"""Curvature estimators against the dense Hessian of models small enough to build it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxquant import curvature
from jaxquant.curvature.hvp import leaf_names, model_loss, params_loss
from jaxquant.data.sources import load_digits_splits
from jaxquant.models import create_model
from jaxquant.objectives.classification import cross_entropy
from jaxquant.quant.policy import QuantPolicy


def mlp_loss(params, batch):
    """Cross-entropy of a 6-5-3 tanh MLP."""
    hidden = jnp.tanh(batch["x"] @ params["layer0"]["kernel"] + params["layer0"]["bias"])
    logits = hidden @ params["layer1"]["kernel"] + params["layer1"]["bias"]
    return cross_entropy(logits, batch["y"])


@pytest.fixture(scope="module")
def mlp():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "layer0": {"kernel": jax.random.normal(keys[0], (6, 5)), "bias": 0.1 * jnp.ones(5)},
        "layer1": {"kernel": jax.random.normal(keys[1], (5, 3)), "bias": jnp.zeros(3)},
    }
    batch = {"x": jax.random.normal(keys[2], (32, 6)), "y": jax.random.randint(keys[3], (32,), 0, 3)}
    return mlp_loss, params, batch


def digits_batches(num_batches: int, batch_size: int):
    train, _ = load_digits_splits()
    batch = train.batch(np.arange(num_batches * batch_size))
    return {k: v.reshape(num_batches, batch_size, *v.shape[1:]) for k, v in batch.items()}


def cnn_variables(model, seed=0):
    """Random variables with non-trivial BatchNorm running statistics (eval mode uses them)."""
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((2, 8, 8, 1)))
    stats = variables["batch_stats"]
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 16))
    stats = jax.tree.map(lambda x: x + 0.3 * jax.random.uniform(next(keys), x.shape), stats)
    return {**variables, "batch_stats": stats}


@pytest.fixture(scope="module")
def cnn():
    """A small CNN with BatchNorm (≈ 130 parameters) on 24 digits, as ``(loss, params, data)``."""
    model = create_model("small_cnn", 10, widths=(2, 3))
    variables = cnn_variables(model)
    return curvature.model_objective(model, variables, digits_batches(2, 12))


@pytest.fixture(scope="module")
def quantized_cnn():
    """The same CNN with W4A4 LSQ quantizers (their steps are parameters too)."""
    model = create_model("small_cnn", 10, QuantPolicy(w_bits=4, a_bits=4), widths=(2, 3))
    variables = cnn_variables(model)
    return model, variables, digits_batches(1, 16)


def dense_hessian(loss_fn, params, data):
    flat, unravel = ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda f, d: loss_fn(unravel(f), d)))(flat, data)
    return np.asarray(hessian, np.float64)


@pytest.fixture(scope="module")
def cnn_hessian(cnn):
    return dense_hessian(*cnn)


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_hvp_equals_dense_hessian_times_vector(problem, request):
    loss_fn, params, data = request.getfixturevalue(problem)
    hessian = dense_hessian(loss_fn, params, data)
    assert np.allclose(hessian, hessian.T, atol=1e-4)
    flat, unravel = ravel_pytree(params)
    vector = jax.random.normal(jax.random.PRNGKey(1), flat.shape)
    product = ravel_pytree(curvature.jitted_hvp(loss_fn, params, data, unravel(vector)))[0]
    np.testing.assert_allclose(product, hessian @ np.asarray(vector), rtol=1e-4, atol=1e-5)


def selected_indices(params, selection):
    """Positions in ``ravel_pytree(params)`` of the leaves a selection picks."""
    flat, unravel = ravel_pytree(params)
    positions = unravel(jnp.arange(flat.size, dtype=jnp.float32))
    selected, _ = curvature.partition(positions, selection)
    return np.asarray(ravel_pytree(selected)[0]).astype(int)


@pytest.fixture(scope="module")
def quantized_cnn_hessian(quantized_cnn):
    full_params = quantized_cnn[1]["params"]
    return full_params, dense_hessian(*curvature.model_objective(*quantized_cnn))


@pytest.mark.parametrize("selection", ["steps", "conv1", "conv0,head/bias"])
def test_hvp_on_a_subtree_is_the_block_of_the_full_hessian(quantized_cnn, quantized_cnn_hessian, selection):
    model, variables, batches = quantized_cnn
    full_params, hessian = quantized_cnn_hessian
    loss_fn, params, data = curvature.model_objective(model, variables, batches, selection)
    flat, unravel = ravel_pytree(params)
    index = selected_indices(full_params, selection)
    assert flat.size == index.size > 0
    vector = jax.random.normal(jax.random.PRNGKey(2), flat.shape)
    product = ravel_pytree(curvature.jitted_hvp(loss_fn, params, data, unravel(vector)))[0]
    block = hessian[np.ix_(index, index)]
    np.testing.assert_allclose(product, block @ np.asarray(vector), rtol=1e-3, atol=1e-5)


def test_steps_selection_takes_only_quantizer_steps(quantized_cnn):
    _, variables, _ = quantized_cnn
    selected, rest = curvature.partition(variables["params"], "steps")
    names = leaf_names(selected)
    assert names and all(n.endswith("/step") for n in names)
    assert not any(n.endswith("/step") for n in leaf_names(rest))


def test_eval_mode_loss_uses_running_statistics_and_averages_batches(quantized_cnn):
    """In eval mode each sample's loss is independent of its batch, so K batches of one
    sample give the loss of one batch of K samples; batch statistics would not."""
    model, variables, _ = quantized_cnn
    one_batch = digits_batches(1, 8)
    singles = {k: v.reshape(8, 1, *v.shape[2:]) for k, v in one_batch.items()}
    loss = model_loss(model)
    np.testing.assert_allclose(loss(variables, singles), loss(variables, one_batch), rtol=1e-5)
    state = {k: v for k, v in variables.items() if k != "params"}
    logits = model.apply(variables, one_batch["image"][0], train=False)
    expected = cross_entropy(logits, one_batch["label"][0])
    loss_of_params = params_loss(model)(variables["params"], (state, one_batch))
    np.testing.assert_allclose(loss_of_params, expected, rtol=1e-6)


def test_hutchinson_mean_is_within_three_standard_errors_of_the_trace(mlp):
    loss_fn, params, data = mlp
    hessian = dense_hessian(loss_fn, params, data)
    estimate = curvature.hutchinson_trace(
        loss_fn, params, data, jax.random.PRNGKey(3), num_probes=2000, chunk_size=500, rolled=True, log=None
    )
    assert estimate.num_probes == 2000 and not estimate.converged
    assert abs(estimate.trace - np.trace(hessian)) < 3 * estimate.stderr
    assert estimate.stderr < 0.1 * abs(np.trace(hessian))
    np.testing.assert_allclose(np.mean(estimate.probe_values), estimate.trace)
    np.testing.assert_allclose(
        np.std(estimate.probe_values, ddof=1) / np.sqrt(2000), estimate.stderr, rtol=1e-6
    )


def test_per_layer_traces_sum_to_the_total_and_match_the_blocks(mlp):
    loss_fn, params, data = mlp
    hessian = dense_hessian(loss_fn, params, data)
    estimate = curvature.hutchinson_trace(
        loss_fn, params, data, jax.random.PRNGKey(4), num_probes=1000, chunk_size=250, rolled=True, log=None
    )
    assert list(estimate.layer_traces) == ["layer0", "layer1"]
    assert estimate.layer_sizes == {"layer0": 35, "layer1": 18}
    np.testing.assert_allclose(sum(estimate.layer_traces.values()), estimate.trace, rtol=1e-6)
    blocks = {"layer0": slice(0, 35), "layer1": slice(35, 53)}  # ravel order: layer0 (bias, kernel), layer1
    for name, block in blocks.items():
        exact = np.trace(hessian[block, block])
        assert abs(estimate.layer_traces[name] - exact) < 3.5 * estimate.layer_stderr[name], name


def test_hutchinson_probes_do_not_depend_on_chunking_and_stop_early(mlp, capsys):
    loss_fn, params, data = mlp
    key = jax.random.PRNGKey(5)
    run = lambda **kw: curvature.hutchinson_trace(loss_fn, params, data, key, **kw)
    whole = run(num_probes=40, chunk_size=40, rolled=True, log=None)
    chunked = run(num_probes=38, chunk_size=5, rolled=True, log=print)
    np.testing.assert_allclose(chunked.probe_values, whole.probe_values[:38], rtol=1e-6)
    assert "hutchinson: probe 38/38, running estimate" in capsys.readouterr().out
    straight = run(num_probes=3, rolled=False, log=None)  # the CPU default: one probe per call
    np.testing.assert_allclose(straight.probe_values, whole.probe_values[:3], rtol=1e-6)
    early = run(num_probes=40, chunk_size=5, rolled=True, tol=0.2, log=None)
    assert early.converged and early.num_probes < 40
    np.testing.assert_allclose(early.probe_values, whole.probe_values[: early.num_probes], rtol=1e-6)
    means = [np.mean(whole.probe_values[:n]) for n in (early.num_probes - 10, early.num_probes)]
    assert abs(means[1] - means[0]) <= 0.2 * abs(means[0])


def test_top_eigenvalues_match_eigh(cnn, cnn_hessian):
    loss_fn, params, data = cnn
    exact = np.sort(np.linalg.eigvalsh(cnn_hessian))[::-1]
    result = curvature.top_eigenvalues(
        loss_fn, params, data, jax.random.PRNGKey(6), k=3, num_iterations=60, return_vectors=True
    )
    np.testing.assert_allclose(result.values[0], exact[0], rtol=1e-3)
    np.testing.assert_allclose(result.values, exact[:3], rtol=1e-2)
    top_vector = np.asarray(ravel_pytree(jax.tree.map(lambda v: v[0], result.vectors))[0])
    np.testing.assert_allclose(np.linalg.norm(top_vector), 1.0, rtol=1e-4)
    residual = np.linalg.norm(cnn_hessian @ top_vector - result.values[0] * top_vector)
    assert residual < 1e-2 * exact[0]
    assert result.residuals[0] < 1e-2 * exact[0]


def test_slq_density_integrates_to_one_with_mean_trace_over_n(cnn, cnn_hessian):
    loss_fn, params, data = cnn
    n = cnn_hessian.shape[0]
    density = curvature.spectral_density(
        loss_fn, params, data, jax.random.PRNGKey(7), num_runs=20, num_iterations=40, log=None
    )
    assert density.nodes.shape == density.weights.shape == (20, 40)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(density.integral(), 1.0, atol=1e-3)
    mean_from_grid = np.trapezoid(density.grid * density.density, density.grid)
    np.testing.assert_allclose(mean_from_grid, density.mean, rtol=1e-3, atol=1e-6)
    per_run = np.sum(density.weights * density.nodes, axis=1)
    stderr = np.std(per_run, ddof=1) / np.sqrt(len(per_run))
    assert abs(density.mean - np.trace(cnn_hessian) / n) < 3 * stderr
    eigenvalues = np.linalg.eigvalsh(cnn_hessian)
    assert eigenvalues.min() - 1e-3 <= density.nodes.min() and density.nodes.max() <= eigenvalues.max() + 1e-3


def test_filter_normalised_direction_has_the_weight_norm_per_filter(quantized_cnn):
    _, variables, _ = quantized_cnn
    params = variables["params"]
    direction = curvature.filter_normalized_direction(jax.random.PRNGKey(8), params)
    kernel, d = params["conv1"]["kernel"], direction["conv1"]["kernel"]
    np.testing.assert_allclose(
        jnp.linalg.norm(d.reshape(-1, d.shape[-1]), axis=0),
        jnp.linalg.norm(kernel.reshape(-1, kernel.shape[-1]), axis=0),
        rtol=1e-5,
    )
    assert not np.any(direction["conv1"]["weight_quant"]["step"])
    assert not np.any(direction["bn0"]["scale"])
    everything = curvature.filter_normalized_direction(jax.random.PRNGKey(8), params, kernels_only=False)
    np.testing.assert_allclose(
        jnp.linalg.norm(everything["bn0"]["scale"]), jnp.linalg.norm(params["bn0"]["scale"]), rtol=1e-5
    )


def test_slices_pass_through_the_loss_at_the_centre(cnn):
    loss_fn, params, data = cnn
    d1 = curvature.filter_normalized_direction(jax.random.PRNGKey(9), params)
    d2 = curvature.filter_normalized_direction(jax.random.PRNGKey(10), params)
    alphas = np.linspace(-1, 1, 5)
    line = curvature.slice_1d(loss_fn, params, data, d1, alphas)
    surface = curvature.slice_2d(loss_fn, params, data, (d1, d2), alphas, alphas)
    centre = float(loss_fn(params, data))
    np.testing.assert_allclose(line[2], centre, rtol=1e-5)
    np.testing.assert_allclose(surface[:, 2], line, rtol=1e-5)
    moved = jax.tree.map(lambda p, a, b: p + 0.5 * a - 1.0 * b, params, d1, d2)
    np.testing.assert_allclose(surface[3, 0], loss_fn(moved, data), rtol=1e-5)


def test_line_from_fp_to_quantized_keeps_the_quantizer_leaves(quantized_cnn):
    model, variables, batches = quantized_cnn
    fp_model = create_model("small_cnn", 10, widths=(2, 3))
    fp_variables = cnn_variables(fp_model, seed=3)
    origin, direction = curvature.checkpoint_line(fp_variables, variables)
    step = ("params", "conv1", "weight_quant", "step")
    get = lambda tree: tree[step[0]][step[1]][step[2]][step[3]]
    np.testing.assert_array_equal(get(origin), get(variables))
    assert not np.any(get(direction))
    loss = model_loss(model)
    losses = curvature.interpolate(loss, fp_variables, variables, batches, [0.0, 1.0])
    np.testing.assert_allclose(losses[1], loss(variables, batches), rtol=1e-5)
    np.testing.assert_allclose(losses[0], loss(origin, batches), rtol=1e-5)
    bad = jax.tree.map(lambda x: x, fp_variables)
    bad["params"]["head"]["kernel"] = jnp.zeros((4, 10))
    with pytest.raises(ValueError, match="head/kernel: shape"):
        curvature.checkpoint_line(bad, variables)


def test_no_parameters_is_a_clear_error(mlp):
    loss_fn, params, data = mlp
    with pytest.raises(ValueError, match=r"curvature.params='conv9' selects no parameters.*layer0"):
        curvature.partition(params, "conv9")
    with pytest.raises(ValueError, match="no parameters"):
        curvature.partition({}, "all")
    for estimator in (curvature.hutchinson_trace, curvature.top_eigenvalues, curvature.spectral_density):
        with pytest.raises(ValueError, match="empty"):
            estimator(loss_fn, {}, data, jax.random.PRNGKey(0))
