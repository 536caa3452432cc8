"""LSQ W4A4 QAT (from --config.init_from=<fp_cifar10_resnet18 workdir>) of resnet18 on CIFAR-10 under
the group protocol (configs/common.py::cifar)."""

from configs import common


def get_config():
    return common.cifar("lsq", "cifar10,resnet18")
