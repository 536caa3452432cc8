"""One-seed pilot of the training signal on Fashion-MNIST with the study model ``cnn6``.

    python benchmarks/signal_pilot.py --workdir runs/signal_pilot [--qat-epochs 3]

1. FP training (``configs/fashion_mnist.py:fp,cnn6``): test accuracy after every epoch;
2. the start of LSQ W2A2 QAT from it: test accuracy of the calibrated network with the FP
   BatchNorm statistics and with statistics re-estimated on clean training images;
3. LSQ, FPQ, CR and MEC at W2A2 for ``--qat-epochs`` epochs (final statistics re-estimated,
   ``train.bn_reestimate='auto'``): test accuracy, wall time, and each method's loss-term
   gradient-norm ratios to CE (mean over the logged steps of ``metrics.jsonl``).

Every run resumes from its workdir, so a rerun only evaluates. Writes ``pilot.json`` into
the workdir and prints markdown tables (pasted into ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import common  # noqa: E402
from jaxquant.train.loop import evaluate, make_eval_step, train_and_evaluate  # noqa: E402
from jaxquant.train.setup import build_run, create_train_state  # noqa: E402

QAT_METHODS = ("lsq", "fpq", "cr", "mec")


def read_metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def fp_curve(workdir: str) -> list[dict]:
    """``(epoch, test accuracy)`` of every per-epoch evaluation of the FP run."""
    rows = [r for r in read_metrics(workdir) if r.get("kind") == "eval"]
    return [{"step": r["step"], "test_accuracy": r["accuracy"]} for r in rows]


def loss_term_ratios(workdir: str) -> dict[str, float]:
    """Mean of each ``grad_ratio_<term>`` over the logged training steps."""
    sums: dict[str, list[float]] = {}
    for row in read_metrics(workdir):
        for key, value in row.items():
            if key.startswith("grad_ratio_"):
                sums.setdefault(key.removeprefix("grad_ratio_"), []).append(value)
    return {k: sum(v) / len(v) for k, v in sums.items()}


def start_accuracy(config) -> float:
    """Test accuracy of a QAT run's first state (calibrated, before step 1)."""
    run = build_run(config)
    state = create_train_state(run)
    result = evaluate(
        make_eval_step(run.ctx.model),
        state.params,
        state.model_state,
        run.test_split,
        config.data.eval_batch_size,
        run.mesh,
    )
    return float(result["accuracy"])


def training_seconds(workdir: str) -> float:
    """Wall time of a run's training from its ``metrics.jsonl`` time stamps (first logged step
    to the last row, scaled up by the steps before the first log), also for a resumed run."""
    rows = read_metrics(workdir)
    first, last = rows[0], rows[-1]
    return (last["time"] - first["time"]) * last["step"] / max(last["step"] - first["step"], 1)


def timed_run(config, workdir: str) -> tuple[dict, float]:
    summary = train_and_evaluate(config, workdir)
    return summary, training_seconds(workdir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/signal_pilot")
    parser.add_argument("--qat-epochs", type=int, default=common.CNN6_QAT_EPOCHS)
    parser.add_argument("--methods", default=",".join(QAT_METHODS))
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    out = {
        "date": str(datetime.date.today()),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
        f"on {jax.devices()[0].platform}",
        "qat_epochs": args.qat_epochs,
    }
    fp_dir = os.path.join(args.workdir, "fp")
    fp_summary, fp_seconds = timed_run(common.fashion_cnn6("fp"), fp_dir)
    out["fp"] = {
        "test_accuracy": fp_summary["test_accuracy"],
        "curve": fp_curve(fp_dir),
        "wall_s": fp_seconds,
    }
    print(f"FP cnn6: {100 * fp_summary['test_accuracy']:.2f} %", flush=True)

    def qat_config(method: str):
        config = common.fashion_cnn6(method)
        config.init_from = fp_dir
        config.train.num_epochs = args.qat_epochs
        return config

    starts = {}
    for mode in ("never", "auto"):
        config = qat_config("lsq")
        config.train.bn_reestimate = mode
        starts[mode] = start_accuracy(config)
    out["lsq_w2a2_start"] = {"fp_statistics": starts["never"], "reestimated": starts["auto"]}
    print(f"LSQ W2A2 start: {100 * starts['never']:.2f} % -> {100 * starts['auto']:.2f} %", flush=True)

    out["qat"] = {}
    for method in args.methods.split(","):
        workdir = os.path.join(args.workdir, f"{method}_w2a2")
        summary, seconds = timed_run(qat_config(method), workdir)
        out["qat"][method] = {
            "test_accuracy": summary["test_accuracy"],
            "wall_s": seconds,
            "loss_term_ratios": loss_term_ratios(workdir),
        }
        with open(os.path.join(args.workdir, "pilot.json"), "w") as f:
            json.dump(out, f, indent=2)
    print_tables(out)


def print_tables(out: dict) -> None:
    print("\n| epoch | FP test accuracy (%) |\n| --- | --- |")
    for epoch, row in enumerate(out["fp"]["curve"], 1):
        print(f"| {epoch} | {100 * row['test_accuracy']:.2f} |")
    start = out["lsq_w2a2_start"]
    print(
        f"\nLSQ W2A2 start accuracy: {100 * start['fp_statistics']:.2f} % with the FP BatchNorm statistics, "
        f"{100 * start['reestimated']:.2f} % re-estimated"
    )
    print("\n| method (W2A2) | test accuracy (%) | wall (s) | loss-term gradient ratio to CE |")
    print("| --- | --- | --- | --- |")
    for method, row in out["qat"].items():
        ratios = ", ".join(f"{k} {v:.3g}" for k, v in row["loss_term_ratios"].items()) or "-"
        print(f"| {method} | {100 * row['test_accuracy']:.2f} | {row['wall_s']:.0f} | {ratios} |")


if __name__ == "__main__":
    main()
