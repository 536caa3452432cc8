"""A quantized network's variables as integer tensors and a manifest (what ``mode='export'`` writes).

The quantizers' effective values are read from a real forward pass of the fake-quantized model
(:func:`~jaxquant.quant.layers.capture_quantizers`: every quantizer's ``(x̂, s)`` as the
evaluation uses them), so the exported step is the one the fake-quantized network multiplies
by, to the last bit.

Per conv/dense layer the safetensors file holds (``<layer>`` is the module path, e.g.
``stage0_block0/conv1``):

* ``<layer>.weight_codes``: the weight codes ``q_w`` in the smallest integer dtype that holds the
  ``b``-bit grid (or packed ``8/k`` codes a byte, ``export.pack``), ``<layer>.weight_zero_point``
  ``z_w`` (same dtype), ``<layer>.weight_step`` ``s_w`` (float32, per output channel or one),
  so that ``ŵ = s_w·(q_w − z_w)``; LSQ weights: ``q_w = ⌊ŵ/s_w⌉ + z_w``; DoReFa weights
  ``ŵ = (2q − L)/L`` are stored as the odd codes ``q_w = 2q − L`` with ``s_w = 1/L``, ``z_w = 0``
  (``L = 2^b − 1``);
* ``<layer>.input_step``, ``.input_zero_point``, ``.input_offset``, ``.input_grid_step`` (and
  ``.input_alpha`` for PACT): float32 scalars of the layer's input quantizer;
* ``<layer>.bias`` (float32) when the layer has one; ``<bn>.scale``, ``.bias``, ``.mean``,
  ``.var`` of every BatchNorm (float32, not folded).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxquant.export.integer import integer_dtype, pack_codes
from jaxquant.quant import baselines
from jaxquant.quant import quantizers as qz
from jaxquant.quant.layers import QUANT_STATE, capture_quantizers, elements_per_step

WEIGHT_KINDS = ("lsq", "dorefa")
INPUT_KINDS = ("lsq", "lsq_plus", "pact", "dorefa")
PACK_BITS = (1, 2, 4)  # field widths of packed codes: 8, 4 or 2 codes a byte
BN_HANDLING = {
    "handling": "float",
    "why": (
        "BatchNorm is kept in float32 after the rescaled int32 accumulator, in flax's order of "
        "operations, because training (the group protocol) quantizes the unfolded weights: folding "
        "γ/σ into the weights would change their codes, and folding it into the per-channel rescale "
        "would change the float rounding that the fake-quantized network is compared with"
    ),
}


def layer_variables(tree: dict[str, Any], path: str) -> dict[str, Any]:
    for key in path.split("/"):
        tree = tree.get(key, {})
    return tree


def per_channel(step: np.ndarray) -> np.ndarray:
    """A step of shape ``()`` stays a scalar; ``(1, …, 1, C)`` becomes ``(C,)``."""
    return np.asarray(step, np.float32).reshape(-1) if np.size(step) > 1 else np.asarray(step, np.float32)


def weight_tensors(spec, w_hat, step, zero_point, pack: bool, name: str):
    """``(tensors, manifest entry)`` of one layer's weight codes (module docstring)."""
    if spec is None or spec.kind not in WEIGHT_KINDS:
        kind = None if spec is None else spec.kind
        raise ValueError(
            f"layer {name}: weight quantizer {kind!r} has no integer export: supported {WEIGHT_KINDS}"
        )
    w_hat = np.asarray(w_hat, np.float32)
    grid = qz.int_range(spec.bits, spec.signed)
    if spec.kind == "lsq":
        step = per_channel(step)
        zero = per_channel(zero_point).astype(np.int64)
        code_range = (grid.q_min, grid.q_max)
        codes = np.round(w_hat / step).astype(np.int64) + zero
        centred_range = [int(grid.q_min - zero.max()), int(grid.q_max - zero.min())]
    else:
        levels = 2**spec.bits - 1
        step = np.asarray(1.0 / levels, np.float32)
        zero = np.zeros((), np.int64)
        code_range = (-levels, levels)
        codes = np.round(w_hat / step).astype(np.int64)
        centred_range = list(code_range)
    dtype = integer_dtype(*code_range)
    stored, packing = codes.astype(dtype), None
    width = int(np.ceil(np.log2(code_range[1] - code_range[0] + 1)))
    if pack and width <= max(PACK_BITS):
        bits_per_code = min(k for k in PACK_BITS if k >= width)
        stored = pack_codes(codes, bits_per_code, code_range[0])
        packing = {"bits_per_code": bits_per_code, "code_offset": int(code_range[0]), "order": "lsb-first"}
    tensors = {
        f"{name}.weight_codes": stored,
        f"{name}.weight_zero_point": zero.astype(dtype),
        f"{name}.weight_step": step,
    }
    entry = {
        "kind": spec.kind,
        "bits": spec.bits,
        "signed": bool(spec.signed or spec.kind == "dorefa"),
        "code_range": list(map(int, code_range)),
        "granularity": "tensor" if np.size(step) == 1 else "channel",
        "dtype": str(dtype),
        "packing": packing,
        "codes": f"{name}.weight_codes",
        "zero_point": f"{name}.weight_zero_point",
        "step": f"{name}.weight_step",
        "centred_range": centred_range,
        "step_values": np.ravel(step).tolist(),
        "zero_point_values": np.ravel(zero).tolist(),
    }
    return tensors, entry


