"""FP fine-tuning of a pretrained DeiT-S/16 on ImageNet at 224×224: the twin of
``configs/dnq_imagenet_deit.py`` (the DNQ paper's setting: ViT/DeiT on ImageNet, noise
during FP training or fine-tuning, then PTQ; our [design] reading of its schedule: 30
epochs of AdamW fine-tuning at lr 5e-5·batch/512, weight decay 0.05, 1 warm-up epoch).

``--config.init_from`` must hold a trained DeiT-S in this model's parameter layout.
Needs a prepared TFDS ``imagenet2012`` whose images are resized to 224×224: the data module
reads fixed-shape images only, so ImageNet needs a resizing source that is not built yet.
"""

import os

from jaxquant.defaults import get_config as base_config

STEPS_PER_EPOCH = 1_281_167 // 512


def get_config():
    config = base_config()
    config.name = "fp_imagenet_deit"
    config.method.name = "fp"
    config.data.source = "tfds"
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.name = "imagenet2012"
    config.data.batch_size = 512
    config.data.flip = True
    config.model.name = "deit_small"
    config.model.kwargs = {"patch_size": 16}
    config.optim.name = "adamw"
    config.optim.learning_rate = 5e-5
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = STEPS_PER_EPOCH
    config.optim.grad_clip_norm = 1.0
    config.train.num_epochs = 30
    config.train.eval_every = STEPS_PER_EPOCH
    config.train.checkpoint_every = 1000
    config.ptq.calibration_images = 1024
    return config
