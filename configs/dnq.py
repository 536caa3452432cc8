"""The FP/DNQ twins: plain FP training and DNQ (quantizer-matched noise, W4A4 target) with
the same seed, steps and optimiser, per recipe:

    --config configs/dnq.py:<fp|dnq>[,<recipe>]     (default: dnq,fashion_cnn)

* ``digits``: the small CNN on digits (``configs/digits.py:fp`` / ``:dnq``);
* ``fashion_cnn``: the small CNN (32/64 channels) on Fashion-MNIST, batch 128, lr 0.05,
  5 epochs;
* ``fashion_vit``: a micro ViT (patch 4 → 7×7 patches + class token, width 64, 4 blocks,
  4 heads) on Fashion-MNIST with AdamW;
* ``cifar100_deit``: DeiT-Ti with 4×4 patches on CIFAR-100, the DeiT recipe where our
  pipeline has it (Touvron et al. 2021): AdamW, lr 5e-4·batch/512, weight decay 0.05,
  5 warm-up epochs, cosine, gradient clipping; crop and flip (no RandAugment, mixup or
  repeated augmentation), 200 epochs at batch 256; a prepared TFDS ``cifar100`` under
  ``--config.data.data_dir``;
* ``imagenet_deit``: FP fine-tuning of a pretrained DeiT-S/16 on ImageNet at 224×224 (the
  DNQ paper's setting; our [design] reading of its schedule: 30 epochs of AdamW at lr
  5e-5·batch/512, weight decay 0.05, 1 warm-up epoch). ``--config.init_from`` must hold a
  trained DeiT-S in this model's parameter layout, and a prepared TFDS ``imagenet2012``
  resized to 224×224 (the data module reads fixed-shape images only).

Quantize a result with ``--config.mode=ptq --config.init_from=<run>`` or run both twins and
their PTQ at once with ``configs/dnq_vs_fp.py:<recipe>``.
"""

import os

from configs import common
from jaxquant.defaults import get_config as base_config
from jaxquant.methods import get_method
from jaxquant.methods.dnq import method_config

IMAGENET_STEPS_PER_EPOCH = 1_281_167 // 512


def vit_recipe(name: str, model: str, patch_size: int, learning_rate: float, warmup_steps: int, **kwargs):
    """The ViT/DeiT recipes' shared part: AdamW at ``learning_rate`` with weight decay 0.05,
    linear warm-up for ``warmup_steps``, gradient clipping at 1; ``kwargs`` more model sizes."""
    config = base_config()
    config.name = name
    config.method.name = "fp"
    config.model.name = model
    config.model.kwargs = {"patch_size": patch_size, **kwargs}
    config.optim.name = "adamw"
    config.optim.learning_rate = learning_rate
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = warmup_steps
    config.optim.grad_clip_norm = 1.0
    return config


def tfds(config, name: str, batch_size: int):
    """Read TFDS ``name`` from ``~/tensorflow_datasets`` at ``batch_size``."""
    config.data.source = "tfds"
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.name = name
    config.data.batch_size = batch_size


def fashion_cnn():
    config = base_config()
    config.name = "fashion_cnn"
    config.method.name = "fp"
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.model.kwargs = {"widths": (32, 64)}
    config.optim.learning_rate = 0.05
    config.train.num_epochs = 5
    config.train.checkpoint_every = 500
    return config


def fashion_vit():
    config = vit_recipe("fashion_vit", "vit_micro", 4, 1e-3, 200, hidden=64, depth=4, heads=4)
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.train.num_epochs = 5
    config.train.checkpoint_every = 500
    return config


def cifar100_deit():
    config = vit_recipe("cifar100_deit", "deit_tiny", 4, 5e-4 * 256 / 512, 5 * 195)
    tfds(config, "cifar100", 256)
    config.data.crop_padding = 4
    config.data.flip = True
    config.train.num_epochs = 200
    config.train.eval_every = 5 * 195
    config.train.checkpoint_every = 1000
    return config


def imagenet_deit():
    config = vit_recipe("imagenet_deit", "deit_small", 16, 5e-5, IMAGENET_STEPS_PER_EPOCH)
    tfds(config, "imagenet2012", 512)
    config.data.flip = True
    config.train.num_epochs = 30
    config.train.eval_every = IMAGENET_STEPS_PER_EPOCH
    config.train.checkpoint_every = 1000
    config.ptq.calibration_images = 1024
    return config


RECIPES = {
    "digits": lambda: common.digits("fp"),
    "fashion_cnn": fashion_cnn,
    "fashion_vit": fashion_vit,
    "cifar100_deit": cifar100_deit,
    "imagenet_deit": imagenet_deit,
}


def twin(method: str, recipe: str):
    """The ``recipe`` trained as ``method`` (``fp`` or ``dnq``), named ``<method>_<recipe>``."""
    if method not in ("fp", "dnq"):
        raise ValueError(f"configs/dnq.py:<method>,<recipe>: method {method!r} is not 'fp' or 'dnq'")
    if recipe not in RECIPES:
        raise ValueError(
            f"configs/dnq.py:<method>,<recipe>: recipe {recipe!r} is not one of {sorted(RECIPES)}"
        )
    config = RECIPES[recipe]()
    config.name = f"{method}_{recipe}"
    config.method = method_config() if method == "dnq" else get_method("fp").default_config()
    return config


def get_config(arg: str | None = None):
    method, _, recipe = (arg or "dnq,fashion_cnn").partition(",")
    return twin(method or "dnq", recipe or "fashion_cnn")
