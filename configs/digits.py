"""Any method on scikit-learn digits (offline, seconds; the tests' and demos' data set):

    python -m jaxquant.main --config configs/digits.py:fp --workdir runs/fp_digits
    python -m jaxquant.main --config configs/digits.py:lsq --workdir runs/lsq_digits \
        --config.init_from=runs/fp_digits

The argument is the method (default ``fp``): the small CNN, FP (and DNQ) 30 epochs at lr
0.05, QAT at W4A4 for 10 epochs at lr 0.01; ``cr`` takes ±1 px crops as its two views
(``configs/common.py:digits``).
"""

from configs import common


def get_config(method: str | None = None):
    return common.digits(method or "fp")
