"""``fp``: full-precision training with cross-entropy (the teacher / starting point of QAT)."""

from jaxquant.methods.base import Method, register_method
from jaxquant.methods.common import supervised_loss_fn


@register_method
class FullPrecision(Method):
    name = "fp"

    def loss_fn(self, ctx):
        return supervised_loss_fn(ctx)
