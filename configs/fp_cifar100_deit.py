"""Plain FP training of DeiT-Ti with 4×4 patches (8×8 patches + class token) on CIFAR-100:
the twin of ``configs/dnq_cifar100_deit.py``.

DeiT recipe where our pipeline has it (Touvron et al. 2021): AdamW, lr 5e-4·batch/512,
weight decay 0.05, 5 warm-up epochs, cosine, gradient clipping; random crop and flip
(no RandAugment, mixup or repeated augmentation here). 200 epochs at batch 256. Switch to
ViT with ``--config.model.name=vit_tiny`` or a bigger model with ``deit_small``.
Needs a prepared TFDS ``cifar100`` under ``--config.data.data_dir``.
"""

import os

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "fp_cifar100_deit"
    config.method.name = "fp"
    config.data.source = "tfds"
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.name = "cifar100"
    config.data.batch_size = 256
    config.data.crop_padding = 4
    config.data.flip = True
    config.model.name = "deit_tiny"
    config.model.kwargs = {"patch_size": 4}
    config.optim.name = "adamw"
    config.optim.learning_rate = 5e-4 * 256 / 512
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 5 * 195
    config.optim.grad_clip_norm = 1.0
    config.train.num_epochs = 200
    config.train.eval_every = 5 * 195
    config.train.checkpoint_every = 1000
    return config
