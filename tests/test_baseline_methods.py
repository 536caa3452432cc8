"""The baseline methods lsq_plus, pact, dorefa and sam: they train from the FP digits
checkpoint and lower their loss; SAM's gradient; their config fields' errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.methods.pact import sum_of_squares
from jaxquant.methods.sam import sam_gradients
from jaxquant.train.loop import make_train_step
from jaxquant.train.setup import build_run, create_train_state

STEPS = 8


def leaves_named(params, name):
    return [v for p, v in jax.tree_util.tree_leaves_with_path(params) if p[-1].key == name]


def train_on_fixed_batch(method: str, fp_run: str, **overrides):
    """Train ``STEPS`` steps on one fixed batch; return the run, first and last state, losses."""
    config = tiny_config(
        method__name=method, init_from=fp_run, optim__learning_rate=0.05, train__num_steps=STEPS, **overrides
    )
    run = build_run(config)
    state = create_train_state(run)
    first = jax.device_get(state)
    batch = run.train_split.batch(np.arange(64))
    train_step = make_train_step(run)
    losses = []
    for _ in range(STEPS + 1):  # the loss metric is taken before each update
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    return run, first, state, losses, metrics


@pytest.mark.parametrize("method", ["lsq_plus", "pact", "dorefa", "sam"])
def test_method_lowers_its_loss_on_a_fixed_batch(method, fp_digits_run):
    config = {"quant__w_bits": 2, "quant__a_bits": 2}
    run, first, state, losses, metrics = train_on_fixed_batch(method, fp_digits_run, **config)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0], losses
    params = first.params
    if method == "lsq_plus":
        assert len(leaves_named(params, "offset")) == 3  # the input of every conv and of the head
        # The grid of the first conv starts at the calibration minimum of the signed image;
        # β then moves only with clipped values (∂x̂/∂β = 0 inside), see the quantizer tests.
        assert float(params["conv0"]["input_quant"]["offset"]) < -0.5
    if method == "pact":
        alphas = leaves_named(params, "alpha")
        assert len(alphas) == 1  # conv1 only: conv0 and the head take first_last_kind = lsq
        assert not np.allclose(alphas[0], leaves_named(state.params, "alpha")[0])
        expected = 0.5 * float(leaves_named(state.params, "alpha")[0]) ** 2
        assert float(metrics["alpha_l2"]) == pytest.approx(expected, rel=0.1)  # one step earlier
    if method == "dorefa":
        kinds = (
            run.ctx.model.policy.layer("middle").weight.kind,
            run.ctx.model.policy.layer("first").weight.kind,
        )
        assert kinds == ("dorefa", "lsq")
        assert len(leaves_named(params, "step")) == 4  # first conv and head: weight + input
    if method == "sam":
        assert "perturbed_loss" in metrics


def test_pact_penalty_is_half_the_sum_of_squared_alphas():
    params = {"a": {"alpha": jnp.array(2.0), "kernel": jnp.ones(3)}, "b": {"alpha": jnp.array([1.0, 3.0])}}
    assert float(sum_of_squares(params, "alpha")) == pytest.approx(4.0 + 1.0 + 9.0)


def test_sam_gradient_is_taken_at_the_ascent_point_with_clean_aux():
    a = jnp.array([[2.0, 0.0], [0.0, 0.5]])

    def loss_fn(params, state, batch, rng):
        w = params["w"]
        return 0.5 * w @ a @ w, {"model_state": {"seen": w}, "metrics": {}}

    w = jnp.array([1.0, -2.0])
    (loss, aux), grads = sam_gradients(loss_fn, {"w": w}, None, None, None, rho=0.05)
    g = np.array([2.0, -1.0])  # A·w
    w_adv = np.asarray(w) + 0.05 * g / np.linalg.norm(g)
    np.testing.assert_allclose(grads["w"], np.asarray(a) @ w_adv, rtol=1e-6)
    assert float(loss) == pytest.approx(0.5 * (2.0 + 0.5 * 4.0))
    np.testing.assert_allclose(aux["model_state"]["seen"], w)  # BN state of the clean pass
    assert float(aux["metrics"]["perturbed_loss"]) == pytest.approx(
        0.5 * w_adv @ np.asarray(a) @ w_adv, rel=1e-6
    )


@pytest.mark.parametrize(
    "method, field, value",
    [
        ("pact", "pact_weight_kind", "ternary"),
        ("pact", "first_last_kind", "fp"),
        ("dorefa", "first_last_kind", "fp"),
    ],
)
def test_unknown_enum_values_name_the_field_and_the_choices(method, field, value):
    config = tiny_config(method__name=method, **{f"method__{field}": value})
    with pytest.raises(
        ValueError, match=rf"method\.{field}='{value}' is not allowed: choose one of \[.*'lsq'"
    ):
        build_run(config)


def test_sam_rejects_a_non_positive_radius():
    with pytest.raises(ValueError, match=r"method\.rho=0\.0"):
        build_run(tiny_config(method__name="sam", method__rho=0.0))
