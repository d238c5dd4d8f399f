"""One U-Net builder: encoder of conv blocks and poolings, bottleneck, decoder of
up-convolutions with concatenated skips, 1x1 output convolution.

The number of spatial dimensions comes from the input, kernel sizes and
pooling strides may differ per level, and the width doubles per level from
`features`. The defaults are the classic brain-MRI U-Net (Buda et al. 2019):
4 poolings, 32 base features, two 3x3 conv-norm-ReLU per level, 7,763,041
parameters with BatchNorm on 3-channel input.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.models.layers import BLOCKS, UPSAMPLERS, AttentionGate, max_pool
from unet_jax.models.transformer import TransformerBottleneck


def _per_level(value, levels: int, default: tuple[int, ...], name: str, need: str) -> list[tuple[int, ...]]:
    """A per-level setting given once for all levels (or None: `default`) or as
    one entry per level, as a list of `levels` tuples."""
    if value is None:
        return [default] * levels
    if isinstance(value[0], int):
        return [tuple(value)] * levels
    if len(value) != levels:
        raise ValueError(f"{name} has {len(value)} levels; need {need} = {levels}")
    return [tuple(level) for level in value]


class UNet(nn.Module):
    """Returns float32 logits [B, *spatial, out_channels].

    With `attention`, each gate's coefficients are sown into the
    `intermediates` collection as `attention_<level>` (apply with
    `mutable=["intermediates"]` to inspect them). With `deep_supervision=k`,
    decoder levels 1..k (1: half resolution) also get a 1x1 head whose logits,
    resized to the input's resolution, are sown as `aux_logits_<level>`.
    """

    out_channels: int = 1
    features: int = 32
    depth: int = 4                      # number of poolings
    num_convs: int | Sequence[int] = 2  # per level, encoder levels then bottleneck
    # One kernel for every level, or one per level (encoder levels then bottleneck;
    # decoder levels reuse their encoder level's); default 3 in every dimension.
    kernel_size: Sequence[int] | Sequence[Sequence[int]] | None = None
    pool_strides: Sequence[Sequence[int]] | Sequence[int] | None = None  # default 2 everywhere
    norm: str = "batch"
    block: str = "plain"                # "plain" conv blocks or "residual" blocks
    attention: bool = False             # additive attention gates on every skip
    upsample: str = "transpose"         # "transpose" conv or "resize" plus conv
    deep_supervision: int = 0           # auxiliary 1x1 heads on this many coarser decoder levels
    bottleneck: str = "conv"            # "conv" block or "transformer" (TransUNet style)
    transformer_hidden: int = 768       # ViT-B sizes by default
    transformer_layers: int = 12
    transformer_heads: int = 12
    transformer_mlp: int = 3072
    transformer_dropout: float = 0.1
    transformer_patch: int = 1          # patch size on the deepest encoder map
    dtype: Any = jnp.float32            # compute dtype; parameters stay float32

    def level_strides(self, ndim: int) -> list[tuple[int, ...]]:
        """Pooling strides of each of the `depth` levels."""
        return _per_level(self.pool_strides, self.depth, (2,) * ndim, "pool_strides", "depth")

    def level_kernels(self, ndim: int) -> list[tuple[int, ...]]:
        """Convolution kernel of each of the `depth + 1` levels (bottleneck last)."""
        return _per_level(self.kernel_size, self.depth + 1, (3,) * ndim, "kernel_size", "depth + 1")

    def check_input_shape(self, spatial: Sequence[int]) -> None:
        """Raises if pooling cannot divide the input size exactly at every level."""
        total = np.prod(np.array(self.level_strides(len(spatial))), axis=0)
        if any(size % t for size, t in zip(spatial, total)):
            raise ValueError(f"input size {tuple(spatial)} is not divisible by the total pooling factor "
                             f"{tuple(int(t) for t in total)} of depth {self.depth}; crop or pad the input")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        ndim = x.ndim - 2
        self.check_input_shape(x.shape[1:-1])
        kernels = self.level_kernels(ndim)
        convs = [self.num_convs] * (self.depth + 1) if isinstance(self.num_convs, int) else list(self.num_convs)
        if not 0 <= self.deep_supervision < self.depth:
            raise ValueError(f"deep_supervision={self.deep_supervision} must lie in [0, depth={self.depth})")
        if len(convs) != self.depth + 1:
            raise ValueError(f"num_convs has {len(convs)} entries; need depth + 1 = {self.depth + 1}")
        strides = self.level_strides(ndim)
        if self.block not in BLOCKS:
            raise ValueError(f"block={self.block!r}: choose one of {sorted(BLOCKS)}")
        block = functools.partial(BLOCKS[self.block], norm=self.norm, dtype=self.dtype)
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample={self.upsample!r}: choose one of {sorted(UPSAMPLERS)}")
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = block(self.features * 2**level, convs[level], kernels[level])(x, train)
            skips.append(x)
            x = max_pool(x, strides[level])
        if self.bottleneck == "conv":
            x = block(self.features * 2**self.depth, convs[-1], kernels[-1])(x, train)
        elif self.bottleneck == "transformer":
            x = TransformerBottleneck(
                self.features * 2**self.depth, self.transformer_hidden, self.transformer_layers,
                self.transformer_heads, self.transformer_mlp, self.transformer_dropout,
                self.transformer_patch, self.norm, self.dtype)(x, train)
        else:
            raise ValueError(f"bottleneck={self.bottleneck!r}: choose 'conv' or 'transformer'")
        for level in reversed(range(self.depth)):
            width = self.features * 2**level
            skip = skips[level]
            if self.attention:
                skip, alpha = AttentionGate(width, strides[level], self.dtype)(skip, x)
                self.sow("intermediates", f"attention_{level}", alpha)
            x = UPSAMPLERS[self.upsample](width, strides[level], self.dtype)(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = block(width, 2, kernels[level])(x, train)
            if 0 < level <= self.deep_supervision:
                aux = nn.Conv(self.out_channels, (1,) * ndim, dtype=self.dtype, name=f"aux_head_{level}")(x)
                full = (aux.shape[0], *skips[0].shape[1:-1], self.out_channels)
                self.sow("intermediates", f"aux_logits_{level}",
                         jax.image.resize(aux.astype(jnp.float32), full, method="linear"))
        x = nn.Conv(self.out_channels, (1,) * ndim, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
