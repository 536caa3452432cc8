"""FPQ, CR, MEC-Quant and KD train on digits from the FP fixture; teachers stay frozen (or
follow the EMA rule for CR); bad enum fields fail with a one-line error; configs build."""

import dataclasses
import importlib

import jax
import numpy as np
import pytest
from conftest import tiny_config

from jaxquant import parallel
from jaxquant.data import TrainBatches
from jaxquant.methods import get_method
from jaxquant.objectives.ema import ema_update
from jaxquant.train.loop import make_train_step
from jaxquant.train.setup import build_run, create_train_state

STEPS = 12

# name → method fields: the four methods at their defaults, then variants of CR and MEC.
VARIANTS = {
    "kd": {"name": "kd"},
    "fpq": {"name": "fpq"},
    "cr": {"name": "cr"},
    "mec": {"name": "mec"},
    "cr_fp_features_unlabelled": {
        "name": "cr",
        "teacher": "fp",
        "target": "features",
        "unlabelled_fraction": 0.5,
        "second_view": "cutout",
    },
    "mec_two_views_all_convs": {
        "name": "mec",
        "pair": "ema_two_views",
        "apply_to": "all_convs",
        "experts": 2,
        "gates": "learned",
    },
}


def method_config(fields, init_from):
    # lr 0.005, and 0.001 for FPQ: FPQ's CSD gradients on the small 8-bit LSQ steps of the
    # first conv make larger rates overshoot on this tiny net (see README); at 0.005 its loss
    # on the fixed batch rose (1.88 → 3.53) on one of the machines the suite ran on.
    learning_rate = 0.001 if fields["name"] == "fpq" else 0.005
    config = tiny_config(
        init_from=init_from, train__num_steps=STEPS, data__crop_padding=1, optim__learning_rate=learning_rate
    )
    for key, value in fields.items():
        config.method[key] = value
    return config


def host_copy(tree):
    return jax.tree_util.tree_map(np.array, jax.device_get(tree))


@pytest.fixture(scope="module")
def trained(fp_digits_run):
    """Per variant: (run, state before, after one step and after STEPS steps on one fixed
    batch, the method's loss on that batch before and after training)."""
    cache = {}

    def get(variant):
        if variant not in cache:
            run = build_run(method_config(VARIANTS[variant], fp_digits_run))
            batches = TrainBatches(run.train_split, run.config.data.batch_size, run.config.seed)
            batch = parallel.shard_batch(batches[0], run.mesh)
            state = create_train_state(run)
            train_step = make_train_step(run, run.state_sharding(state))

            def loss_at(host_state):
                """The train step's loss at step 0 (same rng, ramp and warm-up) from a host copy."""
                state = run.place_state(host_state.replace(step=np.int32(0)))
                return float(train_step(state, batch)[1]["loss"])

            initial = host_copy(state)
            for step in range(STEPS):
                state, _ = train_step(state, batch)
                if step == 0:
                    after_one = host_copy(state)
            final = host_copy(state)
            cache[variant] = (run, initial, after_one, final, loss_at(initial), loss_at(final))
        return cache[variant]

    return get


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_method_lowers_its_loss_on_a_fixed_batch(trained, variant):
    *_, before, after = trained(variant)
    assert np.isfinite(after) and after < before, (variant, before, after)


@pytest.mark.parametrize("variant", ["kd", "fpq", "mec", "cr_fp_features_unlabelled"])
def test_fp_teacher_is_frozen(trained, variant):
    run, initial, _, final, *_ = trained(variant)
    assert run.ctx.teacher_model is not None and not run.ctx.teacher_model.policy.quantizes
    flat_before = jax.tree_util.tree_leaves_with_path(initial.extra["teacher"])
    flat_after = jax.tree_util.tree_leaves(final.extra["teacher"])
    assert len(flat_before) == len(flat_after) > 0
    for (path, old), new in zip(flat_before, flat_after, strict=True):
        np.testing.assert_array_equal(old, new, err_msg=jax.tree_util.keystr(path))
    assert not np.array_equal(
        initial.params["conv1"]["kernel"], final.params["conv1"]["kernel"]
    )  # the student did train


