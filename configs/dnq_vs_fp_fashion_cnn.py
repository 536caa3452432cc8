"""DNQ vs plain FP training of the small CNN on Fashion-MNIST, then the same PTQ
(W8A8, W6A6, W4A4, W3A3): one pipeline, one table."""

from configs import dnq_fashion_cnn, fp_fashion_cnn
from configs.dnq_vs_fp_digits import comparison_pipeline


def get_config():
    return comparison_pipeline(
        dnq_fashion_cnn.get_config(), fp_fashion_cnn.get_config(), "dnq_vs_fp_fashion_cnn"
    )
