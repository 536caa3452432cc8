"""Applying a model: which collections a forward pass reads and updates, and the clean model
(no perturbation) that BatchNorm re-estimation runs. Collection names belong here, with the
models, so the layers above (methods, curvature, train) never name them."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from jaxquant.quant.layers import QUANT_STATE

INTERMEDIATES = "intermediates"


def training_collections(model_state: dict[str, Any]) -> list[str]:
    """The collections a training-mode pass updates: every model-state collection but the
    fixed quantizer state (BatchNorm's ``batch_stats``, DNQ's running input ranges, ...)."""
    return [name for name in model_state if name != QUANT_STATE]


def forward(
    model: nn.Module,
    params,
    model_state: dict[str, Any],
    images: jax.Array,
    train: bool,
    rng: jax.Array | None = None,
    taps: bool = False,
):
    """Apply ``model``; return ``(logits, new_model_state, intermediates)``.

    In training mode BatchNorm uses and updates batch statistics, and perturbations update
    their running statistics (:func:`training_collections`); ``taps=True`` collects the sown
    feature taps (``conv_out`` per conv, ``features`` before the head). ``rng`` feeds the
    ``'noise'`` stream of perturbations.
    """
    variables = {"params": params, **model_state}
    mutable = training_collections(model_state) if train else []
    if taps:
        mutable.append(INTERMEDIATES)
    rngs = {"noise": rng} if rng is not None else {}
    logits, updates = model.apply(variables, images, train=train, mutable=mutable, rngs=rngs)
    updates = dict(updates)
    intermediates = updates.pop(INTERMEDIATES, {})
    return logits, {**model_state, **updates}, intermediates


def split_variables(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(params, the other collections)`` of a variables dict."""
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def in_float32(model: nn.Module) -> nn.Module:
    """``model`` with its convs and matmuls in float32 (curvature is measured in float32,
    whatever ``model.compute_dtype`` a run trains with)."""
    policy = getattr(model, "policy", None)
    if policy is None or policy.compute_dtype == "float32":
        return model
    return model.clone(policy=dataclasses.replace(policy, compute_dtype="float32"))


def without_perturbations(model: nn.Module) -> nn.Module:
    """``model`` with its policy's perturbation (FPQ's SFP, DNQ's Gaussian noise) removed, the
    quantizers kept: what BatchNorm re-estimation and other clean passes in training mode run."""
    policy = getattr(model, "policy", None)
    if policy is None or policy.perturbation is None:
        return model
    return model.clone(policy=dataclasses.replace(policy, perturbation=None))
