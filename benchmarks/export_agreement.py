"""Integer evaluator against fake quantization: agreement on digits and Fashion-MNIST.

For each data set, model (``small_cnn``, ``cnn6``, ``resnet20``) and bit setting (W8A8, W4A4,
W2A2; first conv and classifier at 8 bits), a short LSQ run from scratch (``STEPS``: the point
is the integer-vs-fake-quant equivalence, not the accuracy), then ``mode='export'`` of it, whose
integer evaluator runs the exported files on the whole test split beside the fake-quantized
evaluation of the same checkpoint. Writes ``benchmarks/results/export_agreement.json`` and
prints the markdown table of the README.

Usage: ``python benchmarks/export_agreement.py [--workdir runs/export_agreement]
[--datasets digits,fashion_mnist]`` (resumable: a finished run is not trained again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # noqa: E402
from jaxquant.modes import run_mode  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_agreement.json")
MODELS = ("small_cnn", "cnn6", "resnet20")
BITS = (8, 4, 2)
# (data set, model) → LSQ training steps (batch 64 on digits, 256 on Fashion-MNIST)
STEPS = {
    ("digits", "small_cnn"): 150,
    ("digits", "cnn6"): 150,
    ("digits", "resnet20"): 100,
    ("fashion_mnist", "small_cnn"): 300,
    ("fashion_mnist", "cnn6"): 200,
    ("fashion_mnist", "resnet20"): 60,
}


def qat_config(dataset: str, model: str, bits: int):
    """LSQ at ``bits`` from scratch (lr 0.05, cosine) for ``STEPS`` steps."""
    config = common.digits("lsq") if dataset == "digits" else common.fashion("lsq", "small_cnn")
    config.name = f"{dataset}_{model}_w{bits}a{bits}"
    config.model.name = model
    config.model.kwargs = {}
    config.init_from = ""
    config.quant.w_bits = config.quant.a_bits = bits
    config.optim.learning_rate = 0.05
    config.train.num_steps = STEPS[(dataset, model)]
    config.train.log_every = 50
    config.train.checkpoint_every = config.train.num_steps
    return config


def measure(dataset: str, model: str, bits: int, workdir: str) -> dict:
    config = qat_config(dataset, model, bits)
    run_dir = os.path.join(workdir, config.name)
    start = time.time()
    run_mode(config, run_dir)
    train_seconds = time.time() - start
    export = config.copy_and_resolve_references()
    with export.unlocked():
        export.mode, export.init_from = "export", run_dir
    start = time.time()
    agreement = run_mode(export, run_dir + "_export")["agreement"]
    return {
        "dataset": dataset,
        "model": model,
        "bits": f"W{bits}A{bits}",
        "train_steps": config.train.num_steps,
        "train_seconds": round(train_seconds, 1),
        "export_seconds": round(time.time() - start, 1),
        **{key: value for key, value in agreement.items() if key != "bits"},
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data set | model | bits | LSQ steps | fake-quant acc. | integer acc. "
        "| identical predictions | max \\|Δ logit\\| |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['bits']} | {r['train_steps']} | "
            f"{100 * r['fake_quant_accuracy']:.2f} | {100 * r['integer_accuracy']:.2f} | "
            f"{100 * r['agreement']:.2f} % | {r['max_logit_diff']:.2g} |"
        )
    return "\n".join(lines)


def row_key(row: dict) -> tuple[str, str, str]:
    return row["dataset"], row["model"], row["bits"]


def save(rows: dict, expected: int) -> None:
    """Write every row measured so far (this call's and earlier calls'), in table order."""
    ordered = sorted(
        rows.values(), key=lambda r: (r["dataset"], MODELS.index(r["model"]), -int(r["bits"][1]))
    )
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform()}
    with open(RESULTS + ".tmp", "w") as f:
        json.dump({"complete": len(ordered) >= expected, "machine": machine, "rows": ordered}, f, indent=2)
    os.replace(RESULTS + ".tmp", RESULTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/export_agreement")
    parser.add_argument("--datasets", default="digits,fashion_mnist")
    args = parser.parse_args()
    rows = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            rows = {row_key(r): r for r in json.load(f)["rows"]}
    expected = len({d for d, _ in STEPS}) * len(MODELS) * len(BITS)
    for dataset in args.datasets.split(","):
        for model in MODELS:
            for bits in BITS:
                row = measure(dataset, model, bits, args.workdir)
                rows[row_key(row)] = row
                print(json.dumps(row), flush=True)
                save(rows, expected)  # each row as it is measured: a killed call keeps them
    print(markdown(list(rows.values())))


if __name__ == "__main__":
    main()
