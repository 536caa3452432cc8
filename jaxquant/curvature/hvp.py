"""Hessian-vector products over any subtree of the parameters, and the loss they differentiate.

Every estimator in :mod:`jaxquant.curvature` is a pure function of ``(loss_fn, params, data)``:

* ``loss_fn(params, data) -> scalar``;
* ``params`` the pytree the Hessian is taken with respect to (a whole model, one layer, or
  the quantizer step sizes only: see :func:`partition`);
* ``data`` every other input of the loss (batches, frozen parameters, BatchNorm running
  statistics). It is a traced argument, never a constant baked into a compiled function,
  so one compilation serves every checkpoint and every step of a training run.

For a trained model, :func:`model_objective` builds this triple: the model in eval mode
(BatchNorm uses its running statistics; a quantized model keeps its quantizers on) and the
cross-entropy averaged over a fixed stack of batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from jaxquant.models import forward, in_float32
from jaxquant.objectives.classification import cross_entropy
from jaxquant.quant.layers import is_quantizer_name

LossFn = Callable[[Any, Any], jax.Array]
Selection = str | Sequence[str] | Callable[[str], bool]

SEPARATOR = "/"
ALL = "all"
STEPS = "steps"


def hvp(loss_fn: LossFn, params, data, vector):
    """``H v`` with ``H = ∇²_θ L(θ; data)`` at ``θ = params``, by forward-over-reverse.

    ``Hv = d/dε ∇L(θ + ε v)|_{ε=0}``: ``jax.jvp`` of ``jax.grad``, one forward and one
    backward pass with tangents (about the cost of two gradients), no ``n × n`` matrix.
    ``vector`` has the structure of ``params``; so has the result.

    For a quantized model the gradient is the straight-through one the training uses, so
    ``H`` is the Jacobian of that gradient (round contributes no curvature, clipping
    zeroes it outside the range).
    """
    gradient = lambda p: jax.grad(loss_fn)(p, data)
    return jax.jvp(gradient, (params,), (vector,))[1]


@functools.partial(jax.jit, static_argnums=0)
def jitted_hvp(loss_fn: LossFn, params, data, vector):
    """:func:`hvp`, compiled once per ``loss_fn`` (and shapes)."""
    return hvp(loss_fn, params, data, vector)


def leaf_names(tree) -> list[str]:
    """``'a/b/c'`` path names of the leaves of a nested dict, in ``jax.tree.leaves`` order."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [SEPARATOR.join(str(getattr(k, "key", k)) for k in path) for path, _ in paths]


def layer_name(path: str) -> str:
    """The layer a leaf belongs to: its path without the leaf name, and with a trailing
    quantizer submodule (``input_quant``, ``weight_quant``) folded into its conv/dense.

    ``conv0/kernel`` and ``conv0/weight_quant/step`` → ``conv0``; ``bn0/scale`` → ``bn0``.
    """
    parts = path.split(SEPARATOR)[:-1] or path.split(SEPARATOR)
    while len(parts) > 1 and is_quantizer_name(parts[-1]):
        parts = parts[:-1]
    return SEPARATOR.join(parts)


def selection_predicate(selection: Selection) -> Callable[[str], bool]:
    """Turn a selection into a predicate on leaf paths (``'conv0/kernel'``).

    * ``'all'``: every parameter;
    * ``'steps'``: the quantizer step sizes only (leaves named ``step``);
    * a path prefix, a comma-separated string of them, or a sequence of them: the leaves
      under those layers (``'conv1'``, ``'stage0_block0/conv1,head'``);
    * a callable ``path -> bool``.
    """
    if callable(selection):
        return selection
    if isinstance(selection, str):
        if selection == ALL:
            return lambda path: True
        if selection == STEPS:
            return lambda path: path.split(SEPARATOR)[-1] == "step"
        selection = [s.strip() for s in selection.split(",") if s.strip()]
    prefixes = tuple(p.strip(SEPARATOR) for p in selection)
    return lambda path: any(path == p or path.startswith(p + SEPARATOR) for p in prefixes)


