"""Any method on Fashion-MNIST with the study model ``cnn6`` (``configs/common.py:fashion_cnn6``):

    python -m jaxquant.main --config configs/fashion_cnn6.py:fp --workdir runs/fp_cnn6
    python -m jaxquant.main --config configs/fashion_cnn6.py:fpq --workdir runs/fpq_cnn6_w2a2 \
        --config.init_from=runs/fp_cnn6

The argument after ``:`` is the method (default ``fp``); QAT methods run W2A2 for 3 epochs.
"""

from configs import common


def get_config(method: str | None = None):
    return common.fashion_cnn6(method or "fp")
