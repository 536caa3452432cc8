"""PACT W4A4 QAT (learned clip level α, DoReFa weights) of the small CNN on scikit-learn digits;
pass ``--config.init_from=<fp_digits workdir>``."""

from configs import common


def get_config():
    return common.digits("pact")
