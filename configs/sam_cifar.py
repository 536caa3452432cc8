"""LSQ W4A4 QAT with SAM (ρ = 0.05) on CIFAR, group protocol; pass ``--config.init_from=<fp_cifar workdir>``.

``--config configs/sam_cifar.py:<cifar10|cifar100>,<resnet18|resnet50|mobilenet_v1|mobilenet_v2>``
(default ``cifar10,resnet18``) and ``--config.data.data_dir=<TFDS folder>``.
"""

from configs import common


def get_config(arg=None):
    return common.cifar("sam", arg)
