"""FPQ (SFP + CSD from the frozen FP teacher) on CIFAR under the group protocol.

``--config configs/fpq_cifar.py:<cifar10|cifar100>,<resnet18|mobilenet_v2>`` (default
``cifar10,resnet18``), W4A4; W2A4/W2A2 with ``--config.quant.w_bits=2 [--config.quant.a_bits=2]``;
pass ``--config.init_from=<FP run>`` and ``--config.data.data_dir``.
"""

from configs import common


def get_config(arg: str = ""):
    return common.cifar("fpq", arg)
