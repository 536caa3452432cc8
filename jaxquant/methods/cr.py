"""``cr``: in-distribution consistency regularization for QAT (docs/methods.md §3).

The LSQ student sees view ``A1 x``, a teacher sees view ``A2 x`` of the same batch:

``L = CE(S(A1 x), y) + λ(t) · τ²·KL(softmax(T(A2 x)/τ) ‖ softmax(S(A1 x)/τ))``

* ``teacher='ema'``: an EMA of the student's weights *and* step sizes (and BN statistics),
  ``θ_T ← α_t·θ_T + (1 − α_t)·θ_S`` after every step, quantized like the student, no
  gradient. [design] ``α = 1 − 1/max(h_min, f·T)``: a time constant of
  ``ema_horizon_fraction`` ``f`` (0.1) of the run's ``T`` steps and at least
  ``ema_min_horizon`` ``h_min`` (10) steps, so a short run's teacher is not stuck at its start
  (the first version's fixed ``α = 0.999``, docs/methods.md §3, is a 1000-step horizon; set
  ``ema_horizon_fraction=0`` to use ``ema_decay``), with the Mean-Teacher warm-up
  ``α_t = min(1 − 1/(t + 1), α)``;
  ``teacher='fp'``: the frozen FP model of ``config.init_from``.
* ``target='features'`` replaces the KL by the MSE of standardized penultimate features.
* ``λ(t)`` ramps up over the first ``ramp_fraction`` of training
  (:func:`~jaxquant.objectives.consistency.ramp_weight`).
* ``unlabelled_fraction``: labels of a fixed subset of the training set (chosen by a hash of
  the example index and the seed) are hidden; those samples enter only the consistency term.
* ``second_view='cutout'`` makes ``A2`` stronger: crop/flip plus a cutout square.
"""

import jax
import jax.numpy as jnp

from jaxquant.checks import check_choice
from jaxquant.data.augment import random_cutout
from jaxquant.methods.base import policy_from_config, register_method
from jaxquant.methods.common import (
    EMA_FIELDS,
    TeacherMethod,
    augment,
    check_ema_fields,
    penultimate_features,
    student_forward,
    teacher_forward,
)
from jaxquant.objectives.classification import accuracy, cross_entropy
from jaxquant.objectives.consistency import consistency_kl, feature_consistency, ramp_weight

TEACHERS = ("ema", "fp")
TARGETS = ("logits", "features")
SECOND_VIEWS = ("standard", "cutout")


def labelled_mask(indices: jax.Array, unlabelled_fraction: float, seed: int) -> jax.Array:
    """1.0 for examples whose label is kept, 0.0 for the hidden ``unlabelled_fraction``.

    Example ``i`` is hidden iff ``u_i < unlabelled_fraction`` with ``u_i ~ U[0, 1)`` a hash of
    ``(seed, i)``: the same examples in every epoch and after a resume.
    """
    key = jax.random.PRNGKey(seed)
    u = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(indices)
    return (u >= unlabelled_fraction).astype(jnp.float32)


def second_view(ctx, opts, rng: jax.Array, images: jax.Array) -> jax.Array:
    """``A2 x``: an independent draw of the configured augmentation, plus a cutout of
    ``cutout_fraction`` of the image side when ``second_view='cutout'``."""
    aug_rng, cutout_rng = jax.random.split(rng)
    view = augment(ctx, aug_rng, images)
    if opts.second_view == "cutout":
        view = random_cutout(cutout_rng, view, round(opts.cutout_fraction * images.shape[1]))
    return view


@register_method
class ConsistencyRegularization(TeacherMethod):
    name = "cr"
    defaults = {
        "teacher": "ema",  # ema | fp
        "target": "logits",  # logits | features
        **EMA_FIELDS,
        "max_weight": 1.0,
        "ramp_fraction": 0.25,
        "temperature": 1.0,
        "unlabelled_fraction": 0.0,
        "second_view": "standard",  # standard | cutout
        "cutout_fraction": 0.5,
    }

    def policy(self, config):
        return policy_from_config(config, weight_kind="lsq", act_kind="lsq")

    def validate(self, config):
        opts = self.options(config)
        check_choice(opts.teacher, TEACHERS, "method.teacher")
        check_choice(opts.target, TARGETS, "method.target")
        check_choice(opts.second_view, SECOND_VIEWS, "method.second_view")
        if not 0.0 <= opts.unlabelled_fraction < 1.0:
            raise ValueError(f"method.unlabelled_fraction={opts.unlabelled_fraction!r}: allowed 0 <= f < 1")
        check_ema_fields(opts)

    def ema_teacher(self, config):
        return self.options(config).teacher == "ema"

    def loss_fn(self, ctx):
        config = ctx.config
        opts = self.options(config)
        teacher_model = self.teacher_model(ctx)
        ramp_steps = int(opts.ramp_fraction * ctx.total_steps)
        features = opts.target == "features"

        def loss_fn(params, state, batch, rng):
            student_rng, view_rng = jax.random.split(rng)
            _, logits, model_state, taps = student_forward(
                ctx, params, state, batch["image"], student_rng, taps=features
            )
            view2 = second_view(ctx, opts, view_rng, batch["image"])
            teacher_logits, teacher_taps = teacher_forward(
                teacher_model, state.extra["teacher"], view2, taps=features
            )
            mask = None
            if opts.unlabelled_fraction:
                mask = labelled_mask(batch["index"], opts.unlabelled_fraction, config.seed)
            ce = cross_entropy(logits, batch["label"], mask)
            if features:
                consistency = feature_consistency(
                    penultimate_features(taps), penultimate_features(teacher_taps)
                )
            else:
                consistency = consistency_kl(logits, teacher_logits, opts.temperature)
            weight = ramp_weight(state.step, opts.max_weight, ramp_steps)
            metrics = {
                "ce": ce,
                "consistency": consistency,
                "consistency_weight": weight,
                "accuracy": accuracy(logits, batch["label"]),
            }
            terms = {"ce": ce, "consistency": weight * consistency}
            aux = {"model_state": model_state, "metrics": metrics, "loss_terms": terms}
            return ce + terms["consistency"], aux

        return loss_fn
