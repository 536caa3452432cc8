"""LSQ W4A4 QAT of ResNet-20 on CIFAR-10, following the group protocol (methods brief §0):
from an FP run (``--config.init_from=<fp_cifar10_resnet20 workdir>``), asymmetric min/max
init on 100 training images, steps learned as in LSQ, first and last layer at 8 bits,
SGD momentum 0.9, batch 256, lr 0.01 cosine, weight decay 5e-4, 200 epochs, pad-crop 4 + flip.
Other bit widths: ``--config.quant.w_bits=2 --config.quant.a_bits=2``.
"""

from configs import fp_cifar10_resnet20


def get_config():
    config = fp_cifar10_resnet20.get_config()
    config.name = "lsq_cifar10_resnet20"
    config.method.name = "lsq"
    config.quant.w_bits = 4
    config.quant.a_bits = 4
    config.quant.first_last_bits = 8
    config.quant.init = "minmax"
    config.quant.calibration_images = 100
    config.optim.learning_rate = 0.01
    config.train.num_epochs = 200
    return config
