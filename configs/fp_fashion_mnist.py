"""Full-precision training (the FP checkpoint QAT starts from) of the small CNN on Fashion-MNIST."""

from configs import common


def get_config():
    return common.fashion_mnist("fp")
