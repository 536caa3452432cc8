"""``train_and_evaluate(config, workdir)``: build, (re)start, train, evaluate, checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxquant import parallel
from jaxquant.curvature.monitor import CurvatureMonitor
from jaxquant.data import TrainBatches, calibration_images, eval_batches, load_splits
from jaxquant.data.sources import Split
from jaxquant.methods import MethodContext, get_method, method_param_names
from jaxquant.methods.common import forward
from jaxquant.models import create_model
from jaxquant.objectives.classification import cross_entropy
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.policy import FULL_PRECISION, check_choice
from jaxquant.train.batchnorm import reestimate_batch_stats
from jaxquant.train.checkpoint import Checkpointer, CheckpointError, find_checkpoint, load_raw
from jaxquant.train.metrics import MetricsWriter, format_progress
from jaxquant.train.optim import create_optimizer
from jaxquant.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


@dataclasses.dataclass
class Run:
    """Everything built from a config before training starts."""

    config: ml_collections.ConfigDict
    method: Any
    ctx: MethodContext
    train_split: Split
    test_split: Split
    mesh: Any

    def state_sharding(self, tree):
        """The sharding of each leaf of ``tree`` on this run's mesh (FSDP rule of ``config.mesh``)."""
        return parallel.state_sharding(tree, self.mesh, self.config.mesh.fsdp_min_size)

    def place_state(self, tree):
        """``tree`` as global arrays on this run's mesh, with :meth:`state_sharding`."""
        return parallel.place_state(tree, self.mesh, self.config.mesh.fsdp_min_size)


def build_run(config: ml_collections.ConfigDict) -> Run:
    """Validate the config and build data, models and method; fail fast on bad input."""
    method = get_method(config.method.name)
    policy = method.policy(config)
    method.validate(config)
    bn_reestimate_enabled(config, policy.quantizes)
    if not isinstance(config.train.bn_reestimate_images, int) or config.train.bn_reestimate_images < 1:
        raise ValueError(
            f"train.bn_reestimate_images={config.train.bn_reestimate_images!r} must be a positive integer"
        )
    if config.init_from:
        with init_from_errors(config.init_from):
            find_checkpoint(config.init_from)
    train_split, test_split = load_splits(config.data.source, config.data.name, config.data.data_dir)
    model_kwargs = dict(config.model.get("kwargs", {}))
    model = create_model(config.model.name, train_split.num_classes, policy, **model_kwargs)
    teacher = None
    if method.uses_teacher(config):
        if not config.init_from:
            raise ValueError(
                f"method {method.name!r} needs an FP teacher: set --config.init_from to an FP run"
            )
        teacher = create_model(config.model.name, train_split.num_classes, FULL_PRECISION, **model_kwargs)
    mesh = parallel.create_mesh(config.get("mesh"))
    ctx = MethodContext(config=config, model=model, teacher_model=teacher, pad_value=train_split.pad_value)
    return Run(config, method, ctx, train_split, test_split, mesh)


def init_variables(model, image_shape, rng) -> dict[str, Any]:
    """Fresh variables of ``model`` for inputs of ``image_shape`` (eval-mode init)."""
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return jax.jit(lambda r: model.init(r, dummy, train=False))(rng)


def is_quantizer_name(name: str) -> bool:
    """Whether a module name is a quantizer's (``input_quant``, ``weight_quant``, ...)."""
    return name.endswith("_quant")


def copy_matching(target, source, what: str, skip=frozenset()):
    """``target`` with every leaf that ``source`` also has replaced by ``source``'s value.

    Leaves that only the target has (quantizer steps and zero points of a model loaded from an
    FP run) are kept. A source subtree missing from the target is skipped when it belongs to
    a quantizer (another estimator's state, e.g. PACT's ``alpha`` loaded into an LSQ or PTQ
    model) or its top-level name is in ``skip`` (a method's own parameters, e.g. MEC's gate
    logits); any other source leaf missing from the target, or of another shape, is an
    error: the checkpoint belongs to a different model.
    """
    if not isinstance(source, dict):
        if np.shape(source) != np.shape(target):
            raise ValueError(
                f"{what}: shape {np.shape(source)} in the checkpoint, {np.shape(target)} in the model"
            )
        return jnp.asarray(source, dtype=jnp.asarray(target).dtype)
    if not isinstance(target, dict):
        raise ValueError(f"{what}: the checkpoint has a subtree where the model has a leaf")
    out = dict(target)
    for key, value in source.items():
        if key not in target:
            if key in skip or any(is_quantizer_name(name) for name in (*what.split("/"), key)):
                continue
            raise ValueError(
                f"{what}/{key} is in the checkpoint but not in the model: "
                "init_from must come from the same model.name"
            )
        out[key] = copy_matching(target[key], value, f"{what}/{key}")
    return out


