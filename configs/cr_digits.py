"""CR (consistency with an EMA teacher over two views), W4A4, small CNN on digits, views by a
±1 px random crop; pass ``--config.init_from=<fp_digits workdir>``."""

from configs import common


def get_config():
    config = common.digits("cr")
    config.data.crop_padding = 1
    return config
