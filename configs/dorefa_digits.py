"""DoReFa W4A4 QAT of the small CNN on scikit-learn digits;
pass ``--config.init_from=<fp_digits workdir>``."""

from configs import common


def get_config():
    return common.digits("dorefa")
