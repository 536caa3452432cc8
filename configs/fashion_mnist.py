"""Any method on Fashion-MNIST (``apt-get install -y dataset-fashion-mnist``):

    --config configs/fashion_mnist.py:<method>[,<model>]

``<model>``: ``small_cnn`` (default; 32/64 channels, the first study's model: FP 20 epochs at
lr 0.05, QAT W4A4 10 epochs at lr 0.01) or ``cnn6`` (the study model, six convs, five of
them low-bit: FP 10 epochs at lr 0.1, QAT W2A2 3 epochs at lr 0.01). Batch 256, pad-2 crops
and flips (``configs/common.py``). QAT methods need ``--config.init_from=<FP run>``.
"""

from configs import common


def get_config(arg: str | None = None):
    method, _, model = (arg or "fp").partition(",")
    return common.fashion(method or "fp", model or None)
