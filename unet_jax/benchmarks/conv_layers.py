"""Per-layer cost of a U-Net's convolutions: forward, input gradient and weight
gradient of every conv layer's shape, XLA's convolution against `gemm_conv`,
timed alternately in one process (so a busy machine slows both alike).

  python -m unet_jax.benchmarks.conv_layers --spatial 128 128 --channels 3 --batch 8
  python -m unet_jax.benchmarks.conv_layers --spatial 128 128 16 --channels 1 --batch 2 --features 16 --depth 3 \
      --kernels 3,3,1 3,3,1 3,3,3 3,3,3 --strides 2,2,1 2,2,1 2,2,2

Prints one JSON line per layer shape and part, then the totals per part.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from unet_jax.models.conv import conv_general_dilated


def layer_shapes(spatial, channels, features, depth, kernels, strides):
    """(spatial, C_in, C_out, kernel) of every convolution of the plain U-Net, the 1x1 head included."""
    layers, size = [], tuple(spatial)
    cin = channels
    for level in range(depth + 1):
        width = features * 2**level
        layers += [(size, cin, width, kernels[level]), (size, width, width, kernels[level])]
        cin = width
        if level < depth:
            size = tuple(s // p for s, p in zip(size, strides[level]))
    for level in reversed(range(depth)):
        size = tuple(s * p for s, p in zip(size, strides[level]))
        width = features * 2**level
        layers += [(size, 2 * width, width, kernels[level]), (size, width, width, kernels[level])]
    layers.append((size, features, 1, (1,) * len(spatial)))
    return layers


def _parts(impl: str, ndim: int):
    conv = conv_general_dilated(impl)
    spec = ("NHWC", "HWIO", "NHWC") if ndim == 2 else ("NDHWC", "DHWIO", "NDHWC")

    def apply(x, w):
        return conv(x, w, (1,) * ndim, "SAME", dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, spec))

    def input_grad(x, w, g):
        return jax.vjp(lambda x: apply(x, w), x)[1](g)[0]

    def weight_grad(x, w, g):
        return jax.vjp(lambda w: apply(x, w), w)[1](g)[0]

    return {"forward": jax.jit(apply), "input_grad": jax.jit(input_grad), "weight_grad": jax.jit(weight_grad)}


def _time(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spatial", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--kernels", nargs="*", default=[], help="per level (depth + 1), e.g. 3,3,1; default 3s")
    parser.add_argument("--strides", nargs="*", default=[], help="pooling per level (depth), default 2s")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of xla and gemm")
    parser.add_argument("--repeats", type=int, default=3, help="calls timed per round")
    args = parser.parse_args()
    ndim = len(args.spatial)
    kernels = [tuple(map(int, k.split(","))) for k in args.kernels] or [(3,) * ndim] * (args.depth + 1)
    strides = [tuple(map(int, s.split(","))) for s in args.strides] or [(2,) * ndim] * args.depth
    parts = {impl: _parts(impl, ndim) for impl in ("xla", "gemm")}
    totals = collections.defaultdict(float)
    rng = np.random.default_rng(0)
    for size, cin, cout, kernel in layer_shapes(args.spatial, args.channels, args.features, args.depth,
                                                kernels, strides):
        x = jnp.asarray(rng.standard_normal((args.batch, *size, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((*kernel, cin, cout), np.float32))
        g = jnp.asarray(rng.standard_normal((args.batch, *size, cout), np.float32))
        for part in ("forward", "input_grad", "weight_grad"):
            fn_args = (x, w) if part == "forward" else (x, w, g)
            times = {impl: [] for impl in parts}
            for impl in parts:
                jax.block_until_ready(parts[impl][part](*fn_args))  # compile
            for _ in range(args.rounds):
                for impl in parts:
                    times[impl].append(_time(parts[impl][part], fn_args, args.repeats))
            row = {impl: statistics.median(t) for impl, t in times.items()}
            for impl, t in row.items():
                totals[(part, impl)] += t
            print(json.dumps({"shape": [args.batch, *size, cin], "kernel": [*kernel, cin, cout], "part": part,
                              **{f"{impl}_ms": round(1e3 * t, 2) for impl, t in row.items()},
                              "xla_over_gemm": round(row["xla"] / row["gemm"], 2)}), flush=True)
    for part in ("forward", "input_grad", "weight_grad"):
        xla, gemm = totals[(part, "xla")], totals[(part, "gemm")]
        print(json.dumps({"total": part, "xla_ms": round(1e3 * xla, 1), "gemm_ms": round(1e3 * gemm, 1),
                          "xla_over_gemm": round(xla / gemm, 2)}), flush=True)


if __name__ == "__main__":
    main()
