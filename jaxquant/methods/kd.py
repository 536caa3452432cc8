"""``kd``: LSQ QAT plus logit distillation from the frozen FP teacher (Hinton et al. 2015).

``L = CE(S(x), y) + kd_weight · τ²·KL(softmax(T(x)/τ) ‖ softmax(S(x)/τ))`` with the FP
teacher of ``config.init_from`` in eval mode on the same augmented batch.
"""

from jaxquant.methods.base import policy_from_config, register_method
from jaxquant.methods.common import TeacherMethod, student_forward, teacher_forward
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.objectives.distillation import kd_loss


@register_method
class KD(TeacherMethod):
    name = "kd"
    defaults = {"temperature": 4.0, "kd_weight": 1.0}

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq")

    def validate(self, config):
        if self.options(config).temperature <= 0:
            raise ValueError(f"method.temperature={config.method.temperature!r} must be > 0")

    def loss_fn(self, ctx):
        opts = self.options(ctx.config)

        def loss_fn(params, state, batch, rng):
            images, logits, model_state, _ = student_forward(ctx, params, state, batch["image"], rng)
            teacher_logits, _ = teacher_forward(ctx.teacher_model, state.extra["teacher"], images)
            ce = cross_entropy(logits, batch["label"])
            kd = kd_loss(logits, teacher_logits, opts.temperature)
            metrics = {"ce": ce, "kd": kd, "accuracy": accuracy(logits, batch["label"])}
            terms = {"ce": ce, "kd": opts.kd_weight * kd}
            return ce + terms["kd"], {"model_state": model_state, "metrics": metrics, "loss_terms": terms}

        return loss_fn
