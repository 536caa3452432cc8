"""Quantization policy: which quantizer each layer's weights and inputs get.

A model takes a :class:`QuantPolicy` as a constructor argument and asks it, per layer
role, for a :class:`LayerQuant`. The model code never changes between FP, LSQ, PACT, ...

Group protocol (docs/methods.md §0): weights per output channel, activations per tensor,
first and last layer at 8 bits, asymmetric min/max initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxquant.checks import check_choice
from jaxquant.quant.quantizers import check_bits

ROLES = ("first", "middle", "last")
GRANULARITIES = ("channel", "tensor")
SCHEMES = ("asymmetric", "symmetric")
INITS = ("minmax", "lsq")
COMPUTE_DTYPES = ("float32", "bfloat16")
ACT_GRAD_SCALE_ELEMENTS = ("sample", "batch")


@dataclasses.dataclass(frozen=True)
class QuantizerSpec:
    """Static description of one fake quantizer.

    ``kind`` selects the estimator (see ``jaxquant.quant.layers.QUANTIZER_KINDS``),
    ``channel_axis=None`` means one step for the whole tensor.
    """

    bits: int
    signed: bool
    symmetric: bool = False
    channel_axis: int | None = None
    kind: str = "lsq"
    init: str = "minmax"
    observer: str = "minmax"
    observer_options: tuple[tuple[str, Any], ...] = ()
    grad_scale: bool = True
    act_grad_scale_elements: str = "sample"  # N of an input's LSQ gradient scale: sample | batch

    def __post_init__(self):
        check_bits(self.bits)
        check_choice(self.init, INITS, "quant.init")
        check_choice(self.act_grad_scale_elements, ACT_GRAD_SCALE_ELEMENTS, "quant.act_grad_scale_elements")


@dataclasses.dataclass(frozen=True)
class LayerQuant:
    """Quantizers of one conv/dense layer; ``None`` leaves that tensor in full precision.

    ``perturbation`` is an optional object with ``perturb_input(module, x, step, train)``
    and ``perturb_weight(module, w, train)`` (FPQ / DNQ noise); it is applied by the layer.
    A policy whose ``perturbation`` is a :class:`RolePerturbations` gives each role its own.
    """

    weight: QuantizerSpec | None = None
    input: QuantizerSpec | None = None
    perturbation: Any = None
    compute_dtype: str = "float32"  # of the layer's conv/matmul; see quant/layers.py


@dataclasses.dataclass(frozen=True)
class RolePerturbations:
    """One perturbation per layer role (``None``: that role is not perturbed)."""

    first: Any = None
    middle: Any = None
    last: Any = None

    def for_role(self, role: str) -> Any:
        check_choice(role, ROLES, "layer role")
        return getattr(self, role)


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
    """Maps a layer role (``first``, ``middle``, ``last``) to its :class:`LayerQuant`.

    ``w_bits``/``a_bits`` of ``None`` mean full precision for that tensor everywhere.
    ``first_last_kind`` (if set) replaces both kinds in the first and last layer.
    """

    w_bits: int | None = None
    a_bits: int | None = None
    first_last_bits: int | None = 8
    weight_kind: str = "lsq"
    act_kind: str = "lsq"
    first_last_kind: str | None = None
    weight_granularity: str = "channel"
    act_granularity: str = "tensor"
    scheme: str = "asymmetric"
    init: str = "minmax"
    grad_scale: bool = True
    act_grad_scale_elements: str = "sample"
    act_signed: bool = False
    observer: str = "minmax"
    observer_options: tuple[tuple[str, Any], ...] = ()
    perturbation: Any = None
    compute_dtype: str = "float32"

    def __post_init__(self):
        check_choice(self.compute_dtype, COMPUTE_DTYPES, "model.compute_dtype")
        if self.w_bits is not None:
            check_bits(self.w_bits, "quant.w_bits")
        if self.a_bits is not None:
            check_bits(self.a_bits, "quant.a_bits")
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "quant.first_last_bits")
        check_choice(self.weight_granularity, GRANULARITIES, "quant.weight_granularity")
        check_choice(self.act_granularity, GRANULARITIES, "quant.act_granularity")
        check_choice(self.scheme, SCHEMES, "quant.scheme")
        check_choice(self.init, INITS, "quant.init")
        check_choice(self.act_grad_scale_elements, ACT_GRAD_SCALE_ELEMENTS, "quant.act_grad_scale_elements")

    @property
    def quantizes(self) -> bool:
        return self.w_bits is not None or self.a_bits is not None

    def _bits(self, bits: int | None, role: str) -> int | None:
        if bits is None:
            return None
        if role in ("first", "last") and self.first_last_bits is not None:
            return self.first_last_bits
        return bits

    def layer(self, role: str, weight_channel_axis: int = -1) -> LayerQuant:
        """The quantizers of a layer with this ``role``; weights per ``weight_channel_axis``."""
        check_choice(role, ROLES, "layer role")
        symmetric = self.scheme == "symmetric"
        w_bits = self._bits(self.w_bits, role)
        a_bits = self._bits(self.a_bits, role)
        weight_kind, act_kind = self.weight_kind, self.act_kind
        if role in ("first", "last") and self.first_last_kind is not None:
            weight_kind = act_kind = self.first_last_kind
        common = dict(
            symmetric=symmetric,
            init=self.init,
            observer=self.observer,
            observer_options=self.observer_options,
            grad_scale=self.grad_scale,
        )
        weight = None
        if w_bits is not None:
            weight = QuantizerSpec(
                bits=w_bits,
                signed=symmetric,
                channel_axis=weight_channel_axis if self.weight_granularity == "channel" else None,
                kind=weight_kind,
                **common,
            )
        act = None
        if a_bits is not None:
            act = QuantizerSpec(
                bits=a_bits,
                signed=symmetric and (self.act_signed or role == "first"),
                channel_axis=None if self.act_granularity == "tensor" else -1,
                kind=act_kind,
                act_grad_scale_elements=self.act_grad_scale_elements,
                **common,
            )
        perturbation = self.perturbation
        if isinstance(perturbation, RolePerturbations):
            perturbation = perturbation.for_role(role)
        return LayerQuant(
            weight=weight, input=act, perturbation=perturbation, compute_dtype=self.compute_dtype
        )

    def tensor_quantizer(self, bits: int, signed: bool) -> QuantizerSpec | None:
        """A per-tensor activation quantizer at ``bits`` (e.g. a ViT's LayerNorm input or
        attention probabilities) with this policy's kind, scheme, init and observer;
        ``None`` when this policy keeps activations in full precision."""
        if self.a_bits is None:
            return None
        symmetric = self.scheme == "symmetric"
        return QuantizerSpec(
            bits=bits,
            signed=symmetric and signed,
            symmetric=symmetric,
            kind=self.act_kind,
            init=self.init,
            observer=self.observer,
            observer_options=self.observer_options,
            grad_scale=self.grad_scale,
            act_grad_scale_elements=self.act_grad_scale_elements,
        )


FULL_PRECISION = QuantPolicy()
