"""``mode = analyse``: how flat are the minima of one or more trained runs?

``--config.checkpoints=A,B,...`` names workdirs of training runs (each has the
``config.json`` its run wrote, from which the model is rebuilt, and ``checkpoints/``). For
each, on fixed batches (``config.curvature``: the same images and probe vectors for every
run), in eval mode with the quantizers of a quantized model on:

* Hessian trace ± standard error, and per layer (Hutchinson);
* top-k eigenvalues (Lanczos);
* spectral density (stochastic Lanczos quadrature) on a grid shared by all runs;
* 1D and 2D loss slices along random filter-normalised directions;
* with two or more runs: the loss along the line from the first run to each other one,
  evaluated with the other run's model (see :func:`jaxquant.curvature.checkpoint_line`).

Writes ``analysis.json`` and the PNG plots ``density.png``, ``eigenvalues.png``,
``landscape_1d.png``, ``landscape_2d.png``, ``layer_traces.png`` (and
``interpolation.png``) into the workdir and prints a table comparing the runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxquant import curvature
from jaxquant.curvature import plots
from jaxquant.curvature.density import gaussian_density
from jaxquant.curvature.landscape import losses_at
from jaxquant.curvature.monitor import curvature_split
from jaxquant.data import fixed_batches
from jaxquant.train.metrics import format_table
from jaxquant.train.setup import LoadedRun, load_run


def measure_flatness(
    model,
    variables,
    batches,
    settings: ml_collections.ConfigDict,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Every flatness measurement of ``config.curvature`` for one model, as a JSON-able dict.

    The Hessian is taken w.r.t. ``settings.params``; the landscape slices move all weights
    (filter-normalised kernels). All random draws come from ``settings.seed``, so two
    models of the same architecture get the same probes and direction noise.
    """
    keys = jax.random.split(jax.random.PRNGKey(settings.seed), 4)
    loss_fn, params, data = curvature.model_objective(model, variables, batches, settings.params)
    trace = curvature.hutchinson_trace(
        loss_fn,
        params,
        data,
        keys[0],
        num_probes=settings.num_probes,
        chunk_size=settings.chunk_size,
        tol=settings.tol,
        log=log,
    )
    eigenvalues = curvature.top_eigenvalues(
        loss_fn, params, data, keys[1], k=settings.top_k, num_iterations=settings.lanczos_iterations, log=log
    )
    if log is not None:
        log(f"lanczos: top eigenvalues {np.array2string(eigenvalues.values, precision=4)}")
    density = curvature.spectral_density(
        loss_fn,
        params,
        data,
        keys[2],
        num_runs=settings.density_runs,
        num_iterations=settings.lanczos_iterations,
        grid_points=settings.density_grid_points,
        sigma_fraction=settings.density_sigma_fraction,
        log=log,
    )
    slice_loss, weights, slice_data = curvature.model_objective(model, variables, batches)
    directions = tuple(curvature.filter_normalized_direction(k, weights) for k in jax.random.split(keys[3]))
    radius = settings.landscape_radius
    alphas = np.linspace(-radius, radius, settings.landscape_points)
    grid = np.linspace(-radius, radius, settings.landscape_2d_points)
    plane = np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)
    line = np.stack([alphas, np.zeros_like(alphas)], axis=1)
    points = np.concatenate([np.zeros((1, 2)), line, plane])  # one compiled evaluation for all
    losses = np.asarray(losses_at(slice_loss, weights, slice_data, directions, points))
    surface = losses[1 + len(alphas) :].reshape(len(grid), len(grid))
    return {
        "loss": float(losses[0]),
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "trace": trace.to_dict(),
        "eigenvalues": eigenvalues.to_dict(),
        "density": density.to_dict(),
        "landscape_1d": {"alphas": alphas.tolist(), "losses": losses[1 : 1 + len(alphas)].tolist()},
        "landscape_2d": {"alphas": grid.tolist(), "betas": grid.tolist(), "losses": surface.tolist()},
    }


def interpolation_line(start: LoadedRun, end: LoadedRun, batches, settings) -> dict[str, Any]:
    """Loss from ``start`` (α = 0) to ``end`` (α = 1), with ``end``'s model (its quantizers)."""
    margin = settings.line_margin
    alphas = np.union1d(np.linspace(-margin, 1 + margin, settings.landscape_points), [0.0, 1.0])
    loss_fn = curvature.model_loss(end.model)
    losses = curvature.interpolate(loss_fn, start.variables, end.variables, batches, alphas)
    return {"from": start.name, "to": end.name, "alphas": alphas.tolist(), "losses": losses.tolist()}


