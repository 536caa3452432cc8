"""Plain FP training of the small CNN (32/64 channels) on Fashion-MNIST: the twin of
``configs/dnq_fashion_cnn.py`` (``apt-get install dataset-fashion-mnist``)."""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "fp_fashion_cnn"
    config.method.name = "fp"
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.model.kwargs = {"widths": (32, 64)}
    config.optim.learning_rate = 0.05
    config.train.num_epochs = 5
    config.train.checkpoint_every = 500
    return config
