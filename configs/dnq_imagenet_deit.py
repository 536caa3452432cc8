"""DNQ fine-tuning (W4A4 target, weight and input noise) of a pretrained DeiT-S/16 on
ImageNet with the schedule of its plain-FP twin ``configs/fp_imagenet_deit.py`` (see there
for the data and checkpoint it needs); ``configs/dnq_vs_fp_imagenet_deit.py`` runs both and
their PTQ."""

from configs import fp_imagenet_deit
from jaxquant.methods.dnq import method_config


def get_config():
    config = fp_imagenet_deit.get_config()
    config.name = "dnq_imagenet_deit"
    config.method = method_config()
    return config