def input_tensors(spec, x, step, layer_params, layer_state, name: str):
    """``(tensors, manifest entry)`` of one layer's input quantizer (module docstring)."""
    if spec is None or spec.kind not in INPUT_KINDS:
        kind = None if spec is None else spec.kind
        raise ValueError(
            f"layer {name}: input quantizer {kind!r} has no integer export: supported {INPUT_KINDS}"
        )
    if np.size(step) != 1:
        raise ValueError(
            f"layer {name}: per-channel input steps cannot leave the int32 sum over input channels: "
            "the integer evaluator needs quant.act_granularity='tensor'"
        )
    grid = qz.int_range(spec.bits, spec.signed)
    levels = 2**spec.bits - 1
    params = layer_params.get("input_quant", {})
    step = jnp.reshape(step, ())
    scalars = {"step": step, "zero_point": 0.0, "offset": 0.0, "grid_step": step}
    centred_range = [grid.q_min, grid.q_max]
    if spec.kind == "lsq":
        zero = jnp.reshape(layer_state["input_quant"]["zero_point"], ())
        scalars["zero_point"] = zero
        centred_range = [int(grid.q_min - zero), int(grid.q_max - zero)]
    elif spec.kind == "lsq_plus":
        offset = jnp.reshape(params["offset"], ())
        if spec.grad_scale:  # the offset the module computes with: β·g + sg(β − β·g)
            n = elements_per_step(x, spec.channel_axis, True, spec.act_grad_scale_elements)
            offset = qz.scale_gradient(offset, qz.lsq_grad_scale(n, grid.q_max))
        scalars["offset"] = offset
    elif spec.kind == "pact":
        scalars["alpha"] = jnp.maximum(jnp.reshape(params["alpha"], ()), baselines.EPS)
        centred_range = [0, levels]
    else:
        centred_range = [0, levels]
    tensors = {f"{name}.input_{key}": np.asarray(value, np.float32) for key, value in scalars.items()}
    entry = {
        "kind": spec.kind,
        "bits": spec.bits,
        "signed": bool(spec.signed),
        "q_min": grid.q_min if spec.kind in ("lsq", "lsq_plus") else 0,
        "q_max": grid.q_max if spec.kind in ("lsq", "lsq_plus") else levels,
        "granularity": "tensor",
        "centred_range": centred_range,
        **{key: float(value) for key, value in scalars.items()},
    }
    return tensors, entry


