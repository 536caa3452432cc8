"""Plain FP training of a micro ViT (patch 4 → 7×7 patches + class token, width 64, 4 blocks,
4 heads) on Fashion-MNIST with AdamW: the twin of ``configs/dnq_fashion_vit.py``."""

from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "fp_fashion_vit"
    config.method.name = "fp"
    config.data.name = "fashion_mnist"
    config.data.batch_size = 128
    config.model.name = "vit_micro"
    config.model.kwargs = {"patch_size": 4, "hidden": 64, "depth": 4, "heads": 4}
    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 200
    config.optim.grad_clip_norm = 1.0
    config.train.num_epochs = 5
    config.train.checkpoint_every = 500
    return config
