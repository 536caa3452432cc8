"""FPQ (SFP + CSD from the frozen FP teacher), W4A4, small CNN on digits;
pass ``--config.init_from=<fp_digits workdir>``."""

from configs import common


def get_config():
    return common.digits("fpq")