def partition(params, selection: Selection = ALL, field: str = "curvature.params"):
    """Split ``params`` into ``(selected, rest)`` nested dicts by :func:`selection_predicate`.

    An empty ``params`` or a selection that matches nothing is a one-line error naming
    ``field`` and the layers that exist.
    """
    flat = traverse_util.flatten_dict(params, sep=SEPARATOR) if params else {}
    if not flat:
        raise ValueError(f"{field}: the model has no parameters to measure curvature over")
    keep = selection_predicate(selection)
    selected = {k: v for k, v in flat.items() if keep(k)}
    if not selected:
        layers = sorted({layer_name(k) for k in flat})
        raise ValueError(
            f"{field}={selection!r} selects no parameters: choose 'all', 'steps' or path prefixes of {layers}"
        )
    rest = {k: v for k, v in flat.items() if k not in selected}
    return traverse_util.unflatten_dict(selected, sep=SEPARATOR), traverse_util.unflatten_dict(
        rest, sep=SEPARATOR
    )


def combine(selected, rest):
    """Inverse of :func:`partition`: one nested dict with the leaves of both."""
    flat = traverse_util.flatten_dict(rest, sep=SEPARATOR)
    flat.update(traverse_util.flatten_dict(selected, sep=SEPARATOR))
    return traverse_util.unflatten_dict(flat, sep=SEPARATOR)


def model_loss(model: nn.Module) -> LossFn:
    """``L(variables; batches) = (1/K) Σ_k CE(f(x_k; variables), y_k)`` in eval mode.

    ``variables`` holds ``params`` and the model state (``batch_stats``: BatchNorm uses
    these running statistics; ``quant_state``: the quantizers stay on). ``batches`` is a
    dict of arrays with a leading axis of ``K`` equal batches (``image`` ``[K, B, H, W, C]``,
    ``label`` ``[K, B]``). In eval mode every sample's loss is independent of the others,
    so the ``K`` batches are evaluated as one batch of ``K·B``, which equals the mean of the
    ``K`` batch losses (a loop over batches would put convolution gradients inside a loop,
    which XLA:CPU runs 10–60× slower, jax issue #12868). Size ``K·B`` to what one forward
    and backward pass fits.
    """

    def loss(variables, batches):
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        images = batches["image"].reshape(-1, *batches["image"].shape[2:])
        logits, _, _ = forward(model, params, model_state, images, train=False)
        return cross_entropy(logits, batches["label"].reshape(-1))

    return loss


def restricted_loss(loss_fn: LossFn) -> LossFn:
    """``L_S(θ_S; (θ_rest, d)) = L(θ_S ∪ θ_rest; d)``: the loss as a function of a selected
    subtree (:func:`partition`), with the rest of the parameters passed in as data."""

    def loss(selected, data):
        rest, inner_data = data
        return loss_fn(combine(selected, rest), inner_data)

    return loss


def params_loss(model: nn.Module) -> LossFn:
    """``L(params; (model_state, batches))``: :func:`model_loss` with the model state as data."""
    loss_of_variables = model_loss(model)

    def loss(params, data):
        model_state, batches = data
        return loss_of_variables({"params": params, **model_state}, batches)

    return loss


@functools.lru_cache(maxsize=32)
def _cached_restricted_model_loss(model: nn.Module) -> LossFn:
    return restricted_loss(params_loss(model))


def restricted_model_loss(model: nn.Module) -> LossFn:
    """:func:`restricted_loss` of :func:`params_loss`, one function object per (equal)
    model, so that every call for the same model reuses one compilation."""
    try:
        return _cached_restricted_model_loss(model)
    except TypeError:  # a model with an unhashable field (a list): no reuse, still correct
        return restricted_loss(params_loss(model))


def model_objective(model: nn.Module, variables, batches, selection: Selection = ALL):
    """``(loss_fn, params, data)`` of a trained model for the curvature estimators, always in
    float32 (:func:`~jaxquant.models.in_float32`), whatever compute dtype the model trained in.

    The Hessian is taken with respect to the parameters chosen by ``selection`` (see
    :func:`selection_predicate`); the other parameters, the model state and ``batches``
    are ``data``: ``data = (other_params, (model_state, batches))``.
    """
    selected, rest = partition(variables["params"], selection)
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return restricted_model_loss(in_float32(model)), selected, (rest, (model_state, batches))
