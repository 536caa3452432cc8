"""``config.mode`` → the function that runs it: ``fn(config, workdir) -> summary dict``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ml_collections

ModeFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]
MODES: dict[str, ModeFn] = {}


def register_mode(name: str):
    def wrap(fn: ModeFn) -> ModeFn:
        MODES[name] = fn
        return fn

    return wrap


def run_mode(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run ``config.mode`` in ``workdir``; an unknown mode is a one-line error."""
    import jaxquant.analyse  # noqa: F401 - registers mode 'analyse'
    import jaxquant.pipeline  # noqa: F401 - registers the built-in modes
    import jaxquant.ptq  # noqa: F401
    import jaxquant.train.loop as loop

    MODES.setdefault("train", loop.train_and_evaluate)
    if config.mode not in MODES:
        raise ValueError(f"mode={config.mode!r} is unknown: allowed values {sorted(MODES)}")
    return MODES[config.mode](config, workdir)
