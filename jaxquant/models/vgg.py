"""A VGG-style CNN with several low-bit convs: the Fashion-MNIST study model.

``cnn6`` (the default stages) has six 3×3 convs in three stages of two, 2×2 max-pool between
the stages (28 → 14 → 7 pixels), global average pool and a dense head. The first conv and
the head take the policy's ``first``/``last`` role (8-bit in the group protocol), so "W2A2"
quantizes five convs at 2 bits — unlike :class:`~jaxquant.models.small_cnn.SmallCNN`, whose
only low-bit layer is its second conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.layers import QConv, QDense
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy


class StagedCNN(nn.Module):
    """Stages of conv-BN-ReLU layers, a 2×2 max-pool after every stage but the last, global
    average pool, dense head. ``stages`` lists each stage's conv widths."""

    num_classes: int = 10
    stages: Sequence[Sequence[int]] = ((16, 16), (32, 32), (64, 64))
    policy: QuantPolicy = FULL_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        index = 0
        for stage, widths in enumerate(self.stages):
            for width in widths:
                role = "first" if index == 0 else "middle"
                x = QConv(width, (3, 3), quant=self.policy.layer(role), name=f"conv{index}")(x, train)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{index}")(x)
                x = nn.relu(x)
                index += 1
            if stage < len(self.stages) - 1:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        return QDense(self.num_classes, quant=self.policy.layer("last"), name="head")(x, train)


def cnn6(**kwargs) -> StagedCNN:
    """Six convs (16, 16 | 32, 32 | 64, 64): five of them low-bit under W/A policies."""
    return StagedCNN(**kwargs)
