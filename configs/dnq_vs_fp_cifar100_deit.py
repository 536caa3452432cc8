"""DNQ vs plain FP training of DeiT-Ti/4 on CIFAR-100, then the same PTQ (W8A8 ... W3A3)."""

from configs import dnq_cifar100_deit, fp_cifar100_deit
from configs.dnq_vs_fp_digits import comparison_pipeline


def get_config():
    return comparison_pipeline(
        dnq_cifar100_deit.get_config(), fp_cifar100_deit.get_config(), "dnq_vs_fp_cifar100_deit"
    )
