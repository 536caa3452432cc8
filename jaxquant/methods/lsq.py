"""``lsq``: LSQ quantization-aware training (Esser et al. 2020) with cross-entropy.

Weights and layer inputs pass through :func:`jaxquant.quant.layers.lsq_quantizer`
(learned step, gradient scale ``1/sqrt(N·Q_P)``, fixed zero point).
"""

from jaxquant.methods.base import Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn


@register_method
class LSQ(Method):
    name = "lsq"

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq")

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)
