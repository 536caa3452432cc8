"""The integer-arithmetic evaluator: runs an exported model from its two files alone.

It reads ``manifest.json`` (the graph, every layer's quantizers) and ``model.safetensors``
(``safetensors.numpy``: integer weight codes, float32 steps, zero points, offsets, biases and
BatchNorm tensors) and evaluates the graph (:mod:`jaxquant.export.graph`):

* a quantized layer maps its float input to integer codes with its input quantizer
  (:func:`input_codes`), takes the weight codes, both centred on their zero points in integer
  arithmetic (``c = q − z``), and accumulates ``acc = Σ c_x·c_w`` in int32
  (``lax.conv_general_dilated`` / ``lax.dot_general`` with ``preferred_element_type=int32``,
  operands in the smallest signed integer type that holds the centred codes);
* the accumulator goes back to float once, ``y = acc·s_x·s_w (+ β_x·s_w·Σ_window c_w) (+ bias)``
  (:func:`rescale_accumulator`; the ``β_x`` term only for LSQ+'s real-valued input offset);
* float, as the manifest states: BatchNorm (not folded), ReLU, max-pool, residual adds, the
  global mean and the classifier's output.

The input quantizers reuse the training code's pure functions
(:mod:`jaxquant.quant.quantizers`, :mod:`jaxquant.quant.baselines`), so the codes are those
the fake-quantized network puts its tensors on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from jaxquant.quant import baselines
from jaxquant.quant import quantizers as qz

MANIFEST_FILE = "manifest.json"
TENSORS_FILE = "model.safetensors"
INTEGER_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32)  # smallest first, unsigned first


def integer_dtype(lo: int, hi: int, signed_only: bool = False) -> np.dtype:
    """The smallest integer dtype of :data:`INTEGER_TYPES` holding every integer in ``[lo, hi]``."""
    for dtype in INTEGER_TYPES:
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max and (info.min < 0 or not signed_only):
            return np.dtype(dtype)
    raise ValueError(f"codes in [{lo}, {hi}] need more than 32 bits")


def unpack_codes(packed: np.ndarray, bits_per_code: int, code_offset: int, shape: list[int]) -> np.ndarray:
    """Codes from bytes holding ``8/k`` fields of ``k`` bits each, the first code in the lowest
    bits: ``code_i = ((byte_{⌊i·k/8⌋} >> (i·k mod 8)) & (2^k − 1)) + code_offset``."""
    count = int(np.prod(shape))
    per_byte = 8 // bits_per_code
    shifts = np.arange(per_byte, dtype=np.uint8) * bits_per_code
    fields = (packed[:, None] >> shifts[None, :]) & np.uint8(2**bits_per_code - 1)
    return (fields.reshape(-1)[:count].astype(np.int32) + code_offset).reshape(shape)


def pack_codes(codes: np.ndarray, bits_per_code: int, code_offset: int) -> np.ndarray:
    """Inverse of :func:`unpack_codes`: ``byte_j = Σ_i ((code_i − code_offset) << (i·k mod 8))``
    over the ``8/k`` codes ``i`` of byte ``j`` (C order, the last byte padded with zeros)."""
    per_byte = 8 // bits_per_code
    fields = (codes.reshape(-1).astype(np.int64) - code_offset).astype(np.uint8)
    fields = np.pad(fields, (0, -len(fields) % per_byte)).reshape(-1, per_byte)
    shifts = np.arange(per_byte, dtype=np.uint8) * bits_per_code
    return np.bitwise_or.reduce(fields << shifts[None, :], axis=1).astype(np.uint8)


# kind → x̂ = fake_quantize(x) of an input quantizer, from its exported scalars
FAKE_INPUT: dict[str, Callable[[jax.Array, dict[str, Any], dict[str, jax.Array]], jax.Array]] = {
    "lsq": lambda x, q, t: qz.fake_quantize(x, t["step"], t["zero_point"], q["q_min"], q["q_max"]),
    "lsq_plus": lambda x, q, t: baselines.fake_quantize_offset(
        x, t["step"], t["offset"], q["q_min"], q["q_max"]
    ),
    "pact": lambda x, q, t: baselines.pact_quantize(x, t["alpha"], q["bits"]),
    "dorefa": lambda x, q, t: baselines.dorefa_activation(x, q["bits"]),
}


def input_codes(x: jax.Array, quantizer: dict[str, Any], scalars: dict[str, jax.Array]) -> jax.Array:
    """Centred integer codes of a layer input: ``c = ⌊(x̂ − β)/s⌉`` with ``x̂`` the quantizer's
    fake-quantized value (:data:`FAKE_INPUT`), ``s`` its grid step and ``β`` its offset
    (LSQ: ``c = q − z``; LSQ+: ``c = q``, ``β`` the learned offset; PACT ``s = α/(2^b − 1)``,
    DoReFa ``s = 1/(2^b − 1)``, ``c = q``), cast to the smallest type holding ``c``'s range."""
    x_hat = FAKE_INPUT[quantizer["kind"]](x, quantizer, scalars)
    codes = jnp.round((x_hat - scalars["offset"]) / scalars["grid_step"])
    return codes.astype(integer_dtype(*quantizer["centred_range"], signed_only=True))


def integer_conv(codes: jax.Array, kernel_codes: jax.Array, strides, padding) -> jax.Array:
    """``acc[n, h, w, o] = Σ_{i, j, c} x[n, s·h + i, s·w + j, c]·k[i, j, c, o]`` in int32 (NHWC, HWIO)."""
    return jax.lax.conv_general_dilated(
        codes,
        kernel_codes,
        window_strides=tuple(strides),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.int32,
    )


