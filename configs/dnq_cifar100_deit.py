"""DNQ (W4A4 target, weight and input noise, p = 0.5) of DeiT-Ti/4 on CIFAR-100 with the
recipe of its plain-FP twin ``configs/fp_cifar100_deit.py``; then PTQ with
``--config.mode=ptq --config.init_from=<this run>`` or ``configs/dnq_vs_fp_cifar100_deit.py``."""

from configs import fp_cifar100_deit
from jaxquant.methods.dnq import method_config


def get_config():
    config = fp_cifar100_deit.get_config()
    config.name = "dnq_cifar100_deit"
    config.method = method_config()
    return config
