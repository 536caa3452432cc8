"""LSQ W4A4 QAT of the small CNN on Fashion-MNIST, from an FP run:
``--config.init_from=<fp_fashion_mnist workdir>``.

Group protocol (methods brief §0): min/max calibration on 100 training images, SGD momentum
0.9, batch 256, lr 0.01 cosine, weight decay 5e-4, first and last layer at 8 bits; 15
epochs instead of 200 (CPU scale; ``--config.train.num_epochs=200`` for the protocol).
"""

from configs import fp_fashion_mnist


def get_config():
    config = fp_fashion_mnist.get_config()
    config.name = "lsq_fashion_mnist"
    config.method.name = "lsq"
    config.quant.w_bits = 4
    config.quant.a_bits = 4
    config.quant.first_last_bits = 8
    config.optim.learning_rate = 0.01
    config.train.num_epochs = 15
    return config
