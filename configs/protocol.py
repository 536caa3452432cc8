"""Shared settings of the QAT experiment configs, so each method's config only names the method.

* :func:`digits` — the small CNN on scikit-learn digits (offline, seconds; tests and demos);
* :func:`fashion_mnist` — the small CNN on Fashion-MNIST, sized for a laptop CPU (one QAT
  epoch in about a minute on 2 cores);
* :func:`cifar` — the group protocol (methods brief §0) on CIFAR-10/100: ResNet-18 or
  MobileNetV2, SGD momentum 0.9, lr 0.01, cosine, weight decay 5e-4, batch 256, 200 epochs,
  first and last layer at 8 bits, W4A4 by default (W2A4/W2A2 by overriding
  ``quant.w_bits``/``quant.a_bits``), TFDS data.

Every helper starts from :func:`jaxquant.defaults.get_config` and puts the method's block,
with all of its fields at their defaults, in ``config.method``.
"""

from jaxquant.defaults import get_config as base_config
from jaxquant.methods import get_method

CIFAR_DATASETS = ("cifar10", "cifar100")
CIFAR_MODELS = ("resnet18", "mobilenet_v2")


def qat(method: str, name: str):
    """The base config with ``method``'s block, W4A4."""
    config = base_config()
    config.name = name
    config.method = get_method(method).default_config()
    config.quant.w_bits = 4
    config.quant.a_bits = 4
    return config


def digits(method: str):
    """QAT of the small CNN on digits for 10 epochs; pass ``--config.init_from=<fp_digits run>``."""
    config = qat(method, f"{method}_digits")
    config.optim.learning_rate = 0.01
    config.train.num_epochs = 10
    return config


def fashion_mnist(method: str):
    """QAT of the small CNN (32/64) on Fashion-MNIST, batch 128, 5 epochs, crop ±2 px."""
    config = qat(method, f"{method}_fashion_mnist")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.data.crop_padding = 2
    config.optim.learning_rate = 0.01
    config.train.num_epochs = 5
    config.train.log_every = 100
    config.train.checkpoint_every = 500
    return config


def cifar(method: str, arg: str = ""):
    """The group protocol; ``arg`` = ``"<dataset>,<model>"`` (default ``cifar10,resnet18``),
    e.g. ``--config configs/fpq_cifar.py:cifar100,mobilenet_v2``."""
    dataset, model = (arg or "cifar10,resnet18").split(",")
    if dataset not in CIFAR_DATASETS or model not in CIFAR_MODELS:
        raise ValueError(
            f"config argument {arg!r}: use '<dataset>,<model>' with dataset in {list(CIFAR_DATASETS)} "
            f"and model in {list(CIFAR_MODELS)}"
        )
    config = qat(method, f"{method}_{dataset}_{model}")
    config.model.name = model
    config.data.source = "tfds"
    config.data.name = dataset
    config.data.batch_size = 256
    config.data.eval_batch_size = 500
    config.data.crop_padding = 4
    config.data.flip = True
    config.optim.name = "sgd"
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 5e-4
    config.train.num_epochs = 200
    config.train.log_every = 100
    config.train.eval_every = 1950
    config.train.checkpoint_every = 1950
    return config