@contextlib.contextmanager
def init_from_errors(path: str):
    """Re-raise a :class:`CheckpointError` with the config field it came from."""
    try:
        yield
    except CheckpointError as error:
        raise CheckpointError(f"init_from={path!r} cannot be loaded: {error}") from error


def transfer_variables(variables: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with params and model state overwritten from a saved run's ``params`` and
    ``model_state`` (:func:`copy_matching`; methods' own parameters are left out)."""
    out = dict(variables)
    out["params"] = copy_matching(variables["params"], saved["params"], "params", method_param_names())
    for collection, values in saved.get("model_state", {}).items():
        if collection in variables:
            out[collection] = copy_matching(variables[collection], values, collection)
    return out


def load_pretrained(path: str, variables: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with params and model state overwritten from the run at ``path``."""
    with init_from_errors(path):
        _, saved = load_raw(path)
    return transfer_variables(variables, saved)


BN_REESTIMATE_CHOICES = ("auto", "always", "never")


def bn_reestimate_enabled(config: ml_collections.ConfigDict, quantizes: bool) -> bool:
    """``train.bn_reestimate``: ``always``, ``never``, or ``auto`` = for methods that quantize."""
    choice = check_choice(config.train.bn_reestimate, BN_REESTIMATE_CHOICES, "train.bn_reestimate")
    return choice == "always" or (choice == "auto" and quantizes)


def clean_batch_stats(config, model, train_split: Split, mesh, params, model_state) -> dict[str, Any]:
    """``model_state`` with BatchNorm statistics re-estimated on ``train.bn_reestimate_images``
    clean (unaugmented) training images drawn with ``config.seed``, in chunks of
    ``data.batch_size`` split over the mesh, with every perturbation off
    (:func:`~jaxquant.train.batchnorm.reestimate_batch_stats`)."""
    count = config.train.bn_reestimate_images
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"train.bn_reestimate_images={count!r} must be a positive integer")
    images = calibration_images(train_split, count, config.seed)
    chunk = min(config.data.batch_size, len(images))
    place = lambda x: parallel.place_global_batch({"image": x}, mesh)["image"]
    return reestimate_batch_stats(model, params, model_state, images, chunk, place)


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    variables = dict(variables)
    return variables.pop("params"), variables


def create_train_state(run: Run, total_steps: int):
    """A new state on the run's mesh: init, optionally load ``init_from``, calibrate
    quantizers (on the global calibration batch, split over the mesh), build extra."""
    config = run.config
    rng = jax.random.PRNGKey(config.seed)
    init_rng, teacher_rng, state_rng = jax.random.split(rng, 3)
    variables = init_variables(run.ctx.model, run.train_split.image_shape, init_rng)
    teacher_variables = None
    if config.init_from:
        variables = load_pretrained(config.init_from, variables)
        if run.ctx.teacher_model is not None:
            teacher_variables = init_variables(
                run.ctx.teacher_model, run.train_split.image_shape, teacher_rng
            )
            teacher_variables = load_pretrained(config.init_from, teacher_variables)
    if run.method.policy(config).quantizes:
        images = calibration_images(run.train_split, config.quant.calibration_images, config.seed)
        images = parallel.place_global_batch({"image": images}, run.mesh)["image"]
        variables = calibrate(run.ctx.model, run.place_state(variables), images)
    if bn_reestimate_enabled(config, run.method.policy(config).quantizes):
        params, model_state = split_variables(variables)
        model_state = clean_batch_stats(config, run.ctx.model, run.train_split, run.mesh, params, model_state)
        variables = {"params": params, **model_state}
    params, model_state = split_variables(variables)
    params = {**params, **run.method.extra_params(run.ctx)}
    tx, _ = create_optimizer(config.optim, total_steps)
    extra = run.method.init_extra(run.ctx, variables, teacher_variables)
    state = TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        extra=extra,
        rng=state_rng,
    )
    return run.place_state(state)


def make_train_step(run: Run, total_steps: int, state_sharding=None):
    """The jitted ``train_step(state, batch) -> (state, metrics)``; method-agnostic."""
    method, ctx = run.method, dataclasses.replace(run.ctx, total_steps=total_steps)
    tx, schedule = create_optimizer(run.config.optim, total_steps)
    loss_fn = method.loss_fn(ctx)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = method.grads(ctx, loss_fn, state.params, state, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            model_state=aux["model_state"],
        )
        new_state = new_state.replace(extra=method.update_extra(ctx, new_state))
        metrics = {
            "loss": loss,
            **aux["metrics"],
            "grad_norm": jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads))),
            "learning_rate": schedule(state.step),
        }
        return new_state, metrics

    # With ``state_sharding`` (``run.state_sharding(state)``) the state enters and leaves with
    # exactly that sharding and the batch is split over the mesh, so the step compiles once;
    # without it, jit infers the shardings from the arguments.
    if state_sharding is None:
        return jax.jit(train_step, donate_argnums=0)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.batch_sharding(run.mesh)),
        out_shardings=(state_sharding, parallel.replicated(run.mesh)),
        donate_argnums=0,
    )


def loss_term_grads(loss_fn, params, state, batch, rng) -> dict[str, jax.Array]:
    """Each weighted loss term of ``aux['loss_terms']`` with the norm of its own gradient and
    that norm's ratio to cross-entropy's: ``term_<t>``, ``grad_norm_<t>`` = ``‖∇_θ t‖`` and
    ``grad_ratio_<t>`` = ``‖∇_θ t‖ / ‖∇_θ CE‖`` (global L2 norms over all trained
    parameters), so a user sees whether a regulariser moves the weights at all."""
    terms = loss_fn(params, state, batch, rng)[1]["loss_terms"]
    out = {}
    for name in terms:
        term = lambda p, name=name: loss_fn(p, state, batch, rng)[1]["loss_terms"][name]
        value, grads = jax.value_and_grad(term)(params)
        out[f"term_{name}"] = value
        out[f"grad_norm_{name}"] = optax.tree.norm(grads)
    for name in terms:
        if name != "ce":
            out[f"grad_ratio_{name}"] = out[f"grad_norm_{name}"] / (out["grad_norm_ce"] + 1e-12)
    return out


def make_loss_terms_step(run: Run, total_steps: int):
    """The jitted ``(state, batch) -> metrics`` of :func:`loss_term_grads` at ``state``, or
    ``None`` when ``train.log_loss_terms`` is off."""
    if not run.config.train.log_loss_terms:
        return None
    ctx = dataclasses.replace(run.ctx, total_steps=total_steps)
    loss_fn = run.method.loss_fn(ctx)

    def terms_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        return loss_term_grads(loss_fn, state.params, state, batch, rng)

    return jax.jit(terms_step)


def has_regularisers(terms_step, state, batch) -> bool:
    """Whether the loss of ``terms_step`` has a term besides CE (traced, not compiled)."""
    return any(key.startswith("grad_ratio_") for key in jax.eval_shape(terms_step, state, batch))


def make_eval_step(model):
    """Jitted ``(params, model_state, batch) -> (correct, loss_sum, count)`` in eval mode."""

    def eval_step(params, model_state, batch):
        logits, _, _ = forward(model, params, model_state, batch["image"], train=False)
        mask = batch["mask"]
        correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask)
        loss_sum = cross_entropy(logits, batch["label"], mask) * jnp.sum(mask)
        return correct, loss_sum, jnp.sum(mask)

    return jax.jit(eval_step)


def evaluate(eval_step, params, model_state, split: Split, batch_size: int, mesh) -> dict:
    """Accuracy and mean cross-entropy over the whole ``split`` (each process reads every
    eval batch; the mesh splits it)."""
    totals = np.zeros(3)
    for batch in eval_batches(split, batch_size):
        totals += np.asarray(eval_step(params, model_state, parallel.place_global_batch(batch, mesh)))
    correct, loss_sum, count = totals
    return {"accuracy": correct / count, "loss": loss_sum / count, "examples": int(count)}


def total_train_steps(config: ml_collections.ConfigDict, batches: TrainBatches) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.train.num_epochs * batches.steps_per_epoch)


def non_finite_error(what: str, step: int, checkpointer: Checkpointer) -> NonFiniteLossError:
    latest = checkpointer.latest_step()
    kept = (
        f"The last good checkpoint (step {latest}) in {checkpointer.directory} is kept"
        if latest is not None
        else "No checkpoint had been written yet"
    )
    return NonFiniteLossError(
        f"{what} at step {step}: training stopped. {kept}; lower optim.learning_rate or check the data."
    )


def check_finite(metrics: dict[str, Any], step: int, checkpointer: Checkpointer) -> None:
    """Stop on a NaN/inf loss or gradient norm (a NaN can hide behind a finite loss, e.g.
    when a ReLU maps it to 0, yet it poisons the parameters through the gradient)."""
    for key in ("loss", "grad_norm"):
        value = float(metrics[key])
        if not np.isfinite(value):
            raise non_finite_error(f"{key} is {value}", step, checkpointer)


def all_finite(tree) -> bool:
    """Whether every leaf of ``tree`` is free of NaN and inf."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return bool(jax.device_get(jnp.all(jnp.stack(leaves)))) if leaves else True


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    if not parallel.is_lead_process():
        return
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per ``config`` in ``workdir`` (resuming from its latest checkpoint); return the
    summary that is also written to ``<workdir>/summary.json``."""
    run = build_run(config)
    write_config(config, workdir)
    batches = TrainBatches(run.train_split, config.data.batch_size, config.seed)
    parallel.check_divisible_over_mesh(config.data.batch_size, run.mesh, "data.batch_size")
    parallel.check_divisible_over_mesh(config.data.eval_batch_size, run.mesh, "data.eval_batch_size")
    total_steps = total_train_steps(config, batches)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints)
    metrics = MetricsWriter(os.path.join(workdir, "metrics.jsonl"))

    state = create_train_state(run, total_steps)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        print(f"[{config.name}] resumed from step {int(state.step)} in {checkpointer.directory}")
    start_step = int(state.step)
    curvature_monitor = CurvatureMonitor(run, state.params, metrics)

    train_step = make_train_step(run, total_steps, run.state_sharding(state))
    eval_step = make_eval_step(run.ctx.model)
    terms_step, has_terms = make_loss_terms_step(run, total_steps), None
    log_every = max(1, config.train.log_every)
    last_time, last_step = time.time(), start_step
    batch_iter = batches.iterate(start_step)
    final_result = None  # the last step's evaluation; a finished run resumed has none yet
    reestimate = bn_reestimate_enabled(config, run.method.policy(config).quantizes)
    for step in range(start_step, total_steps):
        batch = parallel.shard_batch(next(batch_iter), run.mesh)
        done = step + 1
        is_last = done == total_steps
        logs = done % log_every == 0 or is_last
        term_values, diagnostic_start = {}, time.time()
        if logs and terms_step is not None:
            # at the state the step starts from, with its rng: the terms sum to its loss
            if has_terms is None:
                has_terms = has_regularisers(terms_step, state, batch)
            if has_terms:
                term_values = jax.device_get(terms_step(state, batch))
        last_time += time.time() - diagnostic_start  # the diagnostic's time counts in no rate
        state, step_metrics = train_step(state, batch)
        if is_last and reestimate:
            model_state = clean_batch_stats(
                config, run.ctx.model, run.train_split, run.mesh, state.params, state.model_state
            )
            state = state.replace(model_state=run.place_state(model_state))
        if logs:
            values = {**jax.device_get(step_metrics), **term_values}
            check_finite(values, done, checkpointer)
            now = time.time()
            rate = (done - last_step) / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            metrics.write("train", done, {**values, "steps_per_sec": rate})
            shown = {k: values[k] for k in ("loss", "accuracy") if k in values}
            ratios = {k: v for k, v in values.items() if k.startswith("grad_ratio_")}
            shown.update({f"{k.removeprefix('grad_ratio_')}/ce": v for k, v in ratios.items()})
            print(f"[{config.name}] " + format_progress(done, total_steps, rate, shown), flush=True)
        if (config.train.eval_every and done % config.train.eval_every == 0) or is_last:
            result = evaluate(
                eval_step,
                state.params,
                state.model_state,
                run.test_split,
                config.data.eval_batch_size,
                run.mesh,
            )
            metrics.write("eval", done, result)
            print(f"[{config.name}] eval at step {done}: accuracy {result['accuracy']:.4f}")
            if is_last:
                final_result = result
        curvature_monitor.maybe_probe(done, state)
        if (config.train.checkpoint_every and done % config.train.checkpoint_every == 0) or is_last:
            check_finite(jax.device_get(step_metrics), done, checkpointer)
            # this step's loss was computed before its update: check the new parameters too
            if not all_finite(state.params):
                raise non_finite_error("a parameter is NaN or inf", done, checkpointer)
            checkpointer.save(done, state)

    result = final_result or evaluate(
        eval_step,
        state.params,
        state.model_state,
        run.test_split,
        config.data.eval_batch_size,
        run.mesh,
    )
    checkpointer.close()
    summary = {
        "name": config.name,
        "method": config.method.name,
        "model": config.model.name,
        "dataset": config.data.name,
        "w_bits": config.quant.w_bits if run.method.policy(config).quantizes else None,
        "a_bits": config.quant.a_bits if run.method.policy(config).quantizes else None,
        "steps": int(state.step),
        "test_accuracy": float(result["accuracy"]),
        "test_loss": float(result["loss"]),
        "seed": config.seed,
    }
    if parallel.is_lead_process():
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "Run",
    "build_run",
    "create_train_state",
    "evaluate",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
]
