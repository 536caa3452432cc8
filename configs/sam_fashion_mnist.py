"""LSQ W4A4 QAT with SAM (ρ = 0.05) of the small CNN on Fashion-MNIST;
pass ``--config.init_from=<fp_fashion_mnist workdir>``."""

from configs import common


def get_config():
    return common.fashion_mnist("sam")
