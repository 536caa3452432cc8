"""The optional Hutchinson probe during training (``config.curvature.every_steps``, 0 = off).

Every ``every_steps`` steps the trace of the Hessian of the eval-mode loss is estimated on
the same fixed batches (``curvature.batch_size × num_batches`` images of
``curvature.split``, drawn once with ``curvature.seed``) with the same ``num_probes``
Rademacher probes, and written to ``metrics.jsonl`` as a record of kind ``curvature``
(``trace``, ``trace_stderr``, ``num_probes``, ``layer_traces``). Fixed data and probes
make the values of one run, and of runs with different methods, a comparable trajectory.
The early stop of :func:`~jaxquant.curvature.hutchinson.hutchinson_trace` is off here.
"""

from __future__ import annotations

import jax

from jaxquant import parallel
from jaxquant.checks import check_choice
from jaxquant.curvature.hutchinson import hutchinson_trace
from jaxquant.curvature.hvp import model_objective, partition
from jaxquant.data import fixed_batches

SPLITS = ("train", "validation", "test")


def curvature_split(run, split: str):
    """The train, validation or test split of ``run`` named by ``curvature.split``
    (``validation`` needs ``data.validation_images > 0``)."""
    check_choice(split, SPLITS, "curvature.split")
    if split == "validation" and run.validation_split is None:
        raise ValueError("curvature.split='validation' needs data.validation_images > 0")
    return {"train": run.train_split, "validation": run.validation_split, "test": run.test_split}[split]


class CurvatureMonitor:
    """Logs a Hutchinson trace every ``config.curvature.every_steps`` steps; does nothing at 0."""

    def __init__(self, run, params, metrics):
        settings = run.config.curvature
        self.every_steps = int(settings.every_steps)
        if self.every_steps < 0:
            raise ValueError(f"curvature.every_steps={self.every_steps} must be ≥ 0 (0 turns it off)")
        if not self.every_steps:
            return
        partition(params, settings.params)
        split = curvature_split(run, settings.split)
        batches = fixed_batches(split, settings.batch_size, settings.num_batches, settings.seed)
        self.batches = parallel.replicate(batches, run.mesh)
        self.settings, self.model, self.metrics, self.name = settings, run.ctx.model, metrics, run.config.name
        self.key = jax.random.PRNGKey(settings.seed)

    def maybe_probe(self, step: int, state) -> None:
        """Estimate and log the trace at ``state`` if ``step`` is a multiple of ``every_steps``."""
        if not self.every_steps or step % self.every_steps:
            return
        loss_fn, params, data = model_objective(
            self.model, state.variables, self.batches, self.settings.params
        )
        estimate = hutchinson_trace(
            loss_fn,
            params,
            data,
            self.key,
            num_probes=self.settings.num_probes,
            chunk_size=self.settings.chunk_size,
            log=None,
        )
        self.metrics.write(
            "curvature",
            step,
            {
                "trace": estimate.trace,
                "trace_stderr": estimate.stderr,
                "num_probes": estimate.num_probes,
                "layer_traces": estimate.layer_traces,
            },
        )
        print(
            f"[{self.name}] curvature at step {step}: Hessian trace {estimate.trace:.5g} "
            f"± {estimate.stderr:.2g} ({estimate.num_probes} probes)",
            flush=True,
        )
