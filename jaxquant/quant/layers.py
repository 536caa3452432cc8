"""Quantized Flax layers: they own weights and quantizer variables, and call pure functions.

Variable collections:

* ``params``      weights and learned quantizer parameters (``step``, ...);
* ``quant_state`` fixed quantizer state (``zero_point``): not trained;
* ``intermediates`` feature taps, filled only when the caller makes it mutable
  (``conv_out`` of each conv, ``features`` of a model's penultimate layer).

Calibration: a quantizer (re)initialises its step and zero point from the tensor it sees
whenever ``quant_state`` is mutable outside of ``init`` — see
:func:`jaxquant.quant.calibration.calibrate`.

Compute dtype (``LayerQuant.compute_dtype``, from ``config.model.compute_dtype``): every
quantizer works in float32 (``x/s + z``, rounding, clipping, the step's gradient), and so do
parameters, BatchNorm and the layer's output. Only the conv/matmul runs in ``bfloat16``, with
float32 accumulation. A tensor that an LSQ quantizer of at most 8 bits put on its grid
enters it as its integer codes ``x̂/s = x_int − z`` (exact in bfloat16, whose 8-bit
significand holds every integer up to 256), and the per-tensor input step and per-output-
channel weight step multiply the float32 result: the product is the float32 one up to the
summation order. Any other tensor (an FP layer, a perturbed input, other estimators, more
than 8 bits, per-channel input steps) is rounded to bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.quant import quantizers as qz
from jaxquant.quant.observers import get_observer
from jaxquant.quant.policy import LayerQuant, QuantizerSpec

QUANT_STATE = "quant_state"  # fixed quantizer state (zero points); mutable only to calibrate
QUANTIZER_SUFFIX = "_quant"  # every quantizer module's name ends so (input_quant, weight_quant, ...)
QuantizerKind = Callable[["Quantizer", jax.Array, bool], tuple[jax.Array, jax.Array]]
QUANTIZER_KINDS: dict[str, QuantizerKind] = {}


def register_quantizer_kind(name: str):
    """Decorator: register ``fn(module, x, calibrating) -> (x_hat, step)`` as a kind."""

    def wrap(fn: QuantizerKind) -> QuantizerKind:
        QUANTIZER_KINDS[name] = fn
        return fn

    return wrap


def stat_shape(x: jax.Array, channel_axis: int | None) -> tuple[int, ...]:
    """Shape of a per-tensor (``()``) or per-channel (broadcastable) statistic of ``x``."""
    if channel_axis is None:
        return ()
    shape = [1] * x.ndim
    shape[channel_axis] = x.shape[channel_axis]
    return tuple(shape)


def elements_per_step(
    x: jax.Array, channel_axis: int | None, is_activation: bool, act_elements: str = "sample"
) -> int:
    """``N`` of the LSQ gradient scale ``g = 1/sqrt(N·Q_P)``: the elements sharing one step.

    For weights, the tensor (or one output channel). For activations ``act_elements`` picks
    the convention: ``sample`` counts one sample's features (LSQ, Esser et al. 2020: "the
    number of features in the layer"), ``batch`` the whole batch tensor as MQBench does
    (``B`` times smaller ``g``; under a mesh ``B`` is the global batch).
    """
    size = int(np.prod(x.shape))
    if is_activation and x.ndim > 1 and act_elements == "sample":
        size //= x.shape[0]
    if channel_axis is not None:
        size //= x.shape[channel_axis]
    return max(size, 1)


def calibrated_step_and_zero_point(spec: QuantizerSpec, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Step and zero point for ``x`` from the spec's init rule and observer."""
    rng = qz.int_range(spec.bits, spec.signed)
    shape = stat_shape(x, spec.channel_axis)
    if spec.init == "lsq":
        step = qz.lsq_init_step(x, rng.q_max, spec.channel_axis)
        zero = jnp.zeros_like(step) if spec.signed else jnp.full_like(step, rng.q_min)
        return step.reshape(shape), zero.reshape(shape)
    observer = get_observer(spec.observer)
    lo, hi = observer(
        x,
        spec.channel_axis,
        bits=spec.bits,
        signed=spec.signed,
        symmetric=spec.symmetric,
        **dict(spec.observer_options),
    )
    step, zero = qz.minmax_step_and_zero_point(lo, hi, spec.bits, spec.signed, spec.symmetric)
    return step.reshape(shape), zero.reshape(shape)


