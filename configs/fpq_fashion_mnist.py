"""FPQ (SFP + CSD from the frozen FP teacher), W4A4, small CNN on Fashion-MNIST;
pass ``--config.init_from=<FP Fashion-MNIST run of the same model>``."""

from configs import protocol


def get_config():
    config = protocol.fashion_mnist("fpq")
    # The brief's CSD reading (sum over B·H·W, divided by B) diverges at lr 0.01 (gradient
    # norm ~660 in the first step on digits); the per-element mean trains. See README.
    config.method.csd_reduction = "elements"
    return config