def integer_dense(codes: jax.Array, kernel_codes: jax.Array) -> jax.Array:
    """``acc[n, o] = Σ_i x[n, i]·k[i, o]`` in int32."""
    return jax.lax.dot_general(
        codes, kernel_codes, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )


def rescale_accumulator(
    acc: jax.Array, input_step: jax.Array, weight_step: jax.Array, offset_term: jax.Array | None
) -> jax.Array:
    """``y = acc·s_x·s_w + β_x·s_w·Σ_window c_w`` in float32 (``offset_term`` is
    ``Σ_window c_w`` times ``β_x``, or ``None`` when the input has no real offset)."""
    y = acc.astype(jnp.float32) * input_step * weight_step
    if offset_term is not None:
        y = y + offset_term * weight_step
    return y


def quantized_layer(x: jax.Array, op: dict[str, Any], layer: dict[str, Any], tensors) -> jax.Array:
    """One conv or dense layer of the graph on integer codes (module docstring)."""
    name, quantizer = op["layer"], layer["input"]
    scalars = {key: tensors[f"{name}.input_{key}"] for key in ("step", "zero_point", "offset", "grid_step")}
    if quantizer["kind"] == "pact":
        scalars["alpha"] = tensors[f"{name}.input_alpha"]
    codes = input_codes(x, quantizer, scalars)
    kernel_codes = tensors[f"{name}.weight_centred"]
    if op["op"] == "conv":
        linear = lambda operand: integer_conv(operand, kernel_codes, op["strides"], op["padding"])
    else:
        linear = lambda operand: integer_dense(operand, kernel_codes)
    offset_term = None
    if quantizer["kind"] == "lsq_plus":
        offset_term = linear(jnp.ones_like(codes)).astype(jnp.float32) * scalars["offset"]
    y = rescale_accumulator(linear(codes), scalars["step"], tensors[f"{name}.weight_step"], offset_term)
    if layer["bias"] is not None:
        y = y + tensors[layer["bias"]]
    return y


def batch_norm(x: jax.Array, op: dict[str, Any], tensors) -> jax.Array:
    """``y = (x − μ)·(γ/sqrt(σ² + ε)) + β`` with the running statistics (flax's order of operations)."""
    name = op["layer"]
    multiplier = jax.lax.rsqrt(tensors[f"{name}.var"] + op["epsilon"]) * tensors[f"{name}.scale"]
    return (x - tensors[f"{name}.mean"]) * multiplier + tensors[f"{name}.bias"]


def max_pool(x: jax.Array, op: dict[str, Any]) -> jax.Array:
    """``y[n, h, w, c] = max_{i, j < window} x[n, s·h + i, s·w + j, c]`` (VALID)."""
    window, strides = (1, *op["window"], 1), (1, *op["strides"], 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")


FLOAT_OPS: dict[str, Callable[..., jax.Array]] = {
    "relu": lambda op, tensors, x: jax.nn.relu(x),
    "add": lambda op, tensors, x, y: x + y,
    "global_mean": lambda op, tensors, x: jnp.mean(x, axis=(1, 2)),
    "max_pool": lambda op, tensors, x: max_pool(x, op),
    "batch_norm": lambda op, tensors, x: batch_norm(x, op, tensors),
}


def run_graph(manifest: dict[str, Any], tensors: dict[str, jax.Array], images: jax.Array) -> jax.Array:
    """The logits of ``images`` (NHWC, normalised as the data pipeline gives them)."""
    values = {"image": images}
    for op in manifest["graph"]:
        inputs = [values[name] for name in op["inputs"]]
        if op["op"] in ("conv", "dense"):
            values[op["output"]] = quantized_layer(inputs[0], op, manifest["layers"][op["layer"]], tensors)
        else:
            values[op["output"]] = FLOAT_OPS[op["op"]](op, tensors, *inputs)
    return values[manifest["graph"][-1]["output"]]


def centred_weight_codes(manifest: dict[str, Any], raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``c_w = q_w − z_w`` of every layer (unpacked first when the manifest says so), in the
    smallest signed type that holds them."""
    centred = {}
    for name, layer in manifest["layers"].items():
        weight = layer["weight"]
        codes = raw[weight["codes"]]
        if weight["packing"] is not None:
            packing = weight["packing"]
            codes = unpack_codes(
                codes, packing["bits_per_code"], packing["code_offset"], layer["kernel_shape"]
            )
        values = codes.astype(np.int32) - raw[weight["zero_point"]].astype(np.int32)
        centred[f"{name}.weight_centred"] = values.astype(integer_dtype(*weight["centred_range"], True))
    return centred


class IntegerModel:
    """An exported model loaded from its folder: ``model(images)`` gives float32 logits."""

    def __init__(self, folder: str):
        with open(os.path.join(folder, MANIFEST_FILE)) as f:
            self.manifest = json.load(f)
        raw = load_file(os.path.join(folder, self.manifest["tensors_file"]))
        arrays = {**raw, **centred_weight_codes(self.manifest, raw)}
        self.tensors = {key: jnp.asarray(value) for key, value in arrays.items()}
        self.forward = jax.jit(lambda tensors, images: run_graph(self.manifest, tensors, images))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.forward(self.tensors, images)


__all__ = ["IntegerModel", "integer_dtype", "pack_codes", "run_graph", "unpack_codes"]
