"""Training-step throughput of the classic LGG U-Net, optionally side by side with
the PyTorch reference step (`../shared/bench/torch_unet_reference.py`) at the
same shapes, reported as a ratio.

  python -m unet_jax.benchmarks.train_step --sizes 128 256 --batch 8 \
      --torch_reference ../shared/bench/torch_unet_reference.py

Prints one JSON line per measurement. The step is the real one (AdamW, Dice
loss, BatchNorm, the finiteness check), with the loss as its only metric;
inputs are random, so no data pipeline is involved. It imports neither
TensorFlow, grain nor clu, which the GPU machines lack.
"""

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import losses, parallel, steps
from unet_jax.models.conv import CONV_IMPLS
from unet_jax.models.unet import UNet


@flax.struct.dataclass
class _Total:
    total: jax.Array


@flax.struct.dataclass
class _Metrics:
    loss: _Total


def loss_metrics(logits, targets, valid, loss) -> _Metrics:
    """The train step's metrics without clu (not on the GPU machine): the loss
    alone, which the step also checks for finiteness."""
    return _Metrics(loss=_Total(total=loss))


def measure(model, example_shape: tuple[int, ...], batch: int, *, steps_timed: int, warmup: int) -> dict:
    """Times the jitted train step of `model` on random batches of `batch`
    examples of `example_shape` ([*spatial, C]); returns one JSON-able row."""
    mesh = parallel.make_mesh()
    tx = steps.make_optimizer(1e-4, total_steps=1000, schedule="constant")
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, *example_shape)))
    state = jax.device_put(state, parallel.replicated(mesh))
    rng = np.random.default_rng(0)
    batch_np = {"image": rng.standard_normal((batch, *example_shape), np.float32),
                "mask": (rng.random((batch, *example_shape[:-1], 1)) > 0.8).astype(np.float32),
                "valid": np.ones(batch, bool)}
    data = parallel.to_global(batch_np, mesh)
    step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.dice_loss,
                                     metrics_fn=loss_metrics),
                   in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)), donate_argnums=0)
    start = time.perf_counter()
    state, m = step(state, data)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, m = step(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps_timed):
        start = time.perf_counter()
        state, m = step(state, data)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    return {"framework": "jax", "version": jax.__version__, "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(), "shape": list(example_shape), "batch": batch,
            "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": round(compile_s, 2), "step_s": med, "images_per_s": batch / med}


def torch_reference(script: str, size: int, batch: int, steps_timed: int, warmup: int, threads: int) -> dict:
    cmd = [sys.executable, script, "--batch", str(batch), "--size", str(size), "--steps", str(steps_timed),
           "--warmup", str(warmup)] + (["--threads", str(threads)] if threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed_precision", action="store_true")
    parser.add_argument("--conv_impl", nargs="+", default=["auto"], choices=CONV_IMPLS,
                        help="convolution(s) to time, e.g. `xla gemm` for before and after (unet_jax.models.conv)")
    parser.add_argument("--torch_reference", default="", help="path of torch_unet_reference.py to run alongside")
    parser.add_argument("--torch_threads", type=int, default=0)
    args = parser.parse_args()
    for size in args.sizes:
        rows = {}
        for impl in args.conv_impl:
            model = UNet(features=args.features, dtype=jnp.bfloat16 if args.mixed_precision else jnp.float32,
                         conv_impl=impl)
            rows[impl] = {**measure(model, (size, size, 3), args.batch, steps_timed=args.steps, warmup=args.warmup),
                          "size": size, "features": args.features, "mixed_precision": args.mixed_precision,
                          "conv_impl": impl}
            print(json.dumps(rows[impl]), flush=True)
        if args.torch_reference:
            ref = torch_reference(args.torch_reference, size, args.batch, args.steps, args.warmup,
                                  args.torch_threads)
            print(json.dumps(ref), flush=True)
            for impl, ours in rows.items():
                print(json.dumps({"size": size, "batch": args.batch, "conv_impl": impl,
                                  "jax_over_torch": round(ours["images_per_s"] / ref["images_per_s"], 3)}),
                      flush=True)


if __name__ == "__main__":
    main()
