"""Shared experiment settings: the recipes behind the parametrised configs
(``configs/digits.py:<method>``, ``fashion_mnist.py:<method>[,<model>]``,
``cifar.py:<method>[,<dataset>[,<model>]]``, ``dnq.py:<fp|dnq>[,<recipe>]``,
``dnq_vs_fp.py:<recipe>``).

* :func:`digits`: the small CNN on scikit-learn digits (offline; tests and demos);
* :func:`fashion_mnist`: the small CNN on Fashion-MNIST (the first study);
* :func:`fashion_cnn6`: the study model ``cnn6`` on Fashion-MNIST;
* :func:`dnq_recipe`: the FP/DNQ twins (small CNN and micro ViT on Fashion-MNIST, DeiT on
  CIFAR-100 and ImageNet);
* :func:`cifar`: the group protocol (docs/methods.md §0) on CIFAR-10/100 with a ResNet or a
  MobileNet: W4A4 (override ``quant.w_bits``/``quant.a_bits`` for W2A4, W2A2), first and
  last layer 8-bit, SGD momentum 0.9, lr 0.01, cosine, weight decay 5e-4, batch 256,
  200 epochs, crop + flip, read from a prepared TFDS folder (``--config.data.data_dir``).

QAT configs start from an FP run of the same data and model: ``--config.init_from=<dir>``.
"""

from __future__ import annotations

import os

import ml_collections

from jaxquant.defaults import get_config as base_config
from jaxquant.methods import get_method

FP_LEARNING_RATE = 0.05  # FP pretraining of the small CNN (digits, Fashion-MNIST)
FP_TRAINING = ("fp", "dnq")  # methods that train the full-precision network (FP recipes)
FP_CIFAR_LEARNING_RATE = 0.1


def experiment(method: str, name: str) -> ml_collections.ConfigDict:
    """The base config with ``method``'s block (every field at its default, see
    ``Method.default_config``) and the run named ``<method>_<name>``."""
    config = base_config()
    config.name = f"{method}_{name}"
    config.method = get_method(method).default_config()
    return config


def digits(method: str) -> ml_collections.ConfigDict:
    """``method`` (QAT at W4A4, lr 0.01, 10 epochs; FP: lr 0.05, 30 epochs) on digits."""
    config = experiment(method, "digits")
    config.optim.learning_rate = FP_LEARNING_RATE if method in FP_TRAINING else 0.01
    config.train.num_epochs = 30 if method in FP_TRAINING else 10
    if method == "cr":
        config.data.crop_padding = 1  # CR's two views: ±1 px random crops of the 8×8 digits
    return config


def fashion_mnist(method: str) -> ml_collections.ConfigDict:
    """``method`` on Fashion-MNIST with the small CNN (32/64 channels), batch 256 (235 steps
    per epoch), pad-2 crops and flips; QAT 10 epochs at lr 0.01, FP 20 epochs at lr 0.05."""
    config = experiment(method, "fashion_mnist")
    config.data.name = "fashion_mnist"
    config.data.batch_size = 256
    config.data.eval_batch_size = 1000
    config.data.crop_padding = 2
    config.data.flip = True
    config.optim.learning_rate = FP_LEARNING_RATE if method in FP_TRAINING else 0.01
    config.train.num_epochs = 20 if method in FP_TRAINING else 10
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    return config


def fashion(method: str, model: str | None = None) -> ml_collections.ConfigDict:
    """``method`` on Fashion-MNIST with ``model``: ``small_cnn`` (default, :func:`fashion_mnist`)
    or ``cnn6`` (:func:`fashion_cnn6`)."""
    recipes = {"small_cnn": fashion_mnist, "cnn6": fashion_cnn6}
    if (model or "small_cnn") not in recipes:
        raise ValueError(
            f"configs/fashion_mnist.py:<method>,<model>: model {model!r} is not one of {sorted(recipes)}"
        )
    return recipes[model or "small_cnn"](method)


CNN6_FP_LEARNING_RATE = 0.1
CNN6_FP_EPOCHS = 10
CNN6_QAT_EPOCHS = 3


def fashion_cnn6(method: str) -> ml_collections.ConfigDict:
    """``method`` on Fashion-MNIST with the study model ``cnn6`` (six convs, five of them
    low-bit; ``jaxquant/models/vgg.py``): batch 256, pad-2 crops and flips as
    :func:`fashion_mnist`; FP 10 epochs at lr 0.1, QAT 3 epochs at lr 0.01 (W2A2 by default),
    test accuracy every epoch."""
    config = fashion_mnist(method)
    config.name = f"{method}_fashion_cnn6"
    config.model.name = "cnn6"
    config.model.kwargs = {}
    if method in FP_TRAINING:
        config.optim.learning_rate = CNN6_FP_LEARNING_RATE
        config.train.num_epochs = CNN6_FP_EPOCHS
    else:
        config.quant.w_bits = config.quant.a_bits = 2
        config.train.num_epochs = CNN6_QAT_EPOCHS
    config.train.eval_every = 234  # one epoch at batch 256
    config.train.log_every = 117
    return config


def cifar(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``method`` under the group protocol; ``arg = "<dataset>,<model>"`` (default
    ``cifar10,resnet18``), e.g. ``--config configs/cifar.py:pact,cifar100,mobilenet_v2``.
    The names are checked when the run is built (``model.name``, ``data.name``)."""
    dataset, _, model = (arg or "cifar10,resnet18").partition(",")
    dataset, model = dataset or "cifar10", model or "resnet18"
    config = experiment(method, f"{dataset}_{model}")
    config.model.name = model
    config.data.source = "tfds"
    config.data.name = dataset
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.batch_size = 256
    config.data.eval_batch_size = 500
    config.data.crop_padding = 4
    config.data.flip = True
    config.optim.learning_rate = FP_CIFAR_LEARNING_RATE if method in FP_TRAINING else 0.01
    config.train.num_epochs = 200
    config.train.log_every = 100
    config.train.eval_every = 1960  # 10 epochs of CIFAR at batch 256
    config.train.checkpoint_every = 1000
    if method == "mec":
        # The Taylor log-det needs ‖C_k‖₂ < 1, and ‖C_k‖₂ ≈ (d_k/ε²)·(mean cosine of the
        # features): non-negative (post-ReLU) penultimate features have a mean cosine ≈ 0.8
        # (measured on digits), so d_k = 128 (ResNet-18, K = 4) gives ≈ 1.6 and the series
        # diverges. slogdet on the d_k × d_k Gram is exact at any norm and cheap at this size.
        config.method.logdet = "exact"
    return config
