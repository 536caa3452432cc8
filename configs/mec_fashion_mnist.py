"""MEC-Quant (CE + MoE maximum-entropy coding vs the FP teacher's features), W4A4, small CNN on Fashion-MNIST;
pass ``--config.init_from=<FP Fashion-MNIST run of the same model>``."""

from configs import common


def get_config():
    return common.fashion_mnist("mec")
