"""DNQ vs plain FP training, then the same PTQ, on digits — one command:

    python -m jaxquant.main --config configs/dnq_vs_fp_digits.py --workdir runs/dnq_vs_fp_digits

Stages: ``fp`` (``configs/fp_digits.py``), ``fp_ptq``, ``dnq`` (``configs/dnq_digits.py``:
the same seed, steps and optimiser, plus the noise), ``dnq_ptq``. It ends with a table of
test accuracy by bits for both.
"""

import ml_collections

from configs import dnq_digits, fp_digits

SHARED_BLOCKS = ("model", "data", "quant", "optim", "train", "ptq", "mesh")


def comparison_pipeline(
    dnq: ml_collections.ConfigDict, fp: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
    """A pipeline config: train ``fp`` and ``dnq`` (which must agree on everything but the
    method), and PTQ each result with the same ``ptq`` settings."""
    for block in (*SHARED_BLOCKS, "seed", "init_from"):
        if dnq.get(block) != fp.get(block):
            raise ValueError(f"the DNQ config and its FP twin differ in {block!r}: they must not")
    config = dnq.copy_and_resolve_references()
    config.name = name
    config.mode = "pipeline"
    config.stage_order = ("fp", "fp_ptq", "dnq", "dnq_ptq")
    config.stages = {
        "fp": {"method": {"name": fp.method.name}},
        "fp_ptq": {"mode": "ptq", "init_from": "stage:fp", "method": {"name": fp.method.name}},
        "dnq": {"method": {"name": dnq.method.name}},
        "dnq_ptq": {"mode": "ptq", "init_from": "stage:dnq", "method": {"name": dnq.method.name}},
    }
    return config


def get_config():
    config = comparison_pipeline(dnq_digits.get_config(), fp_digits.get_config(), "dnq_vs_fp_digits")
    config.ptq.bits = "8,6,4,3,2"  # digits is lossless down to W3A3: W2A2 shows a difference
    return config
