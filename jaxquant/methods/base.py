"""What a training method is, and the single registry that maps ``config.method.name`` to it.

A method is a composition of pure loss terms. The generic train step only calls:

* ``method.policy(config)`` — the student's :class:`~jaxquant.quant.QuantPolicy`;
* ``method.uses_teacher(config)`` — whether the frozen FP model of ``config.init_from`` is
  needed (``needs_teacher`` unless a method decides per config);
* ``method.extra_params(ctx)`` — trainable leaves the method owns (e.g. MoE gate logits),
  added as top-level entries of ``params`` next to the model's;
* ``method.init_extra(ctx, variables, teacher_variables)`` — method-owned state kept in
  ``TrainState.extra`` (an FP teacher's variables, an EMA teacher, ...), checkpointed;
* ``method.loss_fn(ctx)`` → ``loss_fn(params, state, batch, rng) -> (loss, aux)`` where
  ``aux = {'model_state': ..., 'metrics': {...}}``;
* ``method.grads(ctx, loss_fn, params, state, batch, rng)`` — defaults to
  ``jax.value_and_grad``; SAM-like methods override it;
* ``method.update_extra(ctx, state)`` — after the optimiser step (EMA updates).

A method's own fields live in ``config.method`` next to ``name``: ``Method.defaults`` is the
one place that declares them, with their defaults; ``method.options(config)`` reads them
(defaults filled in where the config lacks a field; a key that is not one of them is an
error) and ``method.default_config()`` is the block an experiment config starts from.

Adding a method means adding one file in this package that calls :func:`register_method`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import ml_collections

from jaxquant.checks import closest
from jaxquant.defaults import get_config
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy

LossFn = Callable[..., tuple[jax.Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What a method may use to build its loss: the config, the built models, the run's
    length and the training images' crop-padding value (:attr:`Split.pad_value`)."""

    config: ml_collections.ConfigDict
    model: nn.Module
    teacher_model: nn.Module | None = None
    total_steps: int = 0
    pad_value: float = 0.0


def policy_from_config(config: ml_collections.ConfigDict, **overrides) -> QuantPolicy:
    """The quantization policy described by ``config.quant`` (docs/methods.md §0 defaults)."""
    q = config.quant
    fields = dict(
        w_bits=q.w_bits,
        a_bits=q.a_bits,
        first_last_bits=q.first_last_bits,
        weight_granularity=q.weight_granularity,
        act_granularity=q.act_granularity,
        scheme=q.scheme,
        init=q.init,
        grad_scale=q.grad_scale,
        act_grad_scale_elements=q.act_grad_scale_elements,
    )
    fields.update(overrides)
    return QuantPolicy(**fields)


class Method:
    """Base class with the defaults of plain supervised training (cross-entropy)."""

    name: str = ""
    needs_teacher: bool = False
    defaults: ClassVar[dict[str, Any]] = {}
    # top-level ``params`` entries that :meth:`extra_params` adds (not part of the model)
    param_names: ClassVar[tuple[str, ...]] = ()

    def default_config(self) -> ml_collections.ConfigDict:
        """``config.method`` for this method: the shared block of :mod:`jaxquant.defaults`
        with ``name`` set and this method's own ``defaults`` added."""
        block = get_config().method
        block.name = self.name
        block.update(self.defaults)
        return block

    def options(self, config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
        """This method's own fields: ``defaults`` overridden by what ``config.method`` sets.

        The block holds this method's fields only: any other key is a one-line error naming
        it, the closest field names and all of them."""
        unknown = sorted(set(config.method) - set(self.defaults) - {"name"})
        if unknown:
            raise ValueError(
                f"method.{unknown[0]} is not a field of method {self.name!r}"
                f"{closest(unknown[0], self.defaults)}: its fields are {sorted(self.defaults)}"
            )
        given = {k: config.method[k] for k in self.defaults if k in config.method}
        return ml_collections.FrozenConfigDict({**self.defaults, **given})

    def uses_teacher(self, config: ml_collections.ConfigDict) -> bool:
        """Whether this run needs the frozen FP teacher built from ``config.init_from``."""
        return self.needs_teacher

    def policy(self, config: ml_collections.ConfigDict) -> QuantPolicy:
        return FULL_PRECISION

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """Raise a one-line error for an unknown field or a bad value of one of this method's
        fields (subclasses add their value checks after calling this)."""
        self.options(config)

    def extra_params(self, ctx: MethodContext) -> dict[str, Any]:
        """Trainable top-level ``params`` entries owned by the method (none by default)."""
        return {}

    def init_extra(self, ctx: MethodContext, variables: dict[str, Any], teacher_variables) -> Any:
        return {}

    def loss_fn(self, ctx: MethodContext) -> LossFn:
        raise NotImplementedError

    def grads(self, ctx: MethodContext, loss_fn: LossFn, params, state, batch, rng):
        """``((loss, aux), grads)`` of ``loss_fn`` at ``params``."""
        return jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch, rng)

    def update_extra(self, ctx: MethodContext, state) -> Any:
        return state.extra


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``config.method.name = cls.name``."""
    METHODS[cls.name] = cls()
    return cls


def method_param_names() -> frozenset[str]:
    """Every registered method's own top-level ``params`` names (left out when a checkpoint's
    weights are loaded into a model)."""
    return frozenset(name for method in METHODS.values() for name in method.param_names)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method.name={name!r} is unknown: allowed values {sorted(METHODS)}")
    return METHODS[name]
