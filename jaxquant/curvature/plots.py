"""Plots of flatness reports (the dicts of :func:`jaxquant.analyse.measure_flatness`).

Figures are built on matplotlib's Agg canvas without pyplot, so they render headless and do
not change the backend of a notebook that displays them. Each function takes a list of
``(label, report)`` pairs, draws the runs side by side and returns the figure; ``path``
also saves it as a PNG.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 6.0, height: float = 4.0, columns: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * columns, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, i + 1) for i in range(columns)]


def finish(figure: Figure, path: str | None) -> Figure:
    if path:
        figure.savefig(path)
    return figure


def line_figure(series, xlabel: str, ylabel: str, title: str, style: str = "-", log_y: bool = False):
    """One axes with a line per ``(label, x, y)`` in ``series``."""
    figure, (axes,) = new_figure()
    for label, x, y in series:
        axes.plot(x, y, style, label=label)
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
    return figure, axes


def plot_density(reports, path: str | None = None) -> Figure:
    """SLQ spectral densities on a log scale (ESD plot as in PyHessian)."""
    series = []
    for label, report in reports:
        density = np.asarray(report["density"]["density"])
        series.append((label, report["density"]["grid"], np.maximum(density, 1e-12 * density.max())))
    figure, _ = line_figure(
        series, "eigenvalue", "density (Gaussian-broadened SLQ)", "Hessian spectral density", log_y=True
    )
    return finish(figure, path)


def plot_eigenvalues(reports, path: str | None = None) -> Figure:
    """The top-k eigenvalues of each run, largest first."""
    series = [
        (label, np.arange(1, len(r["eigenvalues"]["values"]) + 1), r["eigenvalues"]["values"])
        for label, r in reports
    ]
    figure, _ = line_figure(series, "rank", "eigenvalue", "Top Hessian eigenvalues (Lanczos)", style="o-")
    return finish(figure, path)


def plot_slice_1d(reports, path: str | None = None) -> Figure:
    """Loss along one random filter-normalised direction."""
    series = [(label, r["landscape_1d"]["alphas"], r["landscape_1d"]["losses"]) for label, r in reports]
    figure, _ = line_figure(series, "α (filter-normalised direction)", "loss", "1D loss landscape")
    return finish(figure, path)


def plot_slice_2d(reports, path: str | None = None) -> Figure:
    """Loss contours over two random filter-normalised directions, one panel per run."""
    figure, panels = new_figure(4.5, 4.0, columns=len(reports))
    for axes, (label, report) in zip(panels, reports, strict=True):
        surface = report["landscape_2d"]
        losses = np.asarray(surface["losses"])
        levels = np.linspace(losses.min(), np.percentile(losses, 95), 15)
        contour = axes.contour(surface["alphas"], surface["betas"], losses.T, levels=levels)
        axes.clabel(contour, fontsize=7)
        axes.plot([0], [0], "k+")
        axes.set_title(label)
        axes.set_xlabel("α")
        axes.set_ylabel("β")
    return finish(figure, path)


def plot_layer_traces(reports, path: str | None = None) -> Figure:
    """Per-layer Hessian traces as grouped bars (log scale above 1% of the largest, linear
    below, since a block trace can be negative), with standard errors."""
    layers = list(dict.fromkeys(name for _, report in reports for name in report["trace"]["layers"]))
    figure, (axes,) = new_figure(max(6.0, 0.5 * len(layers) * len(reports)), 4.0)
    width = 0.8 / len(reports)
    positions = np.arange(len(layers))
    largest = 0.0
    for index, (label, report) in enumerate(reports):
        per_layer = report["trace"]["layers"]
        values = [per_layer.get(name, {}).get("trace", np.nan) for name in layers]
        errors = [per_layer.get(name, {}).get("stderr", 0.0) for name in layers]
        axes.bar(positions + index * width, values, width, yerr=errors, label=label)
        largest = max([largest, *np.abs(np.nan_to_num(values))])
    axes.set_xticks(positions + 0.4 - width / 2, layers, rotation=60, ha="right", fontsize=8)
    axes.set_yscale("symlog", linthresh=max(1e-2 * largest, 1e-12))
    axes.set_ylabel("trace of the layer's Hessian block")
    axes.set_title("Per-layer Hessian trace (Hutchinson)")
    axes.legend()
    return finish(figure, path)


def plot_interpolation(lines, path: str | None = None) -> Figure:
    """Loss along the line between two checkpoints; ``lines`` holds ``(label, {alphas, losses})``."""
    series = [(label, line["alphas"], line["losses"]) for label, line in lines]
    figure, axes = line_figure(
        series, "α (0: first checkpoint, 1: second)", "loss", "Loss between checkpoints"
    )
    for end in (0.0, 1.0):
        axes.axvline(end, color="0.7", linewidth=0.8)
    return finish(figure, path)
