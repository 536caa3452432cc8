"""FP training of ResNet-18 (CIFAR stem) on CIFAR-10 from TFDS; same recipe as
``fp_cifar10_resnet20`` (SGD momentum 0.9, batch 256, lr 0.1 cosine, wd 5e-4, 200 epochs,
pad-crop 4 + flip)."""

from configs import fp_cifar10_resnet20


def get_config():
    config = fp_cifar10_resnet20.get_config()
    config.name = "fp_cifar10_resnet18"
    config.model.name = "resnet18"
    return config
