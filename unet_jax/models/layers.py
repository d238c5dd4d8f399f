"""Building blocks of the U-Net for any number of spatial dimensions.

Every layer takes channels-last inputs [B, *spatial, C]; kernel sizes and
strides are tuples with one entry per spatial dimension, so the same block
serves 2-D slices and 3-D volumes (including in-plane 3x3x1 kernels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "group", "instance", "none")


def normalize(x: jnp.ndarray, train: bool, kind: str, dtype: Any, name: str) -> jnp.ndarray:
    """Batch, group (8 groups or fewer), instance, or no normalisation, as a
    submodule `name` of the calling compact method.

    BatchNorm reduces over every axis but the channels of the global batch: under
    jit with a sharded batch, XLA computes the statistics across devices.
    """
    features = x.shape[-1]
    if kind == "batch":
        return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)(x, use_running_average=not train)
    if kind == "group":
        return nn.GroupNorm(num_groups=min(8, features), epsilon=1e-5, dtype=dtype, name=name)(x)
    if kind == "instance":
        return nn.GroupNorm(num_groups=features, epsilon=1e-5, dtype=dtype, name=name)(x)
    if kind == "none":
        return x
    raise ValueError(f"norm={kind!r}: choose one of {NORMS}")


def in_plane_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for Flax's channels-last convolutions, with an
    in-plane 3-D kernel (k, k, 1) at stride 1 run as a 2-D convolution over
    every slice: the same sums, but XLA:CPU runs the 3-D form about 4x slower
    (0.75 s against 0.20 s for one 16-channel layer on 4x128x128x16 patches)."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if (lhs.ndim != 5 or rhs.shape[2] != 1 or tuple(window_strides) != (1, 1, 1) or dilated
            or feature_group_count != 1 or (not isinstance(padding, str) and tuple(padding[2]) != (0, 0))):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                            feature_group_count=feature_group_count, precision=precision)
    b, x, y, z, c = lhs.shape
    slices = lhs.transpose(0, 3, 1, 2, 4).reshape(b * z, x, y, c)
    out = jax.lax.conv_general_dilated(slices, rhs[:, :, 0], (1, 1), padding if isinstance(padding, str) else
                                       padding[:2], dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    return out.reshape(b, z, *out.shape[1:]).transpose(0, 2, 3, 1, 4)


def conv_norm(x: jnp.ndarray, train: bool, features: int, kernel_size: Sequence[int], norm: str,
              dtype: Any, name: str) -> jnp.ndarray:
    """Convolution `name` then norm `<name>_norm`, inside a compact method; the
    convolution has a bias only without a norm (before a norm a bias has an
    exactly-zero true gradient, and AdamW amplifies its rounding noise).
    On a CPU, in-plane 3-D kernels run through `in_plane_conv` (same parameters)."""
    x = nn.Conv(features, tuple(kernel_size), padding="SAME", use_bias=norm == "none", dtype=dtype,
                conv_general_dilated=in_plane_conv if jax.default_backend() == "cpu" else None, name=name)(x)
    return normalize(x, train, norm, dtype, name=f"{name}_norm")


class ConvBlock(nn.Module):
    """`num_convs` x (conv, norm, ReLU); submodules `conv_<i>`, `conv_<i>_norm`."""

    features: int
    num_convs: int = 2
    kernel_size: Sequence[int] = (3, 3)
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for i in range(self.num_convs):
            x = nn.relu(conv_norm(x, train, self.features, self.kernel_size, self.norm, self.dtype, f"conv_{i}"))
        return x


class ResidualBlock(ConvBlock):
    """`num_convs` conv-norm layers with ReLU between them, plus a shortcut
    (identity, or a 1x1 conv and norm named `shortcut` when the width changes),
    then ReLU."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        shortcut = x
        for i in range(self.num_convs):
            x = conv_norm(x, train, self.features, self.kernel_size, self.norm, self.dtype, f"conv_{i}")
            if i < self.num_convs - 1:
                x = nn.relu(x)
        if shortcut.shape[-1] != self.features:
            shortcut = conv_norm(shortcut, train, self.features, (1,) * (x.ndim - 2), self.norm, self.dtype,
                                 "shortcut")
        return nn.relu(x + shortcut)


BLOCKS = {"plain": ConvBlock, "residual": ResidualBlock}


class AttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net (Oktay et al. 2018).

    theta: a strided conv bringing the skip to the gate's resolution; phi: a
    1x1 conv on the gate (the coarser decoder features); psi: a 1x1 conv of
    ReLU(theta + phi) to one channel and a sigmoid. The coefficients are
    resized to the skip's resolution and multiplied into it. Returns the gated
    skip and the coefficients [B, *spatial, 1] in (0, 1).
    """

    features: int  # width of theta and phi
    strides: Sequence[int] = (2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, skip: jnp.ndarray, gate: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        strides = tuple(self.strides)
        ones = (1,) * len(strides)
        theta = nn.Conv(self.features, strides, strides=strides, padding="VALID", use_bias=False,
                        dtype=self.dtype, name="theta")(skip)
        phi = nn.Conv(self.features, ones, dtype=self.dtype, name="phi")(gate)
        psi = nn.Conv(1, ones, dtype=self.dtype, name="psi")(nn.relu(theta + phi))
        alpha = nn.sigmoid(psi.astype(jnp.float32))
        alpha = jax.image.resize(alpha, (*skip.shape[:-1], 1), method="linear")
        return skip * alpha.astype(skip.dtype), alpha


class UpConv(nn.Module):
    """Transposed convolution whose kernel equals its stride (the exact inverse of
    the pooling grid), written as one matmul to `prod(strides)` sub-pixel
    outputs and a depth-to-space shuffle.

    Same function and parameter count as `nn.ConvTranspose(features, strides,
    strides=strides)`, but XLA's CPU backend ran the whole U-Net step 1.7x
    faster this way (its transposed-convolution gradients are slow).
    """

    features: int
    strides: Sequence[int] = (2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        strides = tuple(self.strides)
        batch, spatial = x.shape[0], x.shape[1:-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.features * math.prod(strides)))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        y = y.reshape(batch, *spatial, *strides, self.features)
        # [B, d1..dn, s1..sn, F] -> [B, d1, s1, ..., dn, sn, F] -> [B, d1*s1, ..., F]
        n = len(spatial)
        order = [0] + [a for i in range(n) for a in (1 + i, 1 + n + i)] + [1 + 2 * n]
        y = y.transpose(order).reshape(batch, *(d * s for d, s in zip(spatial, strides)), self.features)
        return y + bias.astype(self.dtype)


class ResizeConv(nn.Module):
    """Upsampling by resizing (bilinear or trilinear) then a 3x3 convolution: the
    alternative to the transposed convolution, free of its checkerboard artefacts."""

    features: int
    strides: Sequence[int] = (2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shape = (x.shape[0], *(d * s for d, s in zip(x.shape[1:-1], self.strides)), x.shape[-1])
        x = jax.image.resize(x, shape, method="linear")
        return nn.Conv(self.features, (3,) * len(self.strides), padding="SAME", dtype=self.dtype, name="conv")(x)


UPSAMPLERS = {"transpose": UpConv, "resize": ResizeConv}


def max_pool(x: jnp.ndarray, strides: Sequence[int]) -> jnp.ndarray:
    """Non-overlapping max pooling with window = stride."""
    return nn.max_pool(x, tuple(strides), strides=tuple(strides))
