"""Full-precision training (the FP checkpoint QAT starts from) on CIFAR, group protocol.

``--config configs/fp_cifar.py:<cifar10|cifar100>,<resnet18|resnet50|mobilenet_v1|mobilenet_v2>``
(default ``cifar10,resnet18``) and ``--config.data.data_dir=<TFDS folder>``.
"""

from configs import common


def get_config(arg=None):
    return common.cifar("fp", arg)
