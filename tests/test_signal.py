"""The training signal: crop padding, BatchNorm re-estimation inside runs, CR's EMA horizon,
MEC-Quant's mixture and gates, visible loss terms, DNQ's target width, LSQ's activation
gradient scale and the several-low-bit-layer study model."""

import dataclasses
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.data.augment import random_crop_flip
from jaxquant.data.sources import load_digits_splits
from jaxquant.methods import get_method, policy_from_config
from jaxquant.methods.common import augment
from jaxquant.models import create_model, without_perturbations
from jaxquant.objectives.coding_length import cross_logdet, gate_balance, l2_normalize_rows, mec_moe_loss
from jaxquant.objectives.ema import horizon_decay, warmup_decay
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.layers import QConv, elements_per_step
from jaxquant.quant.perturbations import FeatureNoise
from jaxquant.train.batchnorm import pooled_moments, reestimate_batch_stats
from jaxquant.train.checkpoint import load_raw
from jaxquant.train.loop import loss_term_grads, train_and_evaluate
from jaxquant.train.setup import build_run, clean_batch_stats, create_train_state, init_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=str(path))


# 1. crop padding -------------------------------------------------------------------------


def test_crop_border_is_the_normalised_black_of_the_data():
    train, _ = load_digits_splits()
    assert train.pad_value == pytest.approx((0.0 - 0.3) / 0.4)
    black = train.batch(np.arange(16))["image"] * 0 + train.pad_value  # a raw all-zero image
    cropped = np.asarray(random_crop_flip(jax.random.PRNGKey(0), black, 2, True, train.pad_value))
    np.testing.assert_allclose(cropped, train.pad_value)  # black stays black: no grey band
    # the run's augmentation uses the training split's value
    run = build_run(tiny_config(data__crop_padding=2))
    assert run.ctx.pad_value == train.pad_value
    np.testing.assert_allclose(np.asarray(augment(run.ctx, jax.random.PRNGKey(1), black)), train.pad_value)


def test_crop_pads_exactly_with_the_given_value():
    images = np.ones((8, 6, 6, 1), np.float32)
    out = np.asarray(random_crop_flip(jax.random.PRNGKey(3), images, 3, False, -2.5))
    assert set(np.unique(out)) <= {1.0, -2.5} and (out == -2.5).any()


# 2. BatchNorm re-estimation ---------------------------------------------------------------


def test_pooled_moments_are_the_statistics_of_the_union():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(k, 1 + k, size=(64, 3)) for k in range(4)]
    stats = [{"bn": {"mean": c.mean(0), "var": c.var(0)}} for c in chunks]
    pooled = pooled_moments(stats)["bn"]
    union = np.concatenate(chunks)
    np.testing.assert_allclose(pooled["mean"], union.mean(0), rtol=1e-5)
    np.testing.assert_allclose(pooled["var"], union.var(0), rtol=1e-5)


class NormFirst(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)


