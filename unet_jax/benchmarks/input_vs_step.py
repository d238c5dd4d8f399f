"""Which side bounds training, the input pipeline or the train step, with
augmentation in the grain workers (NumPy) or in the jitted step (`augment_device`).

  python -m unet_jax.benchmarks.input_vs_step --data_dir=data/lgg --patch_data_dir=data/wmh --workers 0 2 8

For a 2-D slice dataset (configs/lgg.py's U-Net and augmentation) and, with
--patch_data_dir, a 3-D volume dataset cut into patches (configs/wmh_3d.py's),
it measures examples/s of (the JSON lines' "measure" and "augment")
  host, host:     the training pipeline with augmentation on the host, per worker count;
  host, none:     the same pipeline without it (read, decode, normalise, crop a
                  patch, batch): what is left on the host when the device augments;
  augment, device: `augment_device.augment_batch` by itself, jitted;
  step, none and step, device: the jitted train step, without and with the
                  device augmentation fused into it (inputs random: no pipeline).
Prints one JSON line per measurement and a verdict per dataset: training runs
at most as fast as the slower of input and step, so which one bounds it, and
by how much, with augmentation on each side. On a machine without an
accelerator the workers and the step share the CPU cores, so the bounds are
optimistic there.

The step part imports neither grain nor clu nor TensorFlow (its metrics are
the loss alone); the host part imports the pipeline when it runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import lgg, wmh_3d
from unet_jax import losses, parallel, steps
from unet_jax.benchmarks.train_step import loss_metrics
from unet_jax.data import MANIFEST, augment_device
from unet_jax.data.augment import AugmentOptions
from unet_jax.models.transformer import TransformerOptions
from unet_jax.models.unet import UNet


def model_from_config(config, features: int | None = None, depth: int | None = None) -> UNet:
    """`builders.model_from_config` (which imports the grain pipeline and
    clu), optionally narrower or shallower (per-level settings cut to the
    first `depth` levels and the bottleneck's)."""
    fields = config.model.to_dict()
    fields["transformer"] = TransformerOptions(**fields["transformer"])
    if features:
        fields["features"] = features
    if depth:
        fields["depth"] = depth
        for name, bottleneck in (("kernel_size", True), ("num_convs", True), ("pool_strides", False)):
            value = fields.get(name)
            if value is not None and not isinstance(value, int) and not isinstance(value[0], int):  # per level
                fields[name] = (*value[:depth], value[-1]) if bottleneck else tuple(value[:depth])
    return UNet(**fields)


def _random_batch(example_shape: tuple[int, ...], batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((batch, *example_shape), np.float32),
            "mask": (rng.random((batch, *example_shape[:-1], 1)) > 0.8).astype(np.float32),
            "valid": np.ones(batch, bool)}


def _time(fn, *, timed: int, warmup: int) -> tuple[float, float]:
    """(compile and first call, median of `timed` calls) in seconds; `fn` returns what to wait for."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def measure_step(model: UNet, example_shape: tuple[int, ...], batch: int, *, opts: AugmentOptions | None,
                 num_labels: int = 1, steps_timed: int, warmup: int) -> dict:
    """Examples/s of the jitted train step of `model` on a random batch, with
    the device augmentation fused in (`opts`) or without it (None)."""
    mesh = parallel.make_mesh()
    tx = steps.make_optimizer(1e-4, total_steps=1000, schedule="constant")
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, *example_shape)))
    holder = {"state": jax.device_put(state, parallel.replicated(mesh))}
    data = parallel.to_global(_random_batch(example_shape, batch), mesh)
    augment = None if opts is None else functools.partial(augment_device.augment_batch, opts=opts,
                                                          num_labels=num_labels)
    step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.dice_loss, metrics_fn=loss_metrics,
                                     augment_fn=augment),
                   in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)), donate_argnums=0)
    def run():
        holder["state"], metrics = step(holder["state"], data)
        return metrics
    compile_s, step_s = _time(run, timed=steps_timed, warmup=warmup)
    return {"measure": "step", "augment": "none" if opts is None else "device", "shape": list(example_shape),
            "batch": batch, "devices": mesh.size, "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": round(compile_s, 2), "step_s": round(step_s, 4), "examples_per_s": round(batch / step_s, 2)}


def measure_device_augment(example_shape: tuple[int, ...], batch: int, *, opts: AugmentOptions, num_labels: int,
                           calls: int, warmup: int) -> dict:
    """Examples/s of `augment_batch` alone, jitted, on a random batch."""
    data = _random_batch(example_shape, batch)
    augment = jax.jit(functools.partial(augment_device.augment_batch, opts=opts, num_labels=num_labels))
    keys = iter(jax.random.split(jax.random.PRNGKey(0), calls + warmup + 1))
    _, seconds = _time(lambda: augment(next(keys), data["image"], data["mask"]), timed=calls, warmup=warmup)
    return {"measure": "augment", "augment": "device", "shape": list(example_shape), "batch": batch,
            "seconds": round(seconds, 4), "examples_per_s": round(batch / seconds, 1)}


def measure_host(data_dir: str, *, workers: int, batch_size: int, batches: int, warmup: int, normalization: str,
                 opts: AugmentOptions | None, patches: dict | None = None) -> dict:
    """Examples/s of the training pipeline with host augmentation `opts` (None:
    none), on whole records or on patches (`patches`: `PatchOptions` fields);
    worker start-up excluded."""
    from unet_jax.data import pipeline  # grain: only here

    ds = pipeline.train_dataset(data_dir, batch_size=batch_size, seed=0, normalization=normalization,
                                augment_options=opts, patches=pipeline.PatchOptions(**patches) if patches else None)
    it = pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=workers))
    for _ in range(warmup):
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    return {"measure": "host", "augment": "host" if opts is not None else "none", "workers": workers,
            "batch": batch_size, "shape": list(batch["image"].shape[1:]),
            "examples_per_s": round(batches * batch_size / seconds, 1), "seconds": round(seconds, 2)}


def _bound(input_rate: float, step_rate: float) -> str:
    side, ratio = ("input", step_rate / input_rate) if input_rate < step_rate else ("step", input_rate / step_rate)
    return f"{min(input_rate, step_rate):.3g} examples/s, bound by the {side} ({ratio:.1f}x slower than the other)"


def verdict(dataset: str, rows: list[dict]) -> str:
    """Plain-text summary of one dataset's rows: the slower side with
    augmentation on the host (best worker count) and on the device."""
    def best(augment):
        return max((r for r in rows if r["measure"] == "host" and r["augment"] == augment),
                   key=lambda r: r["examples_per_s"])
    def step(augment):
        return next(r for r in rows if r["measure"] == "step" and r["augment"] == augment)["examples_per_s"]
    host, plain = best("host"), best("none")
    on_host = min(host["examples_per_s"], step("none"))
    on_device = min(plain["examples_per_s"], step("device"))
    return (f"{dataset}: augmentation on the host ({host['workers']} workers): "
            f"{_bound(host['examples_per_s'], step('none'))}; on the device ({plain['workers']} workers): "
            f"{_bound(plain['examples_per_s'], step('device'))}; moving it to the device: {on_device / on_host:.2f}x")


def run_dataset(name: str, data_dir: str, *, config, example_shape: tuple[int, ...], batch: int,
                patches: dict | None, args: argparse.Namespace) -> list[dict]:
    """Every measurement of one dataset, printed as it comes."""
    with open(os.path.join(data_dir, MANIFEST)) as f:
        num_labels = max(1, json.load(f).get("num_classes", 2) - 1)
    opts = AugmentOptions(**config.data.augment)
    rows = []
    def emit(row):
        rows.append({"dataset": name, **row})
        print(json.dumps(rows[-1]), flush=True)
    for workers in sorted(set(args.workers)):
        for host_opts in (opts, None):
            emit(measure_host(data_dir, workers=workers, batch_size=batch, batches=args.batches, warmup=args.warmup,
                              normalization=config.data.normalization, opts=host_opts, patches=patches))
    emit(measure_device_augment(example_shape, batch, opts=opts, num_labels=num_labels, calls=args.steps,
                                warmup=args.warmup))
    model = model_from_config(config, args.features, args.depth)
    for step_opts in (None, opts):
        emit({**measure_step(model, example_shape, batch, opts=step_opts, num_labels=num_labels,
                             steps_timed=args.steps, warmup=args.warmup), "features": model.features})
    return rows


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="2-D slices written by data_prep.lgg (configs/lgg.py)")
    parser.add_argument("--patch_data_dir", default="",
                        help="volumes written by data_prep.volumes, trained on patches as configs/wmh_3d.py")
    parser.add_argument("--patch_size", type=int, nargs=3, default=None, help="default: configs/wmh_3d.py's")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, os.cpu_count() or 1])
    parser.add_argument("--batch", type=int, default=None, help="2-D batch; default: configs/lgg.py's")
    parser.add_argument("--batch_3d", type=int, default=None, help="default: configs/wmh_3d.py's")
    parser.add_argument("--features", type=int, default=None, help="narrow both U-Nets (default: the configs')")
    parser.add_argument("--depth", type=int, default=None, help="poolings of both U-Nets (default: the configs')")
    parser.add_argument("--batches", type=int, default=20, help="host batches timed per measurement")
    parser.add_argument("--steps", type=int, default=5, help="train steps (and device augmentations) timed")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    verdicts = []
    config = lgg.get_config()
    with open(os.path.join(args.data_dir, MANIFEST)) as f:
        shape = tuple(json.load(f)["image_shape"])
    rows = run_dataset("2d", args.data_dir, config=config, example_shape=shape, batch=args.batch or config.batch_size,
                       patches=None, args=args)
    verdicts.append(verdict("2d", rows))
    if args.patch_data_dir:
        config = wmh_3d.get_config()
        size = tuple(args.patch_size or config.data.patch_size)
        with open(os.path.join(args.patch_data_dir, MANIFEST)) as f:
            manifest = json.load(f)
        channels = manifest.get("num_channels") or manifest["image_shape"][-1]
        patches = {"size": size, "foreground_prob": config.data.foreground_prob,
                   "per_volume": config.data.patches_per_volume}
        rows = run_dataset("3d_patches", args.patch_data_dir, config=config, example_shape=(*size, channels),
                           batch=args.batch_3d or config.batch_size, patches=patches, args=args)
        verdicts.append(verdict("3d_patches", rows))
    for line in verdicts:
        print(line, flush=True)
    return verdicts


if __name__ == "__main__":
    main()