class Quantizer(nn.Module):
    """One fake quantizer; its estimator is chosen by ``spec.kind``."""

    spec: QuantizerSpec
    is_activation: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Return ``(x̂, s)``: the fake-quantized tensor and its (effective) step size."""
        if self.spec.kind not in QUANTIZER_KINDS:
            raise ValueError(
                f"quantizer kind {self.spec.kind!r} is unknown: allowed {sorted(QUANTIZER_KINDS)}"
            )
        calibrating = self.is_mutable_collection(QUANT_STATE) and not self.is_initializing()
        return QUANTIZER_KINDS[self.spec.kind](self, x, calibrating)


@register_quantizer_kind("lsq")
def lsq_quantizer(module: Quantizer, x: jax.Array, calibrating: bool):
    """LSQ: ``x̂ = (clip(⌊x/s⌉ + z, q_min, q_max) − z)·s`` with learned ``s``, fixed ``z``.

    The step's gradient is scaled by ``g = 1/sqrt(N·Q_P)`` when ``spec.grad_scale``.
    """
    spec = module.spec
    rng = qz.int_range(spec.bits, spec.signed)
    step = module.variable("params", "step", lambda: calibrated_step_and_zero_point(spec, x)[0])
    zero = module.variable(QUANT_STATE, "zero_point", lambda: calibrated_step_and_zero_point(spec, x)[1])
    if calibrating:
        step.value, zero.value = calibrated_step_and_zero_point(spec, x)
    s = step.value
    if spec.grad_scale:
        n = elements_per_step(x, spec.channel_axis, module.is_activation, spec.act_grad_scale_elements)
        s = qz.scale_gradient(s, qz.lsq_grad_scale(n, rng.q_max))
    s = jnp.abs(s) + 1e-12
    return qz.fake_quantize(x, s, zero.value, rng.q_min, rng.q_max), s


class QuantizerCall(NamedTuple):
    """One quantizer's call in a forward pass: its ``input``, its ``output`` ``x̂``, its
    effective ``step`` ``s`` and its ``spec``."""

    input: jax.Array
    output: jax.Array
    step: jax.Array
    spec: QuantizerSpec


def capture_quantizers(
    model: nn.Module, variables: dict[str, Any], images: jax.Array
) -> dict[str, QuantizerCall]:
    """``{quantizer path: QuantizerCall}`` of one evaluation-mode forward pass of ``images``
    (a path such as ``conv1/weight_quant``)."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Quantizer) and context.method_name == "__call__":
            path = "/".join(context.module.scope.path)
            captured[path] = QuantizerCall(args[0], *out, context.module.spec)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, images, train=False)
    return captured


def is_quantizer_name(name: str) -> bool:
    """Whether a module name is a quantizer's (:data:`QUANTIZER_SUFFIX`)."""
    return name.endswith(QUANTIZER_SUFFIX)


EXACT_GRID_BITS = 8  # bfloat16 holds every integer code of at most this many bits


def on_exact_grid(spec: QuantizerSpec | None, step: jax.Array | None, scale_axis: int | None) -> bool:
    """Whether a tensor quantized by ``spec`` with ``step`` can enter a bfloat16 matmul as its
    integer codes: an LSQ (zero-point) quantizer of at most :data:`EXACT_GRID_BITS` bits whose
    step is one scalar, or varies only along ``scale_axis`` (the output channels)."""
    if spec is None or step is None or spec.kind != "lsq" or spec.bits > EXACT_GRID_BITS:
        return False
    shape = jnp.shape(step)
    varying = [axis for axis, size in enumerate(shape) if size > 1]
    return not varying or (scale_axis is not None and varying == [scale_axis % len(shape)])


