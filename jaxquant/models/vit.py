"""Vision transformers (Dosovitskiy et al. 2021) and DeiT (Touvron et al. 2021) with the
quantization policy.

Patch embedding (a ``QConv`` with kernel = stride = patch, role ``first``), a class token,
learned position embeddings, pre-LN blocks ``x + MHSA(LN(x))``, ``x + MLP(LN(x))``, a final
LayerNorm, and a linear head (``QDense``, role ``last``) on the class token, which is sown as
``intermediates/features``. The qkv, output projection and both MLP layers are ``QDense``
with role ``middle``, so the policy quantizes their weights and inputs (and DNQ perturbs them).

Two more activation quantizers sit where PTQ of ViTs needs them (docs/methods.md §5), active
only when the policy quantizes activations: the input of every LayerNorm
(``quantize_norm_inputs``) and the attention probabilities after the softmax
(``quantize_attention``), per tensor at ``norm_bits`` / ``attention_bits`` (8 by default).
The matrix products ``q·kᵀ`` and ``attn·v`` take their inputs unquantized.

DeiT-Ti/S (``deit_tiny``, ``deit_small`` in the model zoo) have the ViT-Ti/S architecture
(without the distillation token); they differ in the training recipe, which lives in the
configs.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxquant.quant.layers import QConv, QDense, Quantizer
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy


def quantize_tensor(policy: QuantPolicy, enabled: bool, bits: int, signed: bool, name: str, x):
    """``x`` through a per-tensor quantizer at ``bits`` named ``name`` (when ``enabled`` and the
    policy quantizes activations), else ``x`` unchanged."""
    spec = policy.tensor_quantizer(bits, signed) if enabled else None
    if spec is None:
        return x
    x, _ = Quantizer(spec, is_activation=True, name=name)(x)
    return x


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))`` (GELU)."""

    hidden: int
    heads: int
    mlp_dim: int
    policy: QuantPolicy
    quantize_norm_inputs: bool
    quantize_attention: bool
    norm_bits: int
    attention_bits: int

    def matmul(self, spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
        """An attention matmul in the policy's compute dtype, accumulated in float32."""
        dtype = jnp.bfloat16 if self.policy.compute_dtype == "bfloat16" else jnp.float32
        return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)

    def norm(self, x, name: str):
        x = quantize_tensor(self.policy, self.quantize_norm_inputs, self.norm_bits, True, f"{name}_quant", x)
        return nn.LayerNorm(epsilon=1e-6, name=name)(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        quant = self.policy.layer("middle")
        batch, tokens, _ = x.shape
        head_dim = self.hidden // self.heads
        y = self.norm(x, "norm1")
        qkv = QDense(3 * self.hidden, quant=quant, name="qkv")(y, train)
        qkv = qkv.reshape(batch, tokens, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = self.matmul("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(x.dtype)
        attention = jax.nn.softmax(logits, axis=-1)
        attention = quantize_tensor(
            self.policy, self.quantize_attention, self.attention_bits, False, "attention_quant", attention
        )
        y = self.matmul("bhqk,bkhd->bqhd", attention, v).reshape(batch, tokens, self.hidden)
        x = x + QDense(self.hidden, quant=quant, name="proj")(y, train)
        y = self.norm(x, "norm2")
        y = nn.gelu(QDense(self.mlp_dim, quant=quant, name="fc1")(y, train))
        return x + QDense(self.hidden, quant=quant, name="fc2")(y, train)


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier; sizes by ``hidden``, ``depth``, ``heads``, ``mlp_ratio``."""

    num_classes: int = 10
    patch_size: int = 16
    hidden: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: int = 4
    policy: QuantPolicy = FULL_PRECISION
    quantize_norm_inputs: bool = True
    quantize_attention: bool = True
    norm_bits: int = 8
    attention_bits: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        height, width = x.shape[1:3]
        if height % self.patch_size or width % self.patch_size or self.hidden % self.heads:
            raise ValueError(
                f"model.kwargs: images {height}x{width} must split into patches of {self.patch_size} "
                f"and hidden={self.hidden} into heads={self.heads}"
            )
        patch = (self.patch_size, self.patch_size)
        x = QConv(
            self.hidden,
            patch,
            patch,
            padding="VALID",
            use_bias=True,
            quant=self.policy.layer("first"),
            kernel_init=nn.initializers.lecun_normal(),
            name="patch_embed",
        )(x, train)
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.hidden)
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(class_token, (batch, 1, self.hidden)), x], axis=1)
        position = self.param(
            "position_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.hidden), jnp.float32
        )
        x = x + position
        for i in range(self.depth):
            x = EncoderBlock(
                self.hidden,
                self.heads,
                self.mlp_ratio * self.hidden,
                self.policy,
                self.quantize_norm_inputs,
                self.quantize_attention,
                self.norm_bits,
                self.attention_bits,
                name=f"block{i}",
            )(x, train)
        x = quantize_tensor(self.policy, self.quantize_norm_inputs, self.norm_bits, True, "norm_quant", x)
        features = nn.LayerNorm(epsilon=1e-6, name="norm")(x)[:, 0]
        self.sow("intermediates", "features", features)
        head = QDense(
            self.num_classes, quant=self.policy.layer("last"), kernel_init=nn.initializers.zeros, name="head"
        )
        return head(features, train)


def vit_micro(**kwargs) -> VisionTransformer:
    """For 8×8 / 28×28 inputs: patch 4, width 64, 4 blocks, 4 heads."""
    return VisionTransformer(**{"patch_size": 4, "hidden": 64, "depth": 4, "heads": 4, **kwargs})


def vit_tiny(**kwargs) -> VisionTransformer:
    """ViT-Ti: width 192, 12 blocks, 3 heads, MLP 768 (patch 16; set 4 for 32×32 images)."""
    return VisionTransformer(**{"patch_size": 16, "hidden": 192, "depth": 12, "heads": 3, **kwargs})


def vit_small(**kwargs) -> VisionTransformer:
    """ViT-S: width 384, 12 blocks, 6 heads, MLP 1536 (patch 16)."""
    return VisionTransformer(**{"patch_size": 16, "hidden": 384, "depth": 12, "heads": 6, **kwargs})