def share_density_grid(reports: list[dict[str, Any]], settings) -> None:
    """Re-broaden every run's SLQ quadrature on one grid with one ``σ`` (a fraction of the
    spectral range of all runs together), so that the densities compare point by point."""
    nodes = [np.asarray(r["density"]["nodes"]) for r in reports]
    weights = [np.asarray(r["density"]["weights"]) for r in reports]
    low, high = min(n.min() for n in nodes), max(n.max() for n in nodes)
    sigma = settings.density_sigma_fraction * (high - low if high > low else max(abs(high), 1.0))
    grid = np.linspace(low - 6 * sigma, high + 6 * sigma, settings.density_grid_points)
    for report, run_nodes, run_weights in zip(reports, nodes, weights, strict=True):
        density = gaussian_density(run_nodes, run_weights, grid, sigma)
        report["density"].update(grid=grid.tolist(), density=density.tolist(), sigma=sigma)


def unique_names(runs: list[LoadedRun]) -> None:
    """Label runs by ``config.name``, falling back to the workdir's name (or whole path)
    when names repeat."""
    names = [r.name for r in runs]
    folders = [os.path.basename(r.workdir) for r in runs]
    for run, folder in zip(runs, folders, strict=True):
        if names.count(run.name) > 1:
            run.name = folder if folders.count(folder) == 1 else run.workdir


def checkpoint_paths(config: ml_collections.ConfigDict) -> list[str]:
    paths = [p.strip() for p in str(config.get("checkpoints", "")).split(",") if p.strip()]
    if not paths:
        raise ValueError(
            "mode='analyse' needs --config.checkpoints=<workdir>[,<workdir>...]: the training runs to compare"
        )
    return paths


def summary_row(run: LoadedRun, report: dict[str, Any]) -> dict[str, Any]:
    trace = report["trace"]
    return {
        "run": run.name,
        "method": run.run.config.method.name,
        "w_bits": run.run.config.quant.w_bits if run.quantized else None,
        "a_bits": run.run.config.quant.a_bits if run.quantized else None,
        "test_accuracy": run.summary.get("test_accuracy"),
        "loss": f"{report['loss']:.4f}",
        "trace": f"{trace['trace']:.4g} ± {trace['stderr']:.2g}",
        "probes": trace["num_probes"],
        "lambda_max": f"{report['eigenvalues']['values'][0]:.4g}",
        "params": report["num_params"],
    }


def write_plots(reports, lines, workdir: str) -> list[str]:
    labelled = [(r["name"], r) for r in reports]
    written = {
        "density.png": plots.plot_density,
        "eigenvalues.png": plots.plot_eigenvalues,
        "landscape_1d.png": plots.plot_slice_1d,
        "landscape_2d.png": plots.plot_slice_2d,
        "layer_traces.png": plots.plot_layer_traces,
    }
    paths = []
    for filename, plot in written.items():
        paths.append(os.path.join(workdir, filename))
        plot(labelled, paths[-1])
    if lines:
        paths.append(os.path.join(workdir, "interpolation.png"))
        plots.plot_interpolation([(f"{line['from']} → {line['to']}", line) for line in lines], paths[-1])
    return paths


def run_analyse(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Measure and compare the flatness of ``config.checkpoints``; see the module docstring."""
    settings = config.curvature
    runs = [load_run(path) for path in checkpoint_paths(config)]
    unique_names(runs)
    all_batches = []
    for run in runs:
        split = curvature_split(run.run, settings.split)
        all_batches.append(fixed_batches(split, settings.batch_size, settings.num_batches, settings.seed))
    reports, rows = [], []
    for run, batches in zip(runs, all_batches, strict=True):
        print(f"=== analysing {run.name} ({run.workdir})", flush=True)
        log = lambda line, name=run.name: print(f"[{name}] {line}", flush=True)
        report = measure_flatness(run.model, run.variables, batches, settings, log=log)
        reports.append({"name": run.name, "workdir": run.workdir, **summary_row(run, report), **report})
        rows.append(summary_row(run, report))
    share_density_grid(reports, settings)
    ends = zip(runs[1:], all_batches[1:], strict=True)
    lines = [interpolation_line(runs[0], end, batches, settings) for end, batches in ends]
    os.makedirs(workdir, exist_ok=True)
    analysis = {"settings": settings.to_dict(), "checkpoints": reports, "interpolations": lines}
    with open(os.path.join(workdir, "analysis.json"), "w") as f:
        json.dump(analysis, f, indent=1)
    plot_paths = write_plots(reports, lines, workdir)
    table = format_table(rows, list(rows[0]))
    print("\n" + table)
    names = ", ".join(os.path.basename(p) for p in plot_paths)
    print(f"\nreport: {os.path.join(workdir, 'analysis.json')}; plots: {names}")
    return {"name": config.name, "runs": rows, "table": table, "plots": plot_paths}
