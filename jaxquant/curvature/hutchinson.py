"""Hutchinson's estimator of the Hessian trace, for the whole model and per layer in one pass.

``Tr(H) = E_v[vᵀ H v]`` for Rademacher ``v`` (entries ±1 with probability ½), since
``E[v vᵀ] = I``. With ``N`` probes the estimate is the sample mean of ``vᵢᵀ H vᵢ`` and its
standard error ``std(vᵢᵀ H vᵢ)/√N``.

Per layer ``b`` (a block of coordinates): ``Tr(H_bb) = E[v_bᵀ (H v)_b]``, because the
cross terms ``E[v_bᵀ H_bc v_c]`` vanish for independent blocks. So every probe's
``Σ_i v_i (Hv)_i`` is split into per-layer sums, and the per-layer estimates add up to the
total probe by probe.

Probes run in chunks: each chunk is one compiled ``lax.scan`` over its probe keys; between
chunks the host prints progress and stops once the running estimate has changed by less than
``tol`` (relative) over the last block of at least ``TOL_PROBES`` probes (a single probe close
to the mean would otherwise stop it by chance). Probe ``i`` always uses the ``i``-th key of
``key``, so the same key gives the same probes however they are chunked: a fixed key makes
estimates over a training run comparable.

On CPU the default is different: XLA:CPU runs convolution gradients inside a loop body
10–60× slower than outside one (jax issue #12868; measured here: one HVP of the digits CNN
0.1 s straight, 4–5 s as a scan of length 1). So on the CPU backend each probe is one call of the
compiled HVP (``rolled=False``, ``chunk_size=1``), with no loop primitive around it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.curvature.hvp import LossFn, hvp, jitted_hvp, layer_name, leaf_names

LOG_SECONDS = 2.0  # at most one progress line per this many seconds (and the last one)
TOL_PROBES = 10  # the tolerance compares running means at least this many probes apart


def rademacher_like(key: jax.Array, tree):
    """A pytree like ``tree`` with independent ±1 entries (same dtypes)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = list(jax.random.split(key, len(leaves))) if leaves else []
    probes = [
        jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, probes)


def check_has_parameters(params, what: str) -> int:
    """The number of scalar parameters; none is a one-line error."""
    size = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if size == 0:
        raise ValueError(f"{what}: the selected parameters are empty (no coordinates to measure)")
    return size


@dataclasses.dataclass
class TraceEstimate:
    """Hutchinson estimate of ``Tr(H)`` and of each layer's ``Tr(H_bb)``."""

    trace: float
    stderr: float
    probe_values: np.ndarray
    layer_traces: dict[str, float]
    layer_stderr: dict[str, float]
    layer_sizes: dict[str, int]
    converged: bool

    @property
    def num_probes(self) -> int:
        return len(self.probe_values)

    def to_dict(self) -> dict:
        return {
            "trace": self.trace,
            "stderr": self.stderr,
            "num_probes": self.num_probes,
            "converged": self.converged,
            "probe_values": self.probe_values.tolist(),
            "layers": {
                name: {
                    "trace": self.layer_traces[name],
                    "stderr": self.layer_stderr[name],
                    "num_params": self.layer_sizes[name],
                }
                for name in self.layer_traces
            },
        }