def export_tensors(model, variables, graph, images, pack: bool):
    """``(tensors, layers, batch_norms)``: every tensor of the safetensors file and the
    manifest's per-layer and per-BatchNorm entries, from ``model``'s ``variables``."""
    captured = capture_quantizers(model, variables, images)
    params, state = variables["params"], variables.get(QUANT_STATE, {})
    stats = variables.get("batch_stats", {})
    tensors, layers, batch_norms = {}, {}, {}
    for op in graph.ops:
        name = op.get("layer")
        if op["op"] in ("conv", "dense"):
            quant = model.policy.layer(graph.roles[name])
            layer_params, layer_state = layer_variables(params, name), layer_variables(state, name)
            if f"{name}/weight_quant" not in captured or f"{name}/input_quant" not in captured:
                raise ValueError(
                    f"layer {name} is not quantized: the integer evaluator needs both quantizers"
                )
            weight_call, input_call = captured[f"{name}/weight_quant"], captured[f"{name}/input_quant"]
            w_hat, w_step = weight_call.output, weight_call.step
            x, x_step = input_call.input, input_call.step
            zero = layer_state.get("weight_quant", {}).get("zero_point", 0.0)
            w_tensors, weight = weight_tensors(quant.weight, w_hat, w_step, zero, pack, name)
            x_tensors, quantizer = input_tensors(quant.input, x, x_step, layer_params, layer_state, name)
            tensors.update(w_tensors)
            tensors.update(x_tensors)
            bias = None
            if "bias" in layer_params:
                bias = f"{name}.bias"
                tensors[bias] = np.asarray(layer_params["bias"], np.float32)
            kernel_shape = list(np.shape(layer_params["kernel"]))
            layers[name] = {
                "type": op["op"],
                "role": graph.roles[name],
                "kernel_shape": kernel_shape,
                "weight": weight,
                "input": quantizer,
                "bias": bias,
                "arithmetic": "int32 accumulation of centred integer codes",
            }
        elif op["op"] == "batch_norm":
            entry = {}
            for key, tree in (("scale", params), ("bias", params), ("mean", stats), ("var", stats)):
                tensors[f"{name}.{key}"] = np.asarray(layer_variables(tree, name)[key], np.float32)
                entry[key] = f"{name}.{key}"
            batch_norms[name] = {**entry, "epsilon": op["epsilon"], "arithmetic": "float32"}
    return tensors, layers, batch_norms


def size_rows(tensors: dict[str, np.ndarray], layers, batch_norms) -> list[dict[str, Any]]:
    """Rows of the size table: per layer and BatchNorm the FP32 bytes of its float variables
    against the bytes its exported tensors take; a last row with the totals."""
    rows = []
    for name, layer in layers.items():
        weight = layer["weight"]
        fp32 = 4 * int(np.prod(layer["kernel_shape"])) + (
            4 * tensors[layer["bias"]].size if layer["bias"] else 0
        )
        exported = sum(tensors[key].nbytes for key in tensors if key.startswith(f"{name}."))
        storage = (
            weight["dtype"]
            if weight["packing"] is None
            else f"{weight['packing']['bits_per_code']}-bit packed"
        )
        rows.append(
            {
                "tensor": name,
                "bits": f"w{weight['bits']}a{layer['input']['bits']}",
                "storage": storage,
                "fp32_bytes": fp32,
                "int_bytes": exported,
            }
        )
    for name in batch_norms:
        size = sum(tensors[f"{name}.{key}"].nbytes for key in ("scale", "bias", "mean", "var"))
        rows.append(
            {"tensor": name, "bits": "-", "storage": "float32", "fp32_bytes": size, "int_bytes": size}
        )
    rows.append(
        {
            "tensor": "total",
            "bits": "-",
            "storage": "-",
            "fp32_bytes": sum(row["fp32_bytes"] for row in rows),
            "int_bytes": sum(row["int_bytes"] for row in rows),
        }
    )
    return rows
