"""CIFAR-style ResNets (He et al. 2016): ResNet-20 (basic blocks, 16/32/64), and ResNet-18
(basic blocks) and ResNet-50 (bottlenecks) with the CIFAR stem (3×3 conv, no max-pool,
64/128/256/512)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.layers import QConv, QDense
from jaxquant.quant.policy import FULL_PRECISION, LayerQuant, QuantPolicy


def shortcut(x: jax.Array, features: int, strides: int, quant: LayerQuant, train: bool) -> jax.Array:
    """The residual branch: ``x``, or ``bn_proj(proj(x))`` (strided 1×1 conv) when the width
    or the resolution changes. Called inside a block's compact ``__call__``."""
    if x.shape[-1] == features and strides == 1:
        return x
    x = QConv(features, (1, 1), (strides, strides), quant=quant, name="proj")(x, train)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_proj")(x)


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; 1×1 projection when shapes change."""

    features: int
    strides: int
    policy: QuantPolicy

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        quant = self.policy.layer("middle")
        y = QConv(self.features, (3, 3), (self.strides,) * 2, quant=quant, name="conv1")(x, train)
        y = nn.relu(bn("bn1")(y))
        y = QConv(self.features, (3, 3), quant=quant, name="conv2")(y, train)
        y = bn("bn2")(y)
        return nn.relu(y + shortcut(x, self.features, self.strides, quant, train))


class Bottleneck(BasicBlock):
    """``relu(bn(conv1×1(relu(bn(conv3×3(relu(bn(conv1×1(x)))))))) + shortcut(x))`` with
    ``4·features`` outputs; the 3×3 conv strides, a 1×1 projection when shapes change."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        quant = self.policy.layer("middle")
        out = 4 * self.features
        y = nn.relu(bn("bn1")(QConv(self.features, (1, 1), quant=quant, name="conv1")(x, train)))
        y = QConv(self.features, (3, 3), (self.strides,) * 2, quant=quant, name="conv2")(y, train)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3")(QConv(out, (1, 1), quant=quant, name="conv3")(y, train))
        return nn.relu(y + shortcut(x, out, self.strides, quant, train))


class CifarResNet(nn.Module):
    """Stem conv (role ``first``), stages of ``block``, global pool, head (``last``)."""

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int = 10
    policy: QuantPolicy = FULL_PRECISION
    block: type[nn.Module] = BasicBlock

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = QConv(self.widths[0], (3, 3), quant=self.policy.layer("first"), name="stem")(x, train)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
        for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block(width, strides, self.policy, name=f"stage{i}_block{j}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", x)
        return QDense(self.num_classes, quant=self.policy.layer("last"), name="head")(x, train)


def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(stage_sizes=(3, 3, 3), widths=(16, 32, 64), **kwargs)


def resnet18(**kwargs) -> CifarResNet:
    return CifarResNet(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), **kwargs)


def resnet50(**kwargs) -> CifarResNet:
    return CifarResNet(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), block=Bottleneck, **kwargs)
