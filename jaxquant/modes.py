"""``config.mode`` → the function that runs it: ``fn(config, workdir) -> summary dict``.

One static table, :data:`MODES`; a new mode is a function added here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

from jaxquant import analyse, export, pipeline, ptq
from jaxquant.train import loop
from jaxquant.train.lock import workdir_lock

ModeFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """``mode = 'pipeline'``: each stage runs through :func:`run_mode`."""
    return pipeline.run_pipeline(config, workdir, run_stage=run_mode)


MODES: dict[str, ModeFn] = {
    "train": loop.train_and_evaluate,
    "pipeline": run_pipeline,
    "ptq": ptq.run_ptq,
    "analyse": analyse.run_analyse,
    "export": export.run_export,
}


def run_mode(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run ``config.mode`` in ``workdir``, holding it (:func:`~jaxquant.train.lock.workdir_lock`:
    a second process on a live workdir stops at once); an unknown mode is a one-line error."""
    if config.mode not in MODES:
        raise ValueError(f"mode={config.mode!r} is unknown: allowed values {sorted(MODES)}")
    with workdir_lock(workdir):
        return MODES[config.mode](config, workdir)
