"""DNQ vs plain FP fine-tuning of DeiT-S/16 on ImageNet, then the same PTQ (W8A8 ... W3A3)."""

from configs import dnq_imagenet_deit, fp_imagenet_deit
from configs.dnq_vs_fp_digits import comparison_pipeline


def get_config():
    return comparison_pipeline(
        dnq_imagenet_deit.get_config(), fp_imagenet_deit.get_config(), "dnq_vs_fp_imagenet_deit"
    )
