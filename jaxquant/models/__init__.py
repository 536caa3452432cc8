"""Model zoo: a name → constructor factory. Every model takes ``num_classes`` and ``policy``."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn

from jaxquant.models.apply import forward, in_float32, split_variables, without_perturbations
from jaxquant.models.mobilenet import MobileNetV1, MobileNetV2
from jaxquant.models.resnet import resnet18, resnet20, resnet50
from jaxquant.models.small_cnn import SmallCNN
from jaxquant.models.vgg import cnn6
from jaxquant.models.vit import vit_micro, vit_small, vit_tiny
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "cnn6": cnn6,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v1": MobileNetV1,
    "mobilenet_v2": MobileNetV2,
    "vit_micro": vit_micro,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "deit_tiny": vit_tiny,
    "deit_small": vit_small,
}


def register_model(name: str):
    """Decorator adding a constructor ``fn(num_classes=, policy=, **kwargs)`` to the zoo."""

    def wrap(fn):
        MODELS[name] = fn
        return fn

    return wrap


def create_model(name: str, num_classes: int, policy: QuantPolicy = FULL_PRECISION, **kwargs) -> nn.Module:
    """Build model ``name``; an unknown name raises a one-line error listing the choices."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown: allowed values {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, policy=policy, **kwargs)


__all__ = [
    "MODELS",
    "create_model",
    "forward",
    "in_float32",
    "register_model",
    "split_variables",
    "without_perturbations",
]