def mean_and_stderr(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and standard error ``std(ddof=1)/√N`` along axis 0 (0 for one value)."""
    values = np.asarray(values, np.float64)
    mean = values.mean(axis=0)
    if len(values) < 2:
        return mean, np.zeros_like(mean)
    return mean, values.std(axis=0, ddof=1) / math.sqrt(len(values))


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def layer_products(v, hv, leaf_groups: tuple[int, ...], num_groups: int) -> jax.Array:
    """``[num_groups]`` sums ``v_bᵀ (Hv)_b`` over the leaves of each layer ``b``."""
    per_leaf = jnp.stack(
        [jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hv), strict=True)]
    )
    return jax.ops.segment_sum(per_leaf, jnp.asarray(leaf_groups, jnp.int32), num_segments=num_groups)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def scanned_probes(loss_fn: LossFn, leaf_groups: tuple[int, ...], num_groups: int, params, data, keys):
    """``[len(keys), num_groups]`` per-layer values, one probe per key under ``lax.scan``."""

    def one_probe(carry, key):
        v = rademacher_like(key, params)
        return carry, layer_products(v, hvp(loss_fn, params, data, v), leaf_groups, num_groups)

    return jax.lax.scan(one_probe, None, keys)[1]


jitted_rademacher_like = jax.jit(rademacher_like)
jitted_layer_products = jax.jit(layer_products, static_argnums=(2, 3))


def probe_chunk(
    loss_fn: LossFn, leaf_groups: tuple[int, ...], num_groups: int, rolled: bool, params, data, keys
):
    """``[len(keys), num_groups]`` per-layer values ``v_bᵀ (Hv)_b``, one probe per key: under
    ``lax.scan`` when ``rolled``, else one call of the compiled HVP per probe (for XLA:CPU,
    see the module docstring; the same compiled HVP then also serves Lanczos)."""
    if rolled:
        return scanned_probes(loss_fn, leaf_groups, num_groups, params, data, keys)
    rows = []
    for key in keys:
        v = jitted_rademacher_like(key, params)
        hv = jitted_hvp(loss_fn, params, data, v)
        rows.append(jitted_layer_products(v, hv, leaf_groups, num_groups))
    return jnp.stack(rows)


def hutchinson_trace(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    *,
    num_probes: int = 100,
    chunk_size: int | None = None,
    tol: float = 0.0,
    rolled: bool | None = None,
    group_fn: Callable[[str], str] = layer_name,
    log: Callable[[str], None] | None = print,
) -> TraceEstimate:
    """Estimate ``Tr(∇²L)`` at ``params`` with up to ``num_probes`` Rademacher probes.

    ``group_fn`` maps a leaf path (``'conv0/kernel'``) to its layer (default
    :func:`~jaxquant.curvature.hvp.layer_name`). Stops after a chunk when
    ``|m_new − m_old| ≤ tol·|m_old|`` for the running means now and ``TOL_PROBES`` or more
    probes earlier, at a chunk boundary (``tol = 0``: always all probes). ``log`` receives a
    progress line every ``LOG_SECONDS`` and at the end. ``chunk_size`` and ``rolled``
    default to 10 and ``lax.scan`` on accelerators, 1 and straight code on CPU.
    """
    check_has_parameters(params, "hutchinson_trace")
    rolled = not on_cpu() if rolled is None else rolled
    chunk_size = (10 if rolled else 1) if not chunk_size else chunk_size
    if num_probes < 1 or chunk_size < 1:
        raise ValueError(
            f"num_probes={num_probes} and chunk_size={chunk_size} must both be positive integers"
        )
    names = leaf_names(params)
    layers = sorted({group_fn(n) for n in names}, key=[group_fn(n) for n in names].index)
    leaf_groups = tuple(layers.index(group_fn(n)) for n in names)
    chunk_size = min(chunk_size, num_probes)
    num_chunks = math.ceil(num_probes / chunk_size)
    keys = jax.random.split(key, num_chunks * chunk_size)
    keys = keys.reshape((num_chunks, chunk_size, *keys.shape[1:]))
    chunks: list[np.ndarray] = []
    previous, probes_at_previous, converged, last_log = None, 0, False, 0.0
    for index in range(num_chunks):
        values = probe_chunk(loss_fn, leaf_groups, len(layers), rolled, params, data, keys[index])
        chunks.append(np.asarray(values, np.float64))
        totals = np.concatenate(chunks)[:num_probes].sum(axis=1)
        estimate, stderr = mean_and_stderr(totals)
        checked = len(totals) - probes_at_previous >= TOL_PROBES
        converged = (
            checked and previous is not None and tol > 0 and abs(estimate - previous) <= tol * abs(previous)
        )
        finished = converged or index == num_chunks - 1
        if log is not None and (finished or time.time() - last_log >= LOG_SECONDS):
            last_log = time.time()
            done = f"probe {len(totals)}/{num_probes}"
            log(f"hutchinson: {done}, running estimate {estimate:.6g} ± {stderr:.2g}")
        if converged:
            break
        if checked:
            previous, probes_at_previous = estimate, len(totals)
    per_layer = np.concatenate(chunks)[:num_probes]
    totals = per_layer.sum(axis=1)
    trace, stderr = mean_and_stderr(totals)
    layer_means, layer_errors = mean_and_stderr(per_layer)
    sizes = dict.fromkeys(layers, 0)
    for name, leaf in zip(names, jax.tree.leaves(params), strict=True):
        sizes[group_fn(name)] += int(np.size(leaf))
    return TraceEstimate(
        trace=float(trace),
        stderr=float(stderr),
        probe_values=totals,
        layer_traces={n: float(v) for n, v in zip(layers, layer_means, strict=True)},
        layer_stderr={n: float(v) for n, v in zip(layers, layer_errors, strict=True)},
        layer_sizes=sizes,
        converged=bool(converged),
    )