@pytest.mark.parametrize("variant", ["cr", "mec_two_views_all_convs"])
def test_ema_teacher_follows_the_ema_rule(trained, variant):
    """After one step: θ_T = α·θ_T + (1 − α)·θ_S for weights, step sizes and BN statistics;
    fixed zero points are unchanged; the MEC gate logits are not part of the teacher."""
    run, initial, after_one, *_ = trained(variant)
    assert run.ctx.teacher_model is None
    ctx = dataclasses.replace(run.ctx, total_steps=STEPS)
    decay = get_method(run.config.method.name).ema_decay_at(ctx, 1)
    assert float(decay) == 0.5  # the Mean-Teacher warm-up: α_1 = min(1 − 1/2, α)
    teacher0, teacher1 = initial.extra["teacher"], after_one.extra["teacher"]
    student1 = {
        "params": {k: after_one.params[k] for k in teacher0["params"]},
        "batch_stats": after_one.model_state["batch_stats"],
    }
    expected = ema_update({k: teacher0[k] for k in student1}, student1, decay)
    for collection in ("params", "batch_stats"):
        for (path, want), got in zip(
            jax.tree_util.tree_leaves_with_path(expected[collection]),
            jax.tree_util.tree_leaves(teacher1[collection]),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    assert "input_quant" in teacher1["params"]["conv1"]  # the teacher carries step sizes
    for zero1, zero0 in zip(
        jax.tree_util.tree_leaves(teacher1["quant_state"]),
        jax.tree_util.tree_leaves(teacher0["quant_state"]),
        strict=True,
    ):
        np.testing.assert_array_equal(zero1, zero0)
    assert "mec_gate_logits" not in teacher1["params"]


def test_mec_learned_gate_logits_are_trained(trained):
    _, initial, _, final, *_ = trained("mec_two_views_all_convs")
    assert initial.params["mec_gate_logits"].shape == (2,)
    assert np.any(final.params["mec_gate_logits"] != initial.params["mec_gate_logits"])


@pytest.mark.parametrize(
    ("method", "field", "allowed"),
    [
        ("cr", "teacher", "['ema', 'fp']"),
        ("cr", "target", "['logits', 'features']"),
        ("cr", "second_view", "['standard', 'cutout']"),
        ("mec", "pair", "['fp_teacher', 'ema_two_views']"),
        ("mec", "apply_to", "['penultimate', 'all_convs']"),
        ("mec", "logdet", "['taylor', 'exact']"),
        ("mec", "gates", "['fixed', 'learned']"),
        ("fpq", "granularity", "['layer', 'sample']"),
        ("fpq", "position", "['after_quant', 'before_quant']"),
        ("fpq", "csd_reduction", "['batch', 'elements']"),
    ],
)
def test_unknown_enum_value_is_a_one_line_error(method, field, allowed):
    config = tiny_config(method__name=method, init_from="unused")
    config.method[field] = "bogus"
    with pytest.raises(ValueError) as error:
        build_run(config)
    message = str(error.value)
    assert "\n" not in message and f"method.{field}='bogus'" in message and allowed in message


@pytest.mark.parametrize("method", ["fpq", "cr", "mec", "kd"])
def test_experiment_configs_build(method, fp_digits_run):
    digits = importlib.import_module("configs.digits").get_config(method)
    assert set(get_method(method).defaults) <= set(digits.method)  # every field is overridable
    digits.init_from = fp_digits_run
    build_run(digits)
    fashion = importlib.import_module("configs.fashion_mnist").get_config(method)
    assert fashion.data.name == "fashion_mnist" and fashion.method.name == method
    cifar = importlib.import_module("configs.cifar")
    for arg in ("cifar10,resnet18", "cifar100,mobilenet_v2"):
        config = cifar.get_config(f"{method},{arg}")
        dataset, model = arg.split(",")
        assert (config.data.source, config.data.name, config.model.name) == ("tfds", dataset, model)
        assert (config.quant.w_bits, config.quant.a_bits, config.quant.first_last_bits) == (4, 4, 8)
        assert (config.optim.name, config.optim.learning_rate, config.optim.schedule) == (
            "sgd",
            0.01,
            "cosine",
        )
        assert (config.optim.weight_decay, config.data.batch_size, config.train.num_epochs) == (
            5e-4,
            256,
            200,
        )
