"""One U-Net builder: encoder of conv blocks and poolings, bottleneck, decoder of
up-convolutions with concatenated skips, 1x1 output convolution.

The number of spatial dimensions comes from the input, kernel sizes and
pooling strides may differ per level, and the width doubles per level from
`features`. The defaults are the classic brain-MRI U-Net (Buda et al. 2019):
4 poolings, 32 base features, two 3x3 conv-norm-ReLU per level, 7,763,041
parameters with BatchNorm on 3-channel input.

Submodules are named by role and level: `enc_<l>`, `bottleneck`, `gate_<l>`
(attention), `up_<l>`, `dec_<l>`, `aux_head_<l>` (deep supervision) and `head`;
level 0 is the full resolution.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax.models.conv import CONV_IMPLS, conv_general_dilated
from unet_jax.models.layers import BLOCKS, NORMS, UPSAMPLERS, AttentionGate, max_pool
from unet_jax.models.transformer import TransformerBottleneck, TransformerOptions

BOTTLENECKS = ("conv", "transformer")


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
    """Returns float32 logits [B, *spatial, out_channels]; with `with_aux=True`,
    the pair (logits, aux) where aux holds the deep-supervision logits of
    decoder levels 1..`deep_supervision` (level 1: half resolution), each
    resized to the input's resolution.

    With `attention`, each gate's coefficients are sown into the
    `intermediates` collection as `attention_<level>` for inspection (apply
    with `mutable=["intermediates"]`).
    """

    out_channels: int = 1
    features: int = 32
    depth: int = 4                      # number of poolings
    num_convs: int | Sequence[int] = 2  # per level, encoder levels then bottleneck
    decoder_num_convs: int = 2          # convolutions of every decoder block
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
    transformer: TransformerOptions = TransformerOptions()  # used by the transformer bottleneck
    dtype: Any = jnp.float32            # compute dtype; parameters stay float32
    conv_impl: str = "auto"             # "auto", "xla" or "gemm": see unet_jax.models.conv

    def level_strides(self, ndim: int) -> list[tuple[int, ...]]:
        """Pooling strides of each of the `depth` levels."""
        return _per_level(self.pool_strides, self.depth, (2,) * ndim, "pool_strides", "depth")

    def level_kernels(self, ndim: int) -> list[tuple[int, ...]]:
        """Convolution kernel of each of the `depth + 1` levels (bottleneck last)."""
        return _per_level(self.kernel_size, self.depth + 1, (3,) * ndim, "kernel_size", "depth + 1")

    def level_convs(self) -> list[int]:
        """Convolutions per block of each of the `depth + 1` levels (bottleneck last)."""
        if isinstance(self.num_convs, int):
            return [self.num_convs] * (self.depth + 1)
        if len(self.num_convs) != self.depth + 1:
            raise ValueError(f"num_convs has {len(self.num_convs)} entries; need depth + 1 = {self.depth + 1}")
        return list(self.num_convs)

    def check(self, spatial: Sequence[int]) -> None:
        """Raises ValueError, naming the field, unless this network can take
        inputs of `spatial` size: known switches, per-level settings of the
        right length and dimension, and pooling that divides the size exactly."""
        ndim = len(spatial)
        for name, value, allowed in (("block", self.block, tuple(BLOCKS)), ("norm", self.norm, NORMS),
                                     ("upsample", self.upsample, tuple(UPSAMPLERS)),
                                     ("bottleneck", self.bottleneck, BOTTLENECKS),
                                     ("conv_impl", self.conv_impl, CONV_IMPLS)):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
        for name in ("out_channels", "features", "depth", "decoder_num_convs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if not 0 <= self.deep_supervision < self.depth:
            raise ValueError(f"deep_supervision={self.deep_supervision} must lie in [0, depth={self.depth})")
        if min(self.level_convs()) < 1:
            raise ValueError(f"num_convs={self.num_convs}: every level needs at least 1")
        for name, levels in (("kernel_size", self.level_kernels(ndim)), ("pool_strides", self.level_strides(ndim))):
            if any(len(level) != ndim or min(level) < 1 for level in levels):
                raise ValueError(f"{name}={levels}: give {ndim} positive sizes per level for "
                                 f"{ndim}-D inputs")
        if self.bottleneck == "transformer":
            self.transformer.check()
        total = np.prod(np.array(self.level_strides(ndim)), axis=0)
        if any(size % t for size, t in zip(spatial, total)):
            raise ValueError(f"input size {tuple(spatial)} is not divisible by the total pooling factor "
                             f"{tuple(int(t) for t in total)} of depth {self.depth}; crop or pad the input")
        if self.bottleneck == "transformer" and any(
                (size // t) % self.transformer.patch_size for size, t in zip(spatial, total)):
            raise ValueError(f"the bottleneck map {tuple(int(s // t) for s, t in zip(spatial, total))} is not "
                             f"divisible by transformer.patch_size={self.transformer.patch_size}")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, with_aux: bool = False):
        ndim = x.ndim - 2
        self.check(x.shape[1:-1])
        kernels, strides, convs = self.level_kernels(ndim), self.level_strides(ndim), self.level_convs()
        block = functools.partial(BLOCKS[self.block], norm=self.norm, dtype=self.dtype, conv_impl=self.conv_impl)
        conv = functools.partial(nn.Conv, dtype=self.dtype, conv_general_dilated=conv_general_dilated(self.conv_impl))
        x = x.astype(self.dtype)
        skips = []
        for level in range(self.depth):
            x = block(self.features * 2**level, convs[level], kernels[level], name=f"enc_{level}")(x, train)
            skips.append(x)
            x = max_pool(x, strides[level])
        width = self.features * 2**self.depth
        if self.bottleneck == "conv":
            x = block(width, convs[-1], kernels[-1], name="bottleneck")(x, train)
        else:
            x = TransformerBottleneck(width, self.transformer, self.norm, self.dtype, self.conv_impl,
                                      name="bottleneck")(x, train)
        up_options = {"conv_impl": self.conv_impl} if self.upsample == "resize" else {}  # UpConv is a matmul
        aux = []
        for level in reversed(range(self.depth)):
            width = self.features * 2**level
            skip = skips[level]
            if self.attention:
                gate = AttentionGate(width, strides[level], self.dtype, self.conv_impl, name=f"gate_{level}")
                skip, alpha = gate(skip, x)
                self.sow("intermediates", f"attention_{level}", alpha)
            x = UPSAMPLERS[self.upsample](width, strides[level], self.dtype, **up_options, name=f"up_{level}")(x)
            x = jnp.concatenate([x, skip], axis=-1)
            x = block(width, self.decoder_num_convs, kernels[level], name=f"dec_{level}")(x, train)
            if 0 < level <= self.deep_supervision:
                logits = conv(self.out_channels, (1,) * ndim, name=f"aux_head_{level}")(x)
                full = (logits.shape[0], *skips[0].shape[1:-1], self.out_channels)
                aux.insert(0, jax.image.resize(logits.astype(jnp.float32), full, method="linear"))
        logits = conv(self.out_channels, (1,) * ndim, name="head")(x).astype(jnp.float32)
        return (logits, tuple(aux)) if with_aux else logits