def compute_operand(value: jax.Array, grid_step: jax.Array | None, dtype: str):
    """``(operand, scale)`` with ``value = operand · scale`` for a matmul in ``dtype``:
    float32 as it is (``scale`` None); in bfloat16 the integer codes ``value / s`` when
    ``grid_step`` is the step of an exact grid (:func:`on_exact_grid`), else ``value`` rounded."""
    if dtype == "float32":
        return value, None
    if grid_step is not None:
        return (value / grid_step).astype(jnp.bfloat16), grid_step
    return value.astype(jnp.bfloat16), None


def rescale(y: jax.Array, *scales: jax.Array | None) -> jax.Array:
    """``y`` times each per-tensor or per-output-channel scale (the last axis of ``y``)."""
    for scale in scales:
        if scale is not None:
            y = y * jnp.reshape(scale, (-1,)) if jnp.size(scale) > 1 else y * jnp.reshape(scale, ())
    return y


class _QuantizedLayer(nn.Module):
    """Shared part of :class:`QConv` and :class:`QDense`: quantize input and weight.

    A perturbation with ``position == 'before_quant'`` perturbs the input before its
    quantizer (reading the step from a first call of the same quantizer); otherwise after.
    Each returns ``(tensor, grid_step)``: the step when the tensor lies exactly on its
    quantizer's integer grid (see :func:`on_exact_grid`), else ``None``.
    """

    def quantize_input(self, x: jax.Array, quant: LayerQuant, train: bool):
        step = None
        if quant.input is not None:
            quantizer = Quantizer(quant.input, is_activation=True, name="input_quant")
            if getattr(quant.perturbation, "position", "after_quant") == "before_quant":
                _, step = quantizer(x)
                return quantizer(quant.perturbation.perturb_input(self, x, step, train))[0], None
            x, step = quantizer(x)
        if quant.perturbation is not None:
            x = quant.perturbation.perturb_input(self, x, step, train)
            return x, None
        return x, step if on_exact_grid(quant.input, step, None) else None

    def quantize_weight(self, w: jax.Array, quant: LayerQuant, train: bool):
        step = None
        if quant.weight is not None:
            w, step = Quantizer(quant.weight, is_activation=False, name="weight_quant")(w)
        if quant.perturbation is not None:
            w = quant.perturbation.perturb_weight(self, w, train)
            return w, None
        return w, step if on_exact_grid(quant.weight, step, -1) else None


class QConv(_QuantizedLayer):
    """NHWC convolution whose input and kernel (HWIO) are fake-quantized.

    Sows its output as ``intermediates/conv_out`` (the CSD feature tap).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    feature_group_count: int = 1
    use_bias: bool = False
    quant: LayerQuant = LayerQuant()
    kernel_init: Callable = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_features = x.shape[-1]
        kernel_shape = (*self.kernel_size, in_features // self.feature_group_count, self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, jnp.float32)
        x, x_step = self.quantize_input(x, self.quant, train)
        kernel, w_step = self.quantize_weight(kernel, self.quant, train)
        x, x_scale = compute_operand(x, x_step, self.quant.compute_dtype)
        kernel, w_scale = compute_operand(kernel, w_step, self.quant.compute_dtype)
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=tuple(self.strides),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.feature_group_count,
            preferred_element_type=jnp.float32,
        )
        y = rescale(y, x_scale, w_scale)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        self.sow("intermediates", "conv_out", y)
        return y


class QDense(_QuantizedLayer):
    """Dense layer whose input and kernel ``(in, out)`` are fake-quantized."""

    features: int
    use_bias: bool = True
    quant: LayerQuant = LayerQuant()
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        x, x_step = self.quantize_input(x, self.quant, train)
        kernel, w_step = self.quantize_weight(kernel, self.quant, train)
        x, x_scale = compute_operand(x, x_step, self.quant.compute_dtype)
        kernel, w_scale = compute_operand(kernel, w_step, self.quant.compute_dtype)
        y = rescale(jnp.dot(x, kernel, preferred_element_type=jnp.float32), x_scale, w_scale)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y
