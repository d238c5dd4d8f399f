"""Building blocks of the U-Net for any number of spatial dimensions.

Every layer takes channels-last inputs [B, *spatial, C]; kernel sizes and
strides are tuples with one entry per spatial dimension, so the same block
serves 2-D slices and 3-D volumes (including in-plane 3x3x1 kernels).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.models.conv import conv_general_dilated

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


def conv_norm(x: jnp.ndarray, train: bool, features: int, kernel_size: Sequence[int], norm: str,
              dtype: Any, name: str, conv_impl: str = "auto") -> jnp.ndarray:
    """Convolution `name` then norm `<name>_norm`, inside a compact method; the
    convolution has a bias only without a norm (before a norm a bias has an
    exactly-zero true gradient, and AdamW amplifies its rounding noise).
    `conv_impl` picks the convolution (`unet_jax.models.conv`; same parameters)."""
    x = nn.Conv(features, tuple(kernel_size), padding="SAME", use_bias=norm == "none", dtype=dtype,
                conv_general_dilated=conv_general_dilated(conv_impl), name=name)(x)
    return normalize(x, train, norm, dtype, name=f"{name}_norm")


class ConvBlock(nn.Module):
    """`num_convs` x (conv, norm, ReLU); submodules `conv_<i>`, `conv_<i>_norm`."""

    features: int
    num_convs: int = 2
    kernel_size: Sequence[int] = (3, 3)
    norm: str = "batch"
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see unet_jax.models.conv

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        for i in range(self.num_convs):
            x = nn.relu(conv_norm(x, train, self.features, self.kernel_size, self.norm, self.dtype, f"conv_{i}",
                                  self.conv_impl))
        return x


class ResidualBlock(ConvBlock):
    """`num_convs` conv-norm layers with ReLU between them, plus a shortcut
    (identity, or a 1x1 conv and norm named `shortcut` when the width changes),
    then ReLU."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        shortcut = x
        for i in range(self.num_convs):
            x = conv_norm(x, train, self.features, self.kernel_size, self.norm, self.dtype, f"conv_{i}",
                          self.conv_impl)
            if i < self.num_convs - 1:
                x = nn.relu(x)
        if shortcut.shape[-1] != self.features:
            shortcut = conv_norm(shortcut, train, self.features, (1,) * (x.ndim - 2), self.norm, self.dtype,
                                 "shortcut", self.conv_impl)
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
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, skip: jnp.ndarray, gate: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        strides = tuple(self.strides)
        ones = (1,) * len(strides)
        conv = functools.partial(nn.Conv, dtype=self.dtype, conv_general_dilated=conv_general_dilated(self.conv_impl))
        theta = conv(self.features, strides, strides=strides, padding="VALID", use_bias=False, name="theta")(skip)
        phi = conv(self.features, ones, name="phi")(gate)
        psi = conv(1, ones, name="psi")(nn.relu(theta + phi))
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
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        shape = (x.shape[0], *(d * s for d, s in zip(x.shape[1:-1], self.strides)), x.shape[-1])
        x = jax.image.resize(x, shape, method="linear")
        return nn.Conv(self.features, (3,) * len(self.strides), padding="SAME", dtype=self.dtype,
                       conv_general_dilated=conv_general_dilated(self.conv_impl), name="conv")(x)


UPSAMPLERS = {"transpose": UpConv, "resize": ResizeConv}


def max_pool(x: jnp.ndarray, strides: Sequence[int]) -> jnp.ndarray:
    """Non-overlapping max pooling with window = stride."""
    return nn.max_pool(x, tuple(strides), strides=tuple(strides))
