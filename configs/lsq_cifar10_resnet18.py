"""LSQ W4A4 QAT of ResNet-18 (CIFAR stem) on CIFAR-10 with the group protocol (methods brief
§0), the setting of the FPQ paper's main table; from an FP run
(``--config.init_from=<fp_cifar10_resnet18 workdir>``). W2A4 / W2A2 by overriding
``quant.w_bits`` / ``quant.a_bits``."""

from configs import lsq_cifar10_resnet20


def get_config():
    config = lsq_cifar10_resnet20.get_config()
    config.name = "lsq_cifar10_resnet18"
    config.model.name = "resnet18"
    return config
