"""MEC-Quant (CE + MoE maximum-entropy coding vs the FP teacher's features) on CIFAR under the group protocol.

``--config configs/mec_cifar.py:<cifar10|cifar100>,<resnet18|mobilenet_v2>`` (default
``cifar10,resnet18``), W4A4; W2A4/W2A2 with ``--config.quant.w_bits=2 [--config.quant.a_bits=2]``;
pass ``--config.init_from=<FP run>`` and ``--config.data.data_dir``.
"""

from configs import common


def get_config(arg: str = ""):
    config = common.cifar("mec", arg)
    # The Taylor log-det needs ‖C_k‖₂ < 1, and ‖C_k‖₂ ≈ (d_k/ε²)·(mean cosine of the features):
    # non-negative (post-ReLU) penultimate features have a mean cosine ≈ 0.8 (measured on
    # digits), so d_k = 128 (ResNet-18, K = 4) gives ≈ 1.6 and the series diverges. slogdet on
    # the d_k × d_k Gram is exact at any norm and cheap at this size.
    config.method.logdet = "exact"
    return config
