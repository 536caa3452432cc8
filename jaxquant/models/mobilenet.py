"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018) for 32×32 inputs.

CIFAR variants: the stem is a stride-1 3×3 conv (ImageNet: stride 2), and MobileNetV2's
second stage keeps stride 1, so a 32×32 image reaches the head at 2×2 (V1) or 4×4 (V2).
Depthwise convolutions are :class:`~jaxquant.quant.layers.QConv` with
``feature_group_count`` = channels. The stem conv takes the policy's ``first`` role, the
classifier ``last``, every other conv ``middle``. ``width_multiplier`` scales every width
(rounded to a multiple of 8), except MobileNetV2's last 1×1 conv, which keeps 1280 channels
for multipliers below 1 as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.layers import QConv, QDense
from jaxquant.quant.policy import FULL_PRECISION, LayerQuant, QuantPolicy

# MobileNetV1 after the stem: (channels, stride) of each depthwise-separable block.
V1_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)
# MobileNetV2 after the stem: (expansion t, channels c, repeats n, first stride s).
V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
V2_LAST_CHANNELS = 1280


def scaled_channels(channels: int, width_multiplier: float, divisor: int = 8) -> int:
    """``channels·width_multiplier`` rounded to the nearest multiple of ``divisor`` (at least
    ``divisor``, and never below 90% of the unrounded value), as in the MobileNetV2 reference."""
    value = channels * width_multiplier
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBN(nn.Module):
    """``activation(BN(QConv(x)))``; ``groups`` = channels makes it depthwise."""

    features: int
    kernel_size: int
    quant: LayerQuant
    strides: int = 1
    groups: int = 1
    activation: Callable[[jax.Array], jax.Array] | None = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k, s = self.kernel_size, self.strides
        x = QConv(
            self.features, (k, k), (s, s), feature_group_count=self.groups, quant=self.quant, name="conv"
        )(x, train)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        return x if self.activation is None else self.activation(x)


class MobileNet(nn.Module):
    """Fields and classifier shared by both versions."""

    num_classes: int = 10
    width_multiplier: float = 1.0
    policy: QuantPolicy = FULL_PRECISION

    def classify(self, x: jax.Array, train: bool) -> jax.Array:
        """Global average pool, sow ``features``, then the classifier (role ``last``)."""
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        return QDense(self.num_classes, quant=self.policy.layer("last"), name="head")(x, train)


class MobileNetV1(MobileNet):
    """Stem conv, 13 depthwise-separable blocks (3×3 depthwise, 1×1 pointwise), pool, head."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        middle = self.policy.layer("middle")
        channels = scaled_channels(32, self.width_multiplier)
        x = ConvBN(channels, 3, self.policy.layer("first"), name="stem")(x, train)
        for i, (width, stride) in enumerate(V1_BLOCKS):
            x = ConvBN(channels, 3, middle, stride, groups=channels, name=f"block{i}_dw")(x, train)
            channels = scaled_channels(width, self.width_multiplier)
            x = ConvBN(channels, 1, middle, name=f"block{i}_pw")(x, train)
        return self.classify(x, train)


class InvertedResidual(nn.Module):
    """1×1 expansion (ReLU6), 3×3 depthwise (ReLU6), linear 1×1 projection; the input is
    added back when the stride is 1 and the width does not change."""

    features: int
    expansion: int
    strides: int
    quant: LayerQuant

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        hidden = x.shape[-1] * self.expansion
        y = x
        if self.expansion != 1:
            y = ConvBN(hidden, 1, self.quant, activation=nn.relu6, name="expand")(y, train)
        y = ConvBN(hidden, 3, self.quant, self.strides, groups=hidden, activation=nn.relu6, name="dw")(
            y, train
        )
        y = ConvBN(self.features, 1, self.quant, activation=None, name="project")(y, train)
        if self.strides == 1 and x.shape[-1] == self.features:
            y = y + x
        return y


class MobileNetV2(MobileNet):
    """Stem conv, 17 inverted-residual blocks, 1×1 conv to 1280, pool, head."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        middle = self.policy.layer("middle")
        stem = scaled_channels(32, self.width_multiplier)
        x = ConvBN(stem, 3, self.policy.layer("first"), activation=nn.relu6, name="stem")(x, train)
        for i, (expansion, width, repeats, stride) in enumerate(V2_STAGES):
            channels = scaled_channels(width, self.width_multiplier)
            for j in range(repeats):
                strides = stride if j == 0 else 1
                x = InvertedResidual(channels, expansion, strides, middle, name=f"stage{i}_block{j}")(
                    x, train
                )
        last = scaled_channels(V2_LAST_CHANNELS, max(1.0, self.width_multiplier))
        x = ConvBN(last, 1, middle, activation=nn.relu6, name="last_conv")(x, train)
        return self.classify(x, train)
