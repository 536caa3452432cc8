"""FP training (the QAT starting point) of resnet20 on CIFAR-10 under the group protocol
(configs/common.py::cifar)."""

from configs import common


def get_config():
    return common.cifar("fp", "cifar10,resnet20")
