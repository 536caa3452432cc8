"""Quick start (offline, about 2 minutes on 2 CPU cores): FP pretraining of a small CNN on
scikit-learn digits, then LSQ QAT at W4A4 and W2A2 from it, then a table of test accuracy."""

from configs import common
from jaxquant.defaults import get_config as base_config


def get_config():
    config = base_config()
    config.name = "quickstart"
    config.mode = "pipeline"
    fp, lsq = common.digits("fp"), common.digits("lsq")
    config.stage_order = ("fp", "lsq_w4a4", "lsq_w2a2")
    config.stages = {
        "fp": {
            "method": {"name": "fp"},
            "optim": {"learning_rate": fp.optim.learning_rate},
            "train": {"num_epochs": fp.train.num_epochs},
        },
        "lsq_w4a4": {
            "method": {"name": "lsq"},
            "init_from": "stage:fp",
            "quant": {"w_bits": 4, "a_bits": 4},
            "optim": {"learning_rate": lsq.optim.learning_rate},
            "train": {"num_epochs": lsq.train.num_epochs},
        },
        "lsq_w2a2": {
            "method": {"name": "lsq"},
            "init_from": "stage:fp",
            "quant": {"w_bits": 2, "a_bits": 2},
            "optim": {"learning_rate": lsq.optim.learning_rate},
            "train": {"num_epochs": lsq.train.num_epochs},
        },
    }
    return config
