"""DNQ vs plain FP training, then the same PTQ, per recipe of ``configs/dnq.py`` — one command:

    python -m jaxquant.main --config configs/dnq_vs_fp.py:digits --workdir runs/dnq_vs_fp_digits

Recipes: ``digits`` (default; PTQ widths 8, 6, 4, 3, 2), ``fashion_cnn``, ``fashion_vit``,
``cifar100_deit``, ``imagenet_deit`` (widths 8, 6, 4, 3).

Stages: ``fp`` (``configs/dnq.py:fp,<recipe>``) and ``fp_ptq`` at every width of ``ptq.bits``;
then for each width ``b`` a DNQ run trained for that width, ``dnq_target<b>``
(``configs/dnq.py:dnq,<recipe>`` with ``method.target_bits = b``: the same seed, steps and
optimiser, plus noise matched to a ``b``-bit quantizer), and its PTQ at ``b`` bits alone,
``dnq_target<b>_ptq``. It ends with a table of test accuracy by bits: the FP row at every
width, each DNQ row at the width it was trained for.
"""

import ml_collections

from configs import dnq
from jaxquant.ptq import parse_bits

SHARED_BLOCKS = ("model", "data", "quant", "optim", "train", "ptq", "mesh")


def comparison_pipeline(
    dnq: ml_collections.ConfigDict, fp: ml_collections.ConfigDict, name: str
) -> ml_collections.ConfigDict:
    """A pipeline config: train ``fp``, and ``dnq`` once per width ``b`` of ``ptq.bits`` with
    ``method.target_bits = b`` (the two must agree on everything but the method); PTQ the FP
    run at every width and each DNQ run at its own width, with the same ``ptq`` settings."""
    for block in (*SHARED_BLOCKS, "seed", "init_from"):
        if dnq.get(block) != fp.get(block):
            raise ValueError(f"the DNQ config and its FP twin differ in {block!r}: they must not")
    config = dnq.copy_and_resolve_references()
    config.name = name
    config.mode = "pipeline"
    stages = {
        "fp": {"method": {"name": fp.method.name}},
        "fp_ptq": {"mode": "ptq", "init_from": "stage:fp", "method": {"name": fp.method.name}},
    }
    config.stages = stages
    config.lock()
    set_dnq_widths(config, config.ptq.bits)
    return config


def set_dnq_widths(config: ml_collections.ConfigDict, bits: str) -> None:
    """Set ``ptq.bits`` and one DNQ training and PTQ stage pair per width of ``bits``."""
    widths = []
    for setting in parse_bits(bits):
        if setting.w_bits != setting.a_bits:
            raise ValueError(
                f"ptq.bits={bits!r}: a DNQ comparison needs equal weight and input bits "
                f"({setting.label}), since method.target_bits sets both"
            )
        widths.append(setting.w_bits)
    config.ptq.bits = bits
    method = config.method.to_dict()
    stages = {k: v for k, v in config.stages.to_dict().items() if not k.startswith("dnq_")}
    for b in widths:
        stages[f"dnq_target{b}"] = {"method": {**method, "target_bits": b}}
        stages[f"dnq_target{b}_ptq"] = {
            "mode": "ptq",
            "init_from": f"stage:dnq_target{b}",
            "method": {"name": method["name"]},
            "ptq": {"bits": str(b)},
        }
    with config.unlocked():
        config.stages = stages
        config.stage_order = tuple(stages)


def get_config(recipe: str | None = None):
    recipe = recipe or "digits"
    config = comparison_pipeline(dnq.twin("dnq", recipe), dnq.twin("fp", recipe), f"dnq_vs_fp_{recipe}")
    if recipe == "digits":
        set_dnq_widths(config, "8,6,4,3,2")  # digits is lossless down to W3A3: W2A2 shows a difference
    return config
