"""The figures of the report (matplotlib, Agg): each ``plot_*`` saves one PNG and returns its
path, or None (nothing saved) when no record has what it draws."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxquant.study.stats import mean_std  # noqa: E402

from .statistics import OK, values_by_seed  # noqa: E402


def errorbar_series(records, metric: str, group: str, method: str, keys) -> tuple[list, list, list]:
    """``(positions, means, stds)`` in % over the ``keys`` (bit labels) where ``method`` has
    finished runs; a position is the key's index."""
    positions, means, stds = [], [], []
    for i, key in enumerate(keys):
        values = list(values_by_seed(records, metric, group, method, key).values())
        if values:
            mean, std = mean_std([100 * v for v in values])
            positions.append(i)
            means.append(mean)
            stds.append(std or 0.0)
    return positions, means, stds


def plot_accuracy_vs_bits(records, methods, bit_settings, path) -> str | None:
    """QAT test accuracy (mean ± std over seeds) per method against the bit setting."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for method in methods:
        xs, means, stds = errorbar_series(records, "accuracy", "qat", method, bit_settings)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
            drawn = True
    fp = list(values_by_seed(records, "accuracy", "fp", "fp", "FP").values())
    if fp:
        ax.axhline(100 * mean_std(fp)[0], color="k", linestyle="--", linewidth=1, label="FP")
    ax.set_xticks(range(len(bit_settings)), bit_settings)
    return finish(fig, ax, drawn, path, "bit setting", "test accuracy (%)", ncol=2)


def plot_trace_vs_accuracy(records, methods, bit_settings, path) -> str | None:
    """One point per finished QAT run: Hessian trace of the final checkpoint vs test accuracy."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "osD^v<>"
    drawn = False
    for ci, method in enumerate(methods):
        for bi, bits in enumerate(bit_settings):
            traces = values_by_seed(records, "trace", "qat", method, bits)
            accs = values_by_seed(records, "accuracy", "qat", method, bits)
            seeds = sorted(set(traces) & set(accs))
            if seeds:
                ax.scatter(
                    [traces[s] for s in seeds],
                    [100 * accs[s] for s in seeds],
                    color=f"C{ci % 10}",
                    marker=markers[bi % len(markers)],
                    label=f"{method} {bits}",
                )
                drawn = True
    ax.set_xscale("log")
    xlabel = "Hessian trace (Hutchinson, fixed probe batch)"
    return finish(fig, ax, drawn, path, xlabel, "quantized test accuracy (%)", ncol=2, fontsize=7)


def plot_trajectories(records, methods, bit_settings, path) -> str | None:
    """The Hessian trace logged during QAT, mean over seeds, one panel per bit setting."""
    fig, axes = plt.subplots(1, len(bit_settings), figsize=(4.5 * len(bit_settings), 3.5), squeeze=False)
    drawn = False
    for ax, bits in zip(axes[0], bit_settings, strict=True):
        for ci, method in enumerate(methods):
            curves = [
                r["trajectory"]
                for r in records
                if r.get("group") == "qat"
                and r.get("method") == method
                and r.get("bits") == bits
                and r.get("status") == OK
                and (r.get("trajectory") or {}).get("status") == OK
            ]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c["steps"]) for c in curves)))
            means = [mean_std([c["values"][c["steps"].index(s)] for c in curves])[0] for s in steps]
            ax.plot(steps, means, marker=".", color=f"C{ci % 10}", label=f"{method} (n={len(curves)})")
            drawn = True
        ax.set_title(bits)
        ax.set_xlabel("QAT step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if not drawn:
        plt.close(fig)
        return None
    axes[0][0].set_ylabel("Hessian trace")
    axes[0][0].legend(fontsize=8)
    return save(fig, path)


def plot_ptq(records, sources, ptq_bits, path) -> str | None:
    """PTQ test accuracy (mean ± std over seeds) against bits for each FP training."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    drawn = False
    for source in sources:
        positions, means, stds = errorbar_series(
            records, "ptq_accuracy", "ptq", source, [str(b) for b in ptq_bits]
        )
        if positions:
            xs = [ptq_bits[i] for i in positions]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=f"{source}-trained, then PTQ")
            drawn = True
    ax.invert_xaxis()
    ax.set_xticks(list(ptq_bits))
    return finish(fig, ax, drawn, path, "PTQ bits (W = A)", "test accuracy (%)")


def finish(fig, ax, drawn: bool, path: str, xlabel: str, ylabel: str, ncol=1, fontsize=8) -> str | None:
    """Label, save and close a one-panel figure; nothing is saved when nothing was drawn."""
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize, ncol=ncol)
    ax.grid(alpha=0.3)
    return save(fig, path)


def save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
