"""The train state: everything a run needs to continue, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """``step``; trained ``params``; non-trained ``model_state`` collections (``batch_stats``,
    ``quant_state``); ``opt_state``; method-owned ``extra`` (teachers, EMA); base ``rng``."""

    step: jax.Array
    params: Any
    model_state: dict[str, Any]
    opt_state: Any
    extra: Any
    rng: jax.Array

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, **self.model_state}
