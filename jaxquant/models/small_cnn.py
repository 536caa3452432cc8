"""A small CNN for 8×8 (digits) and 28×28 (Fashion-MNIST) inputs."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.layers import QConv, QDense
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy


class SmallCNN(nn.Module):
    """conv-BN-ReLU stages (max-pool between stages on inputs ≥ 16 px), global pool, dense.

    The first conv and the classifier take the policy's ``first``/``last`` role.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64)
    policy: QuantPolicy = FULL_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, width in enumerate(self.widths):
            role = "first" if i == 0 else "middle"
            x = QConv(width, (3, 3), quant=self.policy.layer(role), name=f"conv{i}")(x, train)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
            x = nn.relu(x)
            if x.shape[1] >= 16 and i < len(self.widths) - 1:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        return QDense(self.num_classes, quant=self.policy.layer("last"), name="head")(x, train)
