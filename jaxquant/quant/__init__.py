"""Quantizers (pure), observers, policy and quantized layers."""

from jaxquant.quant import kinds  # noqa: F401 - registers lsq_plus, pact, dorefa
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.layers import QUANTIZER_KINDS, QConv, QDense, Quantizer, register_quantizer_kind
from jaxquant.quant.policy import FULL_PRECISION, LayerQuant, QuantizerSpec, QuantPolicy
from jaxquant.quant.quantizers import check_bits, fake_quantize, int_range, round_ste

__all__ = [
    "FULL_PRECISION",
    "QUANTIZER_KINDS",
    "LayerQuant",
    "QConv",
    "QDense",
    "QuantPolicy",
    "Quantizer",
    "QuantizerSpec",
    "calibrate",
    "check_bits",
    "fake_quantize",
    "int_range",
    "register_quantizer_kind",
    "round_ste",
]
