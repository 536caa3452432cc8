"""``lsq_plus``: LSQ+ quantization-aware training (Bhalgat et al. 2020) with cross-entropy.

Layer inputs use :func:`jaxquant.quant.kinds.lsq_plus_quantizer` — learned step ``s`` and a
learned real-valued offset ``β``, ``x̂ = clip(⌊(x − β)/s⌉, q_min, q_max)·s + β``, both
initialised from the calibration range — so the grid can follow signed or shifted inputs.
Weights are quantized as in ``lsq`` (learned step, fixed zero point).
"""

from jaxquant.methods.base import Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn


@register_method
class LSQPlus(Method):
    name = "lsq_plus"

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq_plus")

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)
