"""ViT encoder blocks for the TransUNet-style bottleneck: the deepest encoder
feature map is cut into patches, embedded with learned position embeddings,
passed through pre-norm transformer blocks, and folded back into a map."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from unet_jax.models.layers import ConvBlock, UpConv


class EncoderBlock(nn.Module):
    """Pre-norm block: x + MHSA(LN(x)), then x + MLP(LN(x)), with dropout."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            dropout_rate=self.attention_dropout,
                                            deterministic=not train)(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype)(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class TransformerBottleneck(nn.Module):
    """Patches of size `patch_size` -> `hidden` tokens + position embeddings ->
    `num_layers` encoder blocks -> LayerNorm -> back to a map, upsampled to the
    input's resolution and convolved to `features` channels."""

    features: int
    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1
    patch_size: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        ndim = x.ndim - 2
        patch = (self.patch_size,) * ndim
        if any(s % self.patch_size for s in x.shape[1:-1]):
            raise ValueError(f"bottleneck map {x.shape[1:-1]} is not divisible by "
                             f"transformer_patch={self.patch_size}")
        if self.hidden % self.num_heads:
            raise ValueError(f"transformer_hidden={self.hidden} must be a multiple of "
                             f"transformer_heads={self.num_heads}")
        x = nn.Conv(self.hidden, patch, strides=patch, padding="VALID", dtype=self.dtype,
                    name="patch_embedding")(x)
        grid = x.shape[1:-1]
        tokens = x.reshape(x.shape[0], -1, self.hidden)
        position = self.param("position_embedding", nn.initializers.normal(0.02), tokens.shape[1:])
        tokens = nn.Dropout(self.dropout, deterministic=not train)(tokens + position.astype(tokens.dtype))
        for _ in range(self.num_layers):
            tokens = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout, dtype=self.dtype)(tokens, train)
        tokens = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(tokens)
        x = tokens.reshape(tokens.shape[0], *grid, self.hidden)
        if self.patch_size > 1:
            x = UpConv(self.hidden, patch, self.dtype)(x)
        return ConvBlock(self.features, 1, (3,) * ndim, self.norm, self.dtype)(x, train)
