"""Calibration: set every quantizer's step and zero point from a batch of training images."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxquant.quant.layers import QUANT_STATE


def calibrate(model: nn.Module, variables: dict[str, Any], images: np.ndarray | jax.Array):
    """Return ``variables`` with each quantizer re-initialised on ``images``.

    Runs the model in eval mode with ``params`` and ``quant_state`` mutable; each
    quantizer then recomputes ``(step, zero_point)`` from the tensor it sees with its
    init rule and observer (min/max by default, docs/methods.md §0). Statistics are taken over
    the whole (global) batch, also when it is sharded over devices.
    """

    @jax.jit
    def run(variables, images):
        _, updates = model.apply(variables, images, train=False, mutable=["params", QUANT_STATE])
        return {**variables, **updates}

    return run(variables, images)
