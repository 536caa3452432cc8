"""LSQ W4A4 QAT of the small CNN on digits; pass ``--config.init_from=<fp_digits workdir>``."""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "lsq_digits"
    config.method.name = "lsq"
    config.quant.w_bits = 4
    config.quant.a_bits = 4
    config.optim.learning_rate = 0.01
    config.train.num_epochs = 10
    return config
