"""FP training of the small CNN on Fashion-MNIST (local IDX files, offline).

Group protocol (methods brief §0) except the length: SGD momentum 0.9, batch 256, cosine,
weight decay 5e-4; lr 0.05 and 30 epochs for FP training from scratch (CPU scale: one
epoch is 234 steps, a few minutes on 2 CPU cores). Pad-crop 2 + flip.
Data: ``apt-get install -y dataset-fashion-mnist`` or ``--config.data.data_dir=<IDX folder>``.
"""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "fp_fashion_mnist"
    config.method.name = "fp"
    config.model.name = "small_cnn"
    config.model.kwargs = {"widths": (32, 64)}
    config.data.source = "local"
    config.data.name = "fashion_mnist"
    config.data.batch_size = 256
    config.data.eval_batch_size = 500
    config.data.crop_padding = 2
    config.data.flip = True
    config.optim.learning_rate = 0.05
    config.train.num_epochs = 30
    config.train.eval_every = 5 * 234  # every 5 epochs (234 steps per epoch)
    config.train.checkpoint_every = 234
    return config
