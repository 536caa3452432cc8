"""``pact``: PACT quantization-aware training (Choi et al. 2018).

Layer inputs use :func:`jaxquant.quant.kinds.pact_quantizer`: ``y = clip(x, 0, α)``,
``ŷ = ⌊y·(2^b − 1)/α⌉·α/(2^b − 1)`` with a learned clip level ``α`` per quantizer
(initialised at the calibration maximum; ``∂ŷ/∂α = 1`` where ``x ≥ α``). The loss is

    ``L = CE + (method.alpha_decay/2)·Σ_l α_l²``

(the same convention as weight decay: the penalty's gradient is ``alpha_decay·α``).

Fields: ``method.alpha_decay`` (2e-4); ``method.pact_weight_kind``: ``dorefa`` (the
paper's weight quantizer) or ``lsq``; ``method.first_last_kind`` (``lsq``): the quantizer
kind of the first conv and the classifier — a ``[0, α]`` clip would erase the negative half
of the normalised image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxquant.checks import check_choice
from jaxquant.methods.base import Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn
from jaxquant.quant.layers import QUANTIZER_KINDS

PACT_WEIGHT_KINDS = ("dorefa", "lsq")


def sum_of_squares(params, name: str) -> jax.Array:
    """``Σ v²`` over every leaf of ``params`` whose key is ``name`` (e.g. all PACT ``alpha``)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    squares = [jnp.sum(v**2) for path, v in leaves if getattr(path[-1], "key", None) == name]
    return sum(squares, jnp.zeros(()))


def check_first_last_kind(kind: str) -> None:
    """``method.first_last_kind`` must be a registered quantizer kind."""
    check_choice(kind, sorted(QUANTIZER_KINDS), "method.first_last_kind")


@register_method
class PACT(Method):
    name = "pact"
    defaults = {
        "alpha_decay": 2e-4,  # L2 penalty (alpha_decay/2)·Σα² on the clip levels
        "pact_weight_kind": "dorefa",  # weight quantizer: dorefa (the paper's) | lsq
        "first_last_kind": "lsq",  # quantizer kind of the first and last layer
    }

    def validate(self, config):
        opts = self.options(config)
        check_choice(opts.pact_weight_kind, PACT_WEIGHT_KINDS, "method.pact_weight_kind")
        check_first_last_kind(opts.first_last_kind)

    def policy(self, config):
        opts = self.options(config)
        return policy_from_config(
            config, weight_kind=opts.pact_weight_kind, act_kind="pact", first_last_kind=opts.first_last_kind
        )

    def loss_fn(self, ctx):
        supervised = supervised_loss_fn(ctx)
        decay = self.options(ctx.config).alpha_decay

        def loss_fn(params, state, batch, rng):
            ce, aux = supervised(params, state, batch, rng)
            penalty = 0.5 * sum_of_squares(params, "alpha")
            aux["metrics"]["alpha_l2"] = penalty
            aux["loss_terms"] = {**aux["loss_terms"], "alpha_l2": decay * penalty}
            return ce + decay * penalty, aux

        return loss_fn
