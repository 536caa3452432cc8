"""FP training of the small CNN on scikit-learn digits (offline, ~20 s on a laptop CPU)."""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "fp_digits"
    config.method.name = "fp"
    config.optim.learning_rate = 0.05
    config.train.num_epochs = 30
    return config
