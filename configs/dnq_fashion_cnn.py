"""DNQ (W4A4 target, weight and input noise) of the small CNN on Fashion-MNIST; the same
seed, steps and optimiser as its plain-FP twin ``configs/fp_fashion_cnn.py``."""

from configs import fp_fashion_cnn
from jaxquant.methods.dnq import method_config


def get_config():
    config = fp_fashion_cnn.get_config()
    config.name = "dnq_fashion_cnn"
    config.method = method_config()
    return config
