"""Convolutions for XLA's CPU backend, with the same parameters as `nn.Conv`.

XLA:CPU computes a convolution's weight gradient at a third of the speed of its
forward pass (1.2 of 2.6 s of the classic U-Net's step at 128 pixels).
`gemm_conv` keeps XLA's forward pass and input gradient but takes the weight
gradient as a sum of im2col matrix multiplies (`lax.dot_general`) over blocks
of output rows small enough that each block's patch matrix stays in cache:
materialising the whole patch matrix (taps x the input) costs more in memory
traffic than the convolution it replaces (and a blocked forward pass lost to
XLA's). `conv_general_dilated(impl)` picks the function for
`nn.Conv(conv_general_dilated=...)`.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "gemm")
BLOCK_BYTES = 2 << 20  # patch matrix of one block of output rows


def in_plane_conv(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` for Flax's channels-last convolutions, with an
    in-plane 3-D kernel (k, k, 1) at stride 1 run as a 2-D convolution over
    every slice: the same sums, but XLA:CPU runs the 3-D form about 4x slower
    (0.75 s against 0.20 s for one 16-channel layer on 4x128x128x16 patches)."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if (lhs.ndim != 5 or rhs.shape[2] != 1 or tuple(window_strides) != (1, 1, 1) or dilated
            or feature_group_count != 1 or (not isinstance(padding, str) and tuple(padding[2]) != (0, 0))):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                        feature_group_count=feature_group_count, precision=precision)
    b, x, y, z, c = lhs.shape
    slices = lhs.transpose(0, 3, 1, 2, 4).reshape(b * z, x, y, c)
    out = lax.conv_general_dilated(slices, rhs[:, :, 0], (1, 1), padding if isinstance(padding, str) else
                                   padding[:2], dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    return out.reshape(b, z, *out.shape[1:]).transpose(0, 2, 3, 1, 4)


def _patches(x: jnp.ndarray, kernel_size, strides) -> jnp.ndarray:
    """[B, *S, C] (already padded) -> [B, *O, taps * C]: the input under each
    kernel tap, taps in the row-major order of the kernel's axes."""
    out = [(p - k) // s + 1 for p, k, s in zip(x.shape[1:-1], kernel_size, strides)]
    taps = [x[(slice(None), *(slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offs, out, strides)))]
            for offs in itertools.product(*(range(k) for k in kernel_size))]
    return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def _block_rows(out_rows: int, row_bytes: int) -> int:
    """The largest divisor of `out_rows` whose block of patch rows fits BLOCK_BYTES."""
    target = max(1, BLOCK_BYTES // row_bytes)
    return max(r for r in range(1, min(target, out_rows) + 1) if out_rows % r == 0)


def _weight_grad(padded: jnp.ndarray, dy: jnp.ndarray, kernel_shape, strides) -> jnp.ndarray:
    """Gradient of the kernel [*k, C_in, C_out] from the padded input [B, *P, C_in]
    and the output gradient [B, *O, C_out]: patch-matrix^T @ dy, accumulated
    over blocks of (example, output rows)."""
    kernel_size, channels, features = kernel_shape[:-2], kernel_shape[-2], kernel_shape[-1]
    batch, out = dy.shape[0], dy.shape[1:-1]
    accumulate = jnp.promote_types(dy.dtype, jnp.float32)
    contract = tuple(range(dy.ndim - 1))
    if math.prod(kernel_size) == 1 and all(s == 1 for s in strides):
        dkernel = lax.dot_general(padded, dy, ((contract, contract), ((), ())), preferred_element_type=accumulate)
        return dkernel.reshape(kernel_shape)
    rows = _block_rows(out[0], math.prod(out[1:]) * math.prod(kernel_size) * channels * padded.dtype.itemsize)
    blocks = out[0] // rows
    in_rows = (rows - 1) * strides[0] + kernel_size[0]
    zeros = (0,) * (dy.ndim - 2)

    def step(i, total):
        example, block = i // blocks, i % blocks
        x = lax.dynamic_slice(padded, (example, block * rows * strides[0], *zeros),
                              (1, in_rows, *padded.shape[2:]))
        g = lax.dynamic_slice(dy, (example, block * rows, *zeros), (1, rows, *dy.shape[2:]))
        return total + lax.dot_general(_patches(x, kernel_size, strides), g, ((contract, contract), ((), ())),
                                       preferred_element_type=accumulate)

    total = lax.fori_loop(0, batch * blocks, step, jnp.zeros((math.prod(kernel_size) * channels, features),
                                                              accumulate))
    return total.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def gemm_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: tuple[int, ...],
              pads: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    """Channels-last convolution of x [B, *S, C_in] with kernel [*k, C_in, C_out]
    (Flax's layout) at `strides` with explicit `pads`; its kernel gradient is
    `_weight_grad`'s."""
    return _xla_conv(x, kernel, strides, pads)


def _flax_dimension_numbers(ndim: int) -> lax.ConvDimensionNumbers:
    """Flax's layouts for rank-`ndim` operands: [B, *S, C] inputs and outputs, [*k, I, O] kernels."""
    channels_last = (0, ndim - 1, *range(1, ndim - 1))
    return lax.ConvDimensionNumbers(channels_last, (ndim - 1, ndim - 2, *range(ndim - 2)), channels_last)


def _xla_conv(x, kernel, strides, pads):
    return in_plane_conv(x, kernel, strides, pads, dimension_numbers=_flax_dimension_numbers(x.ndim))


def _forward(x, kernel, strides, pads):
    return _xla_conv(x, kernel, strides, pads), (x, kernel)  # not the patches: taps x the input's memory


def _backward(strides, pads, residuals, dy):
    x, kernel = residuals
    _, input_grad = jax.vjp(lambda x: _xla_conv(x, kernel, strides, pads), x)
    padded = jnp.pad(x, [(0, 0), *pads, (0, 0)]) if any(lo or hi for lo, hi in pads) else x
    return input_grad(dy)[0], _weight_grad(padded, dy, kernel.shape, strides).astype(kernel.dtype)


gemm_conv.defvjp(_forward, _backward)


def _channels_last(dimension_numbers, ndim: int) -> bool:
    """Whether `dimension_numbers` (in any of `lax`'s forms) are Flax's."""
    ones = (1,) * ndim
    return dimension_numbers is not None and \
        lax.conv_dimension_numbers(ones, ones, dimension_numbers) == _flax_dimension_numbers(ndim)


def gemm_conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, precision=None):
    """`lax.conv_general_dilated` through `gemm_conv` for Flax's channels-last,
    undilated, ungrouped convolutions; anything else is `in_plane_conv`."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if dilated or feature_group_count != 1 or precision is not None or \
            not _channels_last(dimension_numbers, lhs.ndim):
        return in_plane_conv(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                             rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                             feature_group_count=feature_group_count, precision=precision)
    strides = tuple(window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], strides, padding)
    return gemm_conv(lhs, rhs, strides, tuple((int(lo), int(hi)) for lo, hi in padding))


def conv_general_dilated(impl: str):
    """The convolution for `nn.Conv(conv_general_dilated=...)`, chosen at trace
    time: "xla" is XLA's (`in_plane_conv` on a CPU), "gemm" is
    `gemm_conv_general_dilated`, "auto" is "gemm" on the CPU backend and "xla" elsewhere."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r}: choose one of {', '.join(CONV_IMPLS)}")
    cpu = jax.default_backend() == "cpu"
    if impl == "gemm" or (impl == "auto" and cpu):
        return gemm_conv_general_dilated
    return in_plane_conv if cpu else lax.conv_general_dilated
