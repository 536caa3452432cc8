"""``train_and_evaluate(config, workdir)``: build, (re)start, train, evaluate, checkpoint.

The run is assembled by :mod:`jaxquant.train.setup`; this module holds the jitted steps
(train, loss-term diagnostic, eval) and the loop around them.
"""

from __future__ import annotations

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
from jaxquant.data import eval_batches
from jaxquant.data.sources import Split
from jaxquant.models import forward
from jaxquant.objectives.classification import cross_entropy
from jaxquant.train.checkpoint import Checkpointer
from jaxquant.train.metrics import MetricsWriter, format_progress
from jaxquant.train.setup import (
    CONFIG_FILE,
    Run,
    build_run,
    clean_batch_stats,
    initial_state,
)
from jaxquant.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stops and keeps its last good checkpoint."""


def make_train_step(run: Run, state_sharding=None):
    """The jitted ``train_step(state, batch) -> (state, metrics)``; method-agnostic."""
    method, ctx, tx, schedule = run.method, run.ctx, run.tx, run.schedule
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
            "grad_norm": optax.tree.norm(grads),
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
    parameters), so a user sees whether a regulariser moves the weights at all.

    One forward pass (``jax.vjp``) and one backward pass per term, each pulling back the
    one-hot cotangent of that term."""
    terms, pullback = jax.vjp(lambda p: loss_fn(p, state, batch, rng)[1]["loss_terms"], params)
    out = {}
    for name, value in terms.items():
        (grads,) = pullback(
            {k: jnp.ones_like(v) if k == name else jnp.zeros_like(v) for k, v in terms.items()}
        )
        out[f"term_{name}"] = value
        out[f"grad_norm_{name}"] = optax.tree.norm(grads)
    for name in terms:
        if name != "ce":
            out[f"grad_ratio_{name}"] = out[f"grad_norm_{name}"] / (out["grad_norm_ce"] + 1e-12)
    return out


def make_loss_terms_step(run: Run):
    """The jitted ``(state, batch) -> metrics`` of :func:`loss_term_grads` at ``state``, or
    ``None`` when ``train.log_loss_terms`` is off."""
    if not run.config.train.log_loss_terms:
        return None
    loss_fn = run.method.loss_fn(run.ctx)

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


def evaluate_during_training(run: Run, eval_step, state: TrainState) -> tuple[str, dict]:
    """``(kind, result)`` of an evaluation between steps: the validation split when there is
    one (kind ``validation``), else test (kind ``eval``). A run that re-estimates BatchNorm
    is evaluated on re-estimated statistics, as its final checkpoint will be; the training
    state keeps its running statistics."""
    config, model_state = run.config, state.model_state
    if run.reestimates_bn:
        model_state = clean_batch_stats(
            config, run.ctx.model, run.train_split, run.mesh, state.params, state.model_state
        )
        model_state = run.place_state(model_state)
    kind = "validation" if run.validation_split is not None else "eval"
    batch_size = config.data.eval_batch_size
    return kind, evaluate(eval_step, state.params, model_state, run.eval_split, batch_size, run.mesh)


def final_evaluations(run: Run, eval_step, state: TrainState, metrics, step: int) -> dict[str, dict]:
    """The final checkpoint on validation (when there is one) and on test, the test split's
    only reading; written to ``metrics`` (kinds ``validation`` and ``eval``) unless ``None``."""
    splits = {"validation": run.validation_split, "test": run.test_split}
    results = {}
    for name, split in splits.items():
        if split is None:
            continue
        results[name] = evaluate(
            eval_step, state.params, state.model_state, split, run.config.data.eval_batch_size, run.mesh
        )
        if metrics is not None:
            metrics.write("validation" if name == "validation" else "eval", step, results[name])
        print(f"[{run.config.name}] {name} at step {step}: accuracy {results[name]['accuracy']:.4f}")
    return results


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
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train per ``config`` in ``workdir`` (resuming from its latest checkpoint); return the
    summary that is also written to ``<workdir>/summary.json``."""
    run = build_run(config)
    write_config(config, workdir)
    total_steps = run.total_steps
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints)
    metrics = MetricsWriter(os.path.join(workdir, "metrics.jsonl"), tensorboard=config.train.tensorboard)

    state, resumed = initial_state(run, checkpointer)
    if resumed:
        print(f"[{config.name}] resumed from step {int(state.step)} in {checkpointer.directory}")
    start_step = int(state.step)
    metrics.discard_after(start_step)
    curvature_monitor = CurvatureMonitor(run, state.params, metrics)

    train_step = make_train_step(run, run.state_sharding(state))
    eval_step = make_eval_step(run.ctx.model)
    terms_step, has_terms = make_loss_terms_step(run), None
    log_every = max(1, config.train.log_every)
    last_time, last_step = time.time(), start_step
    batch_iter = run.batches.iterate(start_step)
    final_results = None  # the last step's evaluations; a finished run resumed has none yet
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
        if is_last and run.reestimates_bn:
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
        if config.train.eval_every and done % config.train.eval_every == 0 and not is_last:
            kind, result = evaluate_during_training(run, eval_step, state)
            metrics.write(kind, done, result)
            print(f"[{config.name}] {kind} at step {done}: accuracy {result['accuracy']:.4f}")
        if is_last:
            final_results = final_evaluations(run, eval_step, state, metrics, done)
        curvature_monitor.maybe_probe(done, state)
        if (config.train.checkpoint_every and done % config.train.checkpoint_every == 0) or is_last:
            check_finite(jax.device_get(step_metrics), done, checkpointer)
            # this step's loss was computed before its update: check the new parameters too
            if not all_finite(state.params):
                raise non_finite_error("a parameter is NaN or inf", done, checkpointer)
            checkpointer.save(done, state)

    if final_results is None:
        final_results = final_evaluations(run, eval_step, state, None, int(state.step))
    result = final_results["test"]
    checkpointer.close()
    metrics.close()
    summary = {
        "name": config.name,
        "method": config.method.name,
        "model": config.model.name,
        "dataset": config.data.name,
        "w_bits": config.quant.w_bits if run.policy.quantizes else None,
        "a_bits": config.quant.a_bits if run.policy.quantizes else None,
        "steps": int(state.step),
        "test_accuracy": float(result["accuracy"]),
        "test_loss": float(result["loss"]),
        "seed": config.seed,
    }
    if "validation" in final_results:
        summary["validation_accuracy"] = float(final_results["validation"]["accuracy"])
        summary["validation_loss"] = float(final_results["validation"]["loss"])
    if parallel.is_lead_process():
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return summary


__all__ = [
    "NonFiniteLossError",
    "evaluate",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
]
