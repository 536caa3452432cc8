"""FP training of the small CNN (32/64) on Fashion-MNIST: the starting point and teacher of the
``*_fashion_mnist`` QAT configs."""

from configs import protocol


def get_config():
    config = protocol.fashion_mnist("fp")
    config.optim.learning_rate = 0.05
    config.train.num_epochs = 10
    return config
