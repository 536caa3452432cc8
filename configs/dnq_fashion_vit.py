"""DNQ (W4A4 target) of the micro ViT on Fashion-MNIST: noise on the inputs and weights of
the patch embedding, qkv, projection, MLP and head; the same seed, steps and optimiser as
its plain-FP twin ``configs/fp_fashion_vit.py``."""

from configs import fp_fashion_vit
from jaxquant.methods.dnq import method_config


def get_config():
    config = fp_fashion_vit.get_config()
    config.name = "dnq_fashion_vit"
    config.method = method_config()
    return config
