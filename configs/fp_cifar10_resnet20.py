"""FP training of ResNet-20 on CIFAR-10 from TFDS (the teacher / starting point of QAT).

SGD momentum 0.9, batch 256, cosine, weight decay 5e-4, pad-crop 4 + flip (methods brief
§0); lr 0.1 and 200 epochs, the usual recipe for training CIFAR ResNets from scratch.
Data: prepare ``cifar10`` as array_record under ``data.data_dir`` (see README, "Data").
"""

import os

from jaxquant.defaults import get_config as base_config

STEPS_PER_EPOCH = 50000 // 256


def get_config():
    config = base_config()
    config.name = "fp_cifar10_resnet20"
    config.method.name = "fp"
    config.model.name = "resnet20"
    config.data.source = "tfds"
    config.data.name = "cifar10"
    config.data.data_dir = os.path.expanduser("~/tensorflow_datasets")
    config.data.batch_size = 256
    config.data.eval_batch_size = 500
    config.data.crop_padding = 4
    config.data.flip = True
    config.optim.name = "sgd"
    config.optim.momentum = 0.9
    config.optim.learning_rate = 0.1
    config.optim.schedule = "cosine"
    config.optim.weight_decay = 5e-4
    config.train.num_epochs = 200
    config.train.log_every = 100
    config.train.eval_every = 10 * STEPS_PER_EPOCH
    config.train.checkpoint_every = 5 * STEPS_PER_EPOCH
    return config
