"""DNQ vs plain FP training, then the same PTQ, over several seeds: mean ± std by bits.

    python benchmarks/dnq_vs_fp.py --config configs/dnq_vs_fp.py:digits --seeds 0,1,2 \
        --workdir runs/dnq_vs_fp_digits_seeds

Runs the comparison pipeline once per seed in ``<workdir>/seed<k>`` (a finished stage
resumes from its checkpoint, so a rerun only repeats PTQ) and prints one table of test
accuracy (%) by bit setting, for the FP model before PTQ and after it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

from jaxquant.modes import run_mode
from jaxquant.study import stats


def load_config(path: str):
    """What ``--config=<path>[:<argument>]`` does: import the file and call ``get_config``."""
    path, _, argument = path.partition(":")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:
        sys.path.insert(0, repo)  # config files import the ``configs`` package
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([argument] if argument else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dnq_vs_fp.py:digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="runs/dnq_vs_fp_seeds")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    by_stage: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        config = load_config(args.config)
        config.seed = seed
        workdir = os.path.join(args.workdir, f"seed{seed}")
        run_mode(config, workdir)
        with open(os.path.join(workdir, "comparison.json")) as f:
            for row in json.load(f):
                stage = by_stage.setdefault(row.pop("stage"), {})
                for column, value in row.items():
                    stage.setdefault(column, []).append(100 * value)
    columns = list(dict.fromkeys(c for values in by_stage.values() for c in values))
    print(f"\ntest accuracy (%), mean ± std (n − 1) over seeds {seeds}; a DNQ row is its PTQ at")
    print("the width its noise was matched to (method.target_bits); fp_accuracy is before PTQ")
    print("stage              " + "  ".join(c.removesuffix("_accuracy").rjust(14) for c in columns))
    for stage, values in by_stage.items():
        cells = [mean_std(values[c]) if c in values else "-".rjust(14) for c in columns]
        print(f"{stage:<19}" + "  ".join(cells))
    reference = by_stage.get("fp_ptq", {})
    print("\nper seed (DNQ trained for b bits − FP, PTQ at b bits, points):")
    for stage, values in by_stage.items():
        if stage == "fp_ptq":
            continue
        for column in (c for c in values if c != "fp_accuracy" and c in reference):
            deltas = np.subtract(values[column], reference[column])
            print(
                f"  {stage:<19} {column.removesuffix('_accuracy'):>5}: "
                + "  ".join(f"{d:+.2f}" for d in deltas)
            )


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` (:func:`jaxquant.study.stats.mean_std`, n − 1; 0 for one value),
    14 characters wide."""
    mean, std = stats.mean_std(values)
    return f"{mean:6.2f} ± {std or 0.0:5.2f}"


if __name__ == "__main__":
    main()
