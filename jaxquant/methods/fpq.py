"""``fpq``: Feature-Perturbed Quantization (docs/methods.md §2).

The LSQ student gets stochastic feature perturbation (SFP,
:class:`~jaxquant.quant.perturbations.FeatureNoise`) on the input of every conv, and is
distilled from the frozen FP teacher on the same batch with channel-wise standardization
distillation over all conv outputs:

``L = CE(S(x), y) + λ_csd · L_CSD(conv outputs of S, conv outputs of T)`` (no logit KD).

``sfp: False`` or ``csd_weight: 0`` give the paper's ablations (CSD only / SFP only).
"""

from jaxquant.checks import check_choice
from jaxquant.methods.base import policy_from_config, register_method
from jaxquant.methods.common import TeacherMethod, conv_outputs, student_forward, teacher_forward
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.objectives.distillation import CSD_REDUCTIONS, csd_loss
from jaxquant.quant.perturbations import FeatureNoise


@register_method
class FPQ(TeacherMethod):
    name = "fpq"
    defaults = {
        "sfp": True,
        "p": 0.1,
        "granularity": "layer",  # layer | sample: one Bernoulli draw per layer or per sample
        "position": "after_quant",  # after_quant | before_quant
        "csd_weight": 1.0,
        "csd_eps": 1e-5,
        # elements | batch: divide by B·H·W, or by B as the paper states it (diverges at the
        # group's lr 0.01, see README)
        "csd_reduction": "elements",
    }

    def perturbation(self, config):
        opts = self.options(config)
        return FeatureNoise(opts.p, opts.granularity, opts.position) if opts.sfp else None

    def policy(self, config):
        return policy_from_config(
            config, weight_kind="lsq", act_kind="lsq", perturbation=self.perturbation(config)
        )

    def uses_teacher(self, config):
        return bool(self.options(config).csd_weight)

    def validate(self, config):
        self.perturbation(config)
        check_choice(self.options(config).csd_reduction, CSD_REDUCTIONS, "method.csd_reduction")

    def loss_fn(self, ctx):
        opts = self.options(ctx.config)

        def loss_fn(params, state, batch, rng):
            images, logits, model_state, taps = student_forward(
                ctx, params, state, batch["image"], rng, taps=True
            )
            ce = cross_entropy(logits, batch["label"])
            metrics = {"ce": ce, "accuracy": accuracy(logits, batch["label"])}
            terms = {"ce": ce}
            if opts.csd_weight:
                _, teacher_taps = teacher_forward(
                    ctx.teacher_model, state.extra["teacher"], images, taps=True
                )
                csd = csd_loss(
                    conv_outputs(taps), conv_outputs(teacher_taps), opts.csd_eps, opts.csd_reduction
                )
                metrics["csd"] = csd
                terms["csd"] = opts.csd_weight * csd
            aux = {"model_state": model_state, "metrics": metrics, "loss_terms": terms}
            return sum(terms.values()), aux

        return loss_fn
