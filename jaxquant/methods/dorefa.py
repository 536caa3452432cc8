"""``dorefa``: DoReFa-Net quantization (Zhou et al. 2016) with cross-entropy.

Weights ``ŵ = 2·q_b(tanh(w)/(2·max|tanh w|) + 1/2) − 1`` and layer inputs
``x̂ = q_b(clip(x, 0, 1))`` with ``q_b(r) = ⌊(2^b − 1)·r⌉/(2^b − 1)`` and a
straight-through round (:func:`jaxquant.quant.kinds.dorefa_quantizer`); nothing of the
quantizers is learned. The ``max`` follows ``quant.weight_granularity`` (per output channel
by default, per tensor as in the paper with ``tensor``); BatchNorm after each conv absorbs
the ``[−1, 1]`` weight scale. ``method.first_last_kind`` (``lsq``) quantizes the first conv
and the classifier, whose inputs (the signed image, pooled features) a ``[0, 1]`` clip
would destroy.
"""

from jaxquant.methods.base import Method, policy_from_config, register_method
from jaxquant.methods.common import supervised_loss_fn
from jaxquant.methods.pact import check_first_last_kind


@register_method
class DoReFa(Method):
    name = "dorefa"
    defaults = {"first_last_kind": "lsq"}  # quantizer kind of the first and last layer

    def validate(self, config):
        check_first_last_kind(self.options(config).first_last_kind)

    def policy(self, config):
        kind = self.options(config).first_last_kind
        return policy_from_config(config, weight_kind="dorefa", act_kind="dorefa", first_last_kind=kind)

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)
