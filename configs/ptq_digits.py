"""Post-training quantization of a digits run at W8A8, W6A6, W4A4, W3A3:
``--config.init_from=<fp_digits or dnq_digits workdir>``; ``--config.ptq.observer`` picks
``minmax`` (default), ``percentile`` or ``mse``."""

from configs import common


def get_config():
    config = common.digits("fp")
    config.name = "ptq_digits"
    config.mode = "ptq"
    return config
