"""``mec``: MEC-Quant, maximum-entropy coding of the quantized representation (docs/methods.md §4).

``L = CE(S(x), y) + β · L_MEC(Z_s, Z_t)`` with the mixture-of-experts coding length of
:func:`~jaxquant.objectives.coding_length.mec_moe_loss` (``experts`` contiguous channel
groups, per-group distortion, gates ``π = softmax(logits)``), its Taylor log-det of order
``taylor_order`` (or ``logdet='exact'``) and ``λ`` warmed up from ``λ/8`` over the first
``lambda_warmup_fraction`` of training.

* ``pair='fp_teacher'``: ``Z_s`` the student's penultimate features, ``Z_t`` the frozen FP
  teacher's on the same batch;
  ``pair='ema_two_views'``: two augmented views, an EMA teacher of the student (as in ``cr``),
  the loss averaged over the pairs (student A1, teacher A2) and (student A2, teacher A1).
* ``apply_to='all_convs'`` adds one MEC term per conv layer on its spatially averaged output;
  the terms are averaged.
* ``divide_by_batch`` divides ``L_MEC`` by ``m``: the coding length grows about linearly with
  the batch, so ``β`` keeps its meaning across batch sizes.

Gates (``gates``, [design]): ``fixed`` (default) keeps them uniform, so the MoE term is the
sum of the experts' coding lengths; ``learned`` makes the gate logits trainable as the
top-level ``params`` entry ``mec_gate_logits`` (initialised to 0) and adds
``gate_balance · KL(π ‖ uniform)`` (:func:`~jaxquant.objectives.coding_length.gate_balance`):
trained on the very loss they weight, bare gates collapse onto the expert with the most
negative coding length.

The EMA teacher of ``pair='ema_two_views'`` follows ``cr``'s fields (``ema_horizon_fraction``,
``ema_decay``, ``ema_warmup``).
"""

import jax
import jax.numpy as jnp

from jaxquant.checks import check_choice
from jaxquant.methods.base import policy_from_config, register_method
from jaxquant.methods.common import (
    EMA_FIELDS,
    TeacherMethod,
    check_ema_fields,
    conv_outputs,
    penultimate_features,
    student_forward,
    teacher_forward,
)
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.objectives.coding_length import gate_balance, lambda_warmup, mec_moe_loss

PAIRS = ("fp_teacher", "ema_two_views")
APPLY_TO = ("penultimate", "all_convs")
LOGDETS = ("taylor", "exact")
GATE_MODES = ("fixed", "learned")
GATES = "mec_gate_logits"


def representations(taps, apply_to: str) -> list[jax.Array]:
    """The ``(m, d)`` matrices MEC is applied to: the penultimate features, and with
    ``all_convs`` each conv output averaged over (H, W)."""
    features = [penultimate_features(taps)]
    if apply_to == "all_convs":
        features += [jnp.mean(z, axis=(1, 2)) for z in conv_outputs(taps)]
    return features


@register_method
class MECQuant(TeacherMethod):
    name = "mec"
    param_names = (GATES,)
    defaults = {
        "beta": 1.0,
        "pair": "fp_teacher",  # fp_teacher | ema_two_views
        "experts": 4,
        "eps_sq": 64.0,
        "taylor_order": 4,
        "logdet": "taylor",  # taylor | exact
        "lambda_warmup_fraction": 0.1,
        "apply_to": "penultimate",  # penultimate | all_convs
        "gates": "fixed",  # fixed (uniform) | learned (trainable logits + balance term)
        "gate_balance": 1.0,  # learned gates: weight of KL(π ‖ uniform)
        **EMA_FIELDS,
        "divide_by_batch": True,
    }

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq")

    def validate(self, config):
        opts = self.options(config)
        check_choice(opts.pair, PAIRS, "method.pair")
        check_choice(opts.apply_to, APPLY_TO, "method.apply_to")
        check_choice(opts.logdet, LOGDETS, "method.logdet")
        check_choice(opts.gates, GATE_MODES, "method.gates")
        check_ema_fields(opts)
        if opts.gate_balance < 0:
            raise ValueError(f"method.gate_balance={opts.gate_balance!r} is negative: allowed >= 0")
        if not isinstance(opts.experts, int) or opts.experts < 1:
            raise ValueError(f"method.experts={opts.experts!r} must be a positive integer")
        if not isinstance(opts.taylor_order, int) or opts.taylor_order < 1:
            raise ValueError(f"method.taylor_order={opts.taylor_order!r} must be a positive integer")

    def ema_teacher(self, config):
        return self.options(config).pair == "ema_two_views"

    def extra_params(self, ctx):
        opts = self.options(ctx.config)
        if opts.gates != "learned":
            return {}
        return {GATES: jnp.zeros((opts.experts,), jnp.float32)}

    def loss_fn(self, ctx):
        config = ctx.config
        opts = self.options(config)
        two_views = self.ema_teacher(config)
        teacher_model = self.teacher_model(ctx)
        warmup_steps = int(opts.lambda_warmup_fraction * ctx.total_steps)
        exact = opts.logdet == "exact"
        learned = opts.gates == "learned"

        def coding_term(student_taps, teacher_taps, gate_logits, lambda_scale):
            pairs = zip(
                representations(student_taps, opts.apply_to),
                representations(teacher_taps, opts.apply_to),
                strict=True,
            )
            terms = [
                mec_moe_loss(z_s, z_t, gate_logits, opts.eps_sq, opts.taylor_order, lambda_scale, exact)
                / (z_s.shape[0] if opts.divide_by_batch else 1)
                for z_s, z_t in pairs
            ]
            return sum(terms) / len(terms)

        def loss_fn(params, state, batch, rng):
            rng1, rng2 = jax.random.split(rng)
            teacher = state.extra["teacher"]
            gates = params[GATES] if learned else jnp.zeros((opts.experts,), jnp.float32)
            view1, logits, model_state, taps1 = student_forward(
                ctx, params, state, batch["image"], rng1, taps=True
            )
            _, teacher_taps1 = teacher_forward(teacher_model, teacher, view1, taps=True)
            lambda_scale = lambda_warmup(state.step, warmup_steps)
            if two_views:
                view2, _, model_state, taps2 = student_forward(
                    ctx, params, state.replace(model_state=model_state), batch["image"], rng2, taps=True
                )
                _, teacher_taps2 = teacher_forward(teacher_model, teacher, view2, taps=True)
                coding = (
                    coding_term(taps1, teacher_taps2, gates, lambda_scale)
                    + coding_term(taps2, teacher_taps1, gates, lambda_scale)
                ) / 2
            else:
                coding = coding_term(taps1, teacher_taps1, gates, lambda_scale)
            ce = cross_entropy(logits, batch["label"])
            metrics = {
                "ce": ce,
                "mec": coding,
                "lambda_scale": lambda_scale,
                "accuracy": accuracy(logits, batch["label"]),
            }
            terms = {"ce": ce, "mec": opts.beta * coding}
            if learned:
                balance = gate_balance(gates)
                metrics["gate_kl"] = balance
                terms["gate_balance"] = opts.gate_balance * balance
            aux = {"model_state": model_state, "metrics": metrics, "loss_terms": terms}
            return sum(terms.values()), aux

        return loss_fn
