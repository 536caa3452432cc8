"""FP training of the small CNN on scikit-learn digits (offline, ~20 s on a laptop CPU)."""

from configs import common


def get_config():
    return common.digits("fp")
