"""Any method on CIFAR under the group protocol (docs/methods.md §0):

    --config configs/cifar.py:<method>[,<dataset>[,<model>]]     (default: fp,cifar10,resnet18)

``<dataset>``: ``cifar10`` | ``cifar100``; ``<model>``: ``resnet20`` | ``resnet18`` |
``resnet50`` | ``mobilenet_v1`` | ``mobilenet_v2``. W4A4, first and last layer 8-bit, SGD
momentum 0.9, lr 0.01 (FP 0.1), cosine, weight decay 5e-4, batch 256, 200 epochs, pad-4
crops and flips; W2A4/W2A2 with ``--config.quant.w_bits=2 [--config.quant.a_bits=2]``. Read
from a prepared TFDS folder (``--config.data.data_dir``, default ``~/tensorflow_datasets``);
QAT methods need ``--config.init_from=<FP run>``. ``mec`` uses the exact log-det here.
"""

from configs import common


def get_config(arg: str | None = None):
    method, _, rest = (arg or "fp").partition(",")
    return common.cifar(method or "fp", rest or None)
