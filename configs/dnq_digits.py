"""DNQ on digits: the small CNN of ``fp_digits`` trained in full precision with
quantizer-matched Gaussian noise (W4A4 target, both weight and input noise). Same seed,
steps and optimiser as its plain-FP twin ``configs/fp_digits.py``; quantize the result with
``configs/ptq_digits.py`` (or run both at once with ``configs/dnq_vs_fp_digits.py``)."""

from configs import fp_digits
from jaxquant.methods.dnq import method_config


def get_config():
    config = fp_digits.get_config()
    config.name = "dnq_digits"
    config.method = method_config()
    return config
