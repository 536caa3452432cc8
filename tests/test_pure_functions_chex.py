"""The pure maths under ``chex.variants``: the same values with and without ``jax.jit``, with
chex's shape and tree asserts (quantizers, EMA warm-up, pooled BatchNorm moments, MoE MEC)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.objectives.coding_length import mec_loss, mec_moe_loss
from jaxquant.objectives.ema import ema_update, warmup_decay
from jaxquant.quant.quantizers import fake_quantize, quantize_to_int
from jaxquant.train.batchnorm import pooled_moments


class PureFunctionsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_fake_quantize_lands_on_the_integer_grid(self):
        x = jax.random.normal(jax.random.PRNGKey(0), (4, 6)) * 3.0
        step, zero = jnp.float32(0.25), jnp.float32(3.0)
        out = self.variant(lambda v: fake_quantize(v, step, zero, 0, 15))(x)
        chex.assert_shape(out, x.shape)
        codes = quantize_to_int(x, step, zero, 0, 15)
        chex.assert_trees_all_close(out, (codes - zero) * step, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ema_with_the_mean_teacher_warmup(self):
        teacher = {"w": jnp.zeros(3), "b": jnp.ones(())}
        student = {"w": jnp.full(3, 2.0), "b": jnp.zeros(())}
        out = self.variant(lambda t, s: ema_update(t, s, warmup_decay(1, 0.99)))(teacher, student)
        chex.assert_trees_all_equal_structs(out, teacher)
        chex.assert_trees_all_close(out, {"w": jnp.full(3, 1.0), "b": jnp.asarray(0.5)})  # α_1 = 0.5

    @chex.variants(with_jit=True, without_jit=True)
    def test_pooled_moments(self):
        chunks = [np.arange(8.0).reshape(4, 2) + k for k in range(3)]
        stats = [{"bn": {"mean": jnp.asarray(c.mean(0)), "var": jnp.asarray(c.var(0))}} for c in chunks]
        out = self.variant(pooled_moments)(stats)
        union = np.concatenate(chunks)
        chex.assert_trees_all_close(out, {"bn": {"mean": union.mean(0), "var": union.var(0)}}, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_one_expert_is_plain_mec(self):
        z1 = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
        z2 = z1 + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (16, 8))
        moe = self.variant(lambda a, b: mec_moe_loss(a, b, jnp.zeros(1), 64.0, 4, 1.0, True))(z1, z2)
        chex.assert_shape(moe, ())
        chex.assert_trees_all_close(moe, mec_loss(z1, z2, 64.0, 4, 1.0, True), rtol=1e-5)
