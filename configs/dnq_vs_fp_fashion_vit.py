"""DNQ vs plain FP training of the micro ViT on Fashion-MNIST, then the same PTQ
(W8A8, W6A6, W4A4, W3A3; LayerNorm inputs and attention probabilities at 8 bits)."""

from configs import dnq_fashion_vit, fp_fashion_vit
from configs.dnq_vs_fp_digits import comparison_pipeline


def get_config():
    return comparison_pipeline(
        dnq_fashion_vit.get_config(), fp_fashion_vit.get_config(), "dnq_vs_fp_fashion_vit"
    )
