"""Every experiment config loads, names a registered method and model, and CIFAR configs
take ``<dataset>,<model>``."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from jaxquant.methods import METHODS
from jaxquant.models import MODELS

CONFIGS = sorted(
    p.stem
    for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
    if p.stem not in ("__init__", "common")
)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.method.name in METHODS
    assert config.model.name in MODELS


@pytest.mark.parametrize("method", ["fp", "lsq", "lsq_plus", "pact", "dorefa", "sam"])
def test_cifar_protocol(method):
    config = importlib.import_module(f"configs.{method}_cifar").get_config("cifar100,mobilenet_v2")
    assert (config.data.source, config.data.name, config.model.name) == ("tfds", "cifar100", "mobilenet_v2")
    assert (config.quant.w_bits, config.quant.a_bits, config.quant.first_last_bits) == (4, 4, 8)
    assert (config.data.batch_size, config.train.num_epochs, config.optim.weight_decay) == (256, 200, 5e-4)
    assert config.optim.learning_rate == (0.1 if method == "fp" else 0.01)
    assert importlib.import_module(f"configs.{method}_cifar").get_config().model.name == "resnet18"