def test_chunked_reestimation_of_a_first_layer_is_exact_over_all_images():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=(256, 5)).astype(np.float32)
    model = NormFirst()
    variables = model.init(jax.random.PRNGKey(0), x[:2], train=False)
    state = reestimate_batch_stats(
        model, variables["params"], {"batch_stats": variables["batch_stats"]}, x, 64
    )
    np.testing.assert_allclose(state["batch_stats"]["bn"]["mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["bn"]["var"], x.var(0), rtol=1e-4)


def test_reestimation_runs_with_every_perturbation_off():
    """SFP at p = 1 fires on every conv input in training mode; re-estimation must give the
    statistics of the clean network."""
    config = tiny_config(method__name="fpq")
    noisy_policy = policy_from_config(
        config, weight_kind="lsq", act_kind="lsq", perturbation=FeatureNoise(1.0)
    )
    noisy = create_model("small_cnn", 10, noisy_policy, widths=(8, 16))
    images = jnp.asarray(load_digits_splits()[0].batch(np.arange(128))["image"])
    variables = calibrate(noisy, init_variables(noisy, (8, 8, 1), jax.random.PRNGKey(0)), images)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    got = reestimate_batch_stats(noisy, params, state, images)
    clean = without_perturbations(noisy)
    assert clean.policy.perturbation is None and clean.policy.w_bits == noisy_policy.w_bits
    want = reestimate_batch_stats(clean, params, state, images)
    assert_trees_close(got["batch_stats"], want["batch_stats"], rtol=0, atol=0)
    # with the noise on, the training-mode statistics would differ
    _, fired = noisy.apply(
        variables, images, train=True, mutable=["batch_stats"], rngs={"noise": jax.random.PRNGKey(5)}
    )
    assert not np.allclose(fired["batch_stats"]["bn1"]["mean"], state["batch_stats"]["bn1"]["mean"])


@pytest.fixture(scope="module")
def lsq_workdir(fp_digits_run, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lsq_bn"))
    config = tiny_config(method__name="lsq", init_from=fp_digits_run, train__bn_reestimate_images=256)
    train_and_evaluate(config, workdir)
    return workdir, config


def test_qat_starts_from_reestimated_statistics(fp_digits_run):
    fields = dict(method__name="lsq", init_from=fp_digits_run, train__bn_reestimate_images=256)
    config = tiny_config(**fields)
    run = build_run(config)
    state = create_train_state(run)
    never = create_train_state(build_run(tiny_config(**fields, train__bn_reestimate="never")))
    # "never" keeps the FP run's statistics; "auto" re-estimates them under the quantized weights
    _, saved = load_raw(fp_digits_run)
    assert_trees_close(never.model_state["batch_stats"], saved["model_state"]["batch_stats"], rtol=0, atol=0)
    want = clean_batch_stats(
        config, run.ctx.model, run.train_split, run.mesh, never.params, never.model_state
    )
    assert_trees_close(state.model_state["batch_stats"], want["batch_stats"])
    assert not np.allclose(
        state.model_state["batch_stats"]["bn1"]["var"], never.model_state["batch_stats"]["bn1"]["var"]
    )


def test_final_checkpoint_and_evaluation_use_reestimated_statistics(lsq_workdir):
    workdir, config = lsq_workdir
    run = build_run(config)
    step, saved = load_raw(workdir)
    assert step == config.train.num_steps
    want = clean_batch_stats(
        config, run.ctx.model, run.train_split, run.mesh, saved["params"], saved["model_state"]
    )
    assert_trees_close(saved["model_state"]["batch_stats"], want["batch_stats"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last_eval = [json.loads(line) for line in f if '"eval"' in line][-1]
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["test_accuracy"] == pytest.approx(last_eval["accuracy"])


def test_ema_teacher_is_copied_from_the_reestimated_student(fp_digits_run):
    config = tiny_config(method__name="cr", init_from=fp_digits_run, train__bn_reestimate_images=256)
    run = build_run(config)
    state = create_train_state(run)
    assert_trees_close(
        state.extra["teacher"]["batch_stats"], state.model_state["batch_stats"], rtol=0, atol=0
    )
    # ... and those are the re-estimated statistics, not the FP run's
    _, saved = load_raw(fp_digits_run)
    fp_var = np.asarray(saved["model_state"]["batch_stats"]["bn1"]["var"])
    assert not np.allclose(np.asarray(state.extra["teacher"]["batch_stats"]["bn1"]["var"]), fp_var)


def test_bad_bn_reestimate_fields_are_one_line_errors():
    with pytest.raises(ValueError, match="train.bn_reestimate="):
        build_run(tiny_config(train__bn_reestimate="sometimes"))
    with pytest.raises(ValueError, match="train.bn_reestimate_images="):
        build_run(tiny_config(train__bn_reestimate_images=0))


# 3. CR's EMA teacher ------------------------------------------------------------------------


def test_mean_teacher_warmup_and_horizon():
    assert [float(warmup_decay(t, 0.99)) for t in (0, 1, 3, 1000)] == pytest.approx([0.0, 0.5, 0.75, 0.99])
    assert horizon_decay(1000, 0.1) == pytest.approx(0.99)  # time constant 100 steps
    assert horizon_decay(50, 0.1, min_horizon=10) == pytest.approx(0.9)  # floored at 10 steps
    method = get_method("cr")
    config = tiny_config(method__name="cr")
    config.method.update({"ema_horizon_fraction": 0.1, "ema_min_horizon": 10, "ema_decay": 0.5})
    ctx = dataclasses.replace(build_run(config).ctx, total_steps=2340)
    assert method.ema_decay(ctx) == pytest.approx(1 - 1 / 234)
    config.method.ema_horizon_fraction = 0.0
    assert method.ema_decay(dataclasses.replace(ctx, config=config)) == 0.5


# 4. MEC-Quant's mixture -----------------------------------------------------------------------


def block_separable(m=24, blocks=(3, 5), seed=0):
    """Rows whose features are non-zero in one block only: the cross-Gram is block-diagonal."""
    rng = np.random.default_rng(seed)
    d = sum(blocks)
    z = np.zeros((m, d), np.float32)
    bounds = np.cumsum((0, *blocks))
    for i in range(m):
        k = i % len(blocks)
        z[i, bounds[k] : bounds[k + 1]] = rng.normal(size=blocks[k])
    return z


def test_moe_coding_length_is_the_sum_of_the_experts_parts():
    blocks, m = (4, 4), 24
    z1, z2 = block_separable(m, blocks, 1), block_separable(m, blocks, 2)
    total = float(mec_moe_loss(jnp.asarray(z1), jnp.asarray(z2), jnp.zeros(2), 64.0, exact=True))
    n1, n2 = np.asarray(l2_normalize_rows(z1)), np.asarray(l2_normalize_rows(z2))
    parts = []
    for a, b in ((0, 4), (4, 8)):
        g1, g2 = n1[:, a:b], n2[:, a:b]
        energy = (np.mean(np.sum(g1**2, -1)) + np.mean(np.sum(g2**2, -1))) / 2
        lam = (b - a) / (m * 64.0 * energy)
        parts.append(-(m + b - a) / 2 * np.linalg.slogdet(np.eye(b - a) + lam * g2.T @ g1)[1])
    assert total == pytest.approx(sum(parts), rel=1e-4)
    # block-separable features: the parts' log-dets add up to the log-det of the whole
    lams = [(b - a) / (m * 64.0) for a, b in ((0, 4), (4, 8))]
    whole = np.zeros((8, 8))
    whole[:4, :4], whole[4:, 4:] = lams[0] * n2[:, :4].T @ n1[:, :4], lams[1] * n2[:, 4:].T @ n1[:, 4:]
    split = sum(
        float(cross_logdet(jnp.asarray(n1[:, a:b]), jnp.asarray(n2[:, a:b]), lam, 4, True))
        for (a, b), lam in zip(((0, 4), (4, 8)), lams, strict=True)
    )
    assert split == pytest.approx(np.linalg.slogdet(np.eye(8) + whole)[1], rel=1e-3)


def test_moe_term_keeps_the_size_of_plain_mec():
    """Uniform gates: K experts give about plain MEC's coding length, not 1/K of it."""
    z = jax.random.normal(jax.random.PRNGKey(0), (64, 32))
    z2 = z + 0.3 * jax.random.normal(jax.random.PRNGKey(1), (64, 32))
    one = float(mec_moe_loss(z, z2, jnp.zeros(1)))
    four = float(mec_moe_loss(z, z2, jnp.zeros(4)))
    assert 0.5 < four / one < 2.0, (one, four)


def test_gate_balance_is_zero_at_uniform_and_log_k_at_one_expert():
    assert float(gate_balance(jnp.zeros(4))) == pytest.approx(0.0, abs=1e-7)
    assert float(gate_balance(jnp.array([50.0, 0.0, 0.0, 0.0]))) == pytest.approx(np.log(4), rel=1e-4)


def test_mec_gates_fixed_by_default_learned_with_a_balance_term(fp_digits_run):
    fixed = build_run(tiny_config(method__name="mec", init_from=fp_digits_run))
    assert fixed.method.extra_params(fixed.ctx) == {}
    config = tiny_config(method__name="mec", init_from=fp_digits_run)
    config.method.gates = "learned"
    learned = build_run(config)
    assert learned.method.extra_params(learned.ctx)["mec_gate_logits"].shape == (4,)
    with pytest.raises(ValueError, match="method.gates="):
        config.method.gates = "sometimes"
        build_run(config)


# 5. loss terms ----------------------------------------------------------------------------------


def test_loss_term_grads_follow_their_formula():
    def loss_fn(params, state, batch, rng):
        ce, reg = jnp.sum(params["w"] ** 2), 3.0 * jnp.sum(params["w"])
        return ce + reg, {"loss_terms": {"ce": ce, "reg": reg}}

    params = {"w": jnp.array([1.0, 2.0])}
    out = loss_term_grads(loss_fn, params, None, None, None)
    assert float(out["grad_norm_ce"]) == pytest.approx(np.hypot(2.0, 4.0))
    assert float(out["grad_norm_reg"]) == pytest.approx(np.hypot(3.0, 3.0))
    assert float(out["grad_ratio_reg"]) == pytest.approx(np.hypot(3.0, 3.0) / np.hypot(2.0, 4.0))
    assert float(out["term_reg"]) == pytest.approx(9.0)


def test_fpq_run_logs_each_loss_term_and_its_gradient_ratio(fp_digits_run, tmp_path):
    config = tiny_config(method__name="fpq", init_from=fp_digits_run, train__num_steps=10, train__log_every=5)
    config.optim.learning_rate = 0.005
    train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        train_rows = [json.loads(line) for line in f if '"train"' in line]
    for row in train_rows:
        for key in ("term_ce", "term_csd", "grad_norm_ce", "grad_ratio_csd"):
            assert np.isfinite(row[key]), key
        assert row["term_ce"] + row["term_csd"] == pytest.approx(row["loss"], rel=1e-5)


# 6. DNQ's target -------------------------------------------------------------------------------


def test_dnq_comparison_trains_one_dnq_run_per_evaluated_width():
    sys.path.insert(0, REPO)
    from configs import dnq_vs_fp

    config = dnq_vs_fp.get_config("digits")
    widths = [8, 6, 4, 3, 2]
    assert [s for s in config.stage_order if s.startswith("dnq_")] == [
        name for b in widths for name in (f"dnq_target{b}", f"dnq_target{b}_ptq")
    ]
    for b in widths:
        assert config.stages[f"dnq_target{b}"].method.target_bits == b
        assert config.stages[f"dnq_target{b}_ptq"].ptq.bits == str(b)
    with pytest.raises(ValueError, match="equal weight and input bits"):
        dnq_vs_fp.set_dnq_widths(config, "w4a8")


# 8. LSQ's activation gradient scale ---------------------------------------------------------------


def test_activation_grad_scale_counts_a_sample_or_the_batch():
    x = jnp.zeros((16, 5, 5, 3))
    assert elements_per_step(x, None, True, "sample") == 75
    assert elements_per_step(x, None, True, "batch") == 16 * 75
    assert elements_per_step(x, None, False, "batch") == 16 * 75  # weights: the whole tensor

    def step_grad(convention):
        config = tiny_config(method__name="lsq", quant__act_grad_scale_elements=convention)
        model = create_model("small_cnn", 10, get_method("lsq").policy(config), widths=(4, 8))
        images = jnp.asarray(load_digits_splits()[0].batch(np.arange(16))["image"])
        variables = calibrate(model, init_variables(model, (8, 8, 1), jax.random.PRNGKey(0)), images)
        params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

        def loss(p):
            return jnp.sum(model.apply({"params": p, **state}, images, train=False) ** 2)

        return jax.grad(loss)(params)["conv1"]["input_quant"]["step"]

    np.testing.assert_allclose(step_grad("batch"), step_grad("sample") / 4.0, rtol=1e-5)  # 1/sqrt(16)
    with pytest.raises(ValueError, match="quant.act_grad_scale_elements="):
        build_run(tiny_config(method__name="lsq", quant__act_grad_scale_elements="device"))


# 9. the study model -------------------------------------------------------------------------------


def test_cnn6_has_five_low_bit_convs_at_w2a2():
    config = tiny_config(method__name="lsq", quant__w_bits=2, quant__a_bits=2)
    model = create_model("cnn6", 10, get_method("lsq").policy(config))
    bits = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, QConv) and context.method_name == "__call__":
            bits.append((context.module.quant.weight.bits, context.module.quant.input.bits))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1))))
    assert bits == [(8, 8)] + [(2, 2)] * 5
