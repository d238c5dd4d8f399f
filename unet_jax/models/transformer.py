"""ViT encoder blocks for the TransUNet-style bottleneck: the deepest encoder
feature map is cut into patches, embedded with learned position embeddings,
passed through pre-norm transformer blocks, and folded back into a map."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from unet_jax.models.conv import conv_general_dilated
from unet_jax.models.layers import ConvBlock, UpConv


@dataclasses.dataclass(frozen=True)
class TransformerOptions:
    """Sizes of the transformer bottleneck; the defaults are ViT-B."""

    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1
    patch_size: int = 1  # on the deepest encoder map

    def check(self) -> None:
        """Raises ValueError naming the field when the sizes cannot work together."""
        for name in ("hidden", "num_layers", "num_heads", "mlp_dim", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"transformer.{name}={getattr(self, name)}: must be at least 1")
        if self.hidden % self.num_heads:
            raise ValueError(f"transformer.hidden={self.hidden} must be a multiple of "
                             f"transformer.num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"transformer.dropout={self.dropout}: must lie in [0, 1)")


class EncoderBlock(nn.Module):
    """Pre-norm block: x + MHSA(LN(x)), then x + MLP(LN(x)), with dropout."""

    num_heads: int
    mlp_dim: int
    dropout: float = 0.1
    attention_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            dropout_rate=self.attention_dropout,
                                            deterministic=not train, name="attention")(y, y)
        x = x + nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(y))
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_out")(y)
        return x + nn.Dropout(self.dropout, deterministic=not train)(y)


class TransformerBottleneck(nn.Module):
    """Patches of `options.patch_size` -> `options.hidden` tokens + position
    embeddings -> `options.num_layers` encoder blocks -> LayerNorm -> back to a
    map, upsampled to the input's resolution and convolved to `features` channels.

    The position embeddings have one row per token, so a trained bottleneck
    accepts only the input size it was trained at.
    """

    features: int
    options: TransformerOptions = TransformerOptions()
    norm: str = "batch"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see unet_jax.models.conv

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        o = self.options
        o.check()
        ndim = x.ndim - 2
        patch = (o.patch_size,) * ndim
        if any(s % o.patch_size for s in x.shape[1:-1]):
            raise ValueError(f"bottleneck map {x.shape[1:-1]} is not divisible by "
                             f"transformer.patch_size={o.patch_size}")
        x = nn.Conv(o.hidden, patch, strides=patch, padding="VALID", dtype=self.dtype,
                    conv_general_dilated=conv_general_dilated(self.conv_impl), name="patch_embedding")(x)
        grid = x.shape[1:-1]
        tokens = x.reshape(x.shape[0], -1, o.hidden)
        position = self.param("position_embedding", nn.initializers.normal(0.02), tokens.shape[1:])
        tokens = nn.Dropout(o.dropout, deterministic=not train)(tokens + position.astype(tokens.dtype))
        for i in range(o.num_layers):
            tokens = EncoderBlock(o.num_heads, o.mlp_dim, o.dropout, dtype=self.dtype,
                                  name=f"layer_{i}")(tokens, train)
        tokens = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(tokens)
        x = tokens.reshape(tokens.shape[0], *grid, o.hidden)
        if o.patch_size > 1:
            x = UpConv(o.hidden, patch, self.dtype, name="unpatch")(x)
        return ConvBlock(self.features, 1, (3,) * ndim, self.norm, self.dtype, self.conv_impl,
                         name="to_features")(x, train)
