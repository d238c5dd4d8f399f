"""Sliding-window inference speed on one whole volume, optionally side by side
with MONAI's `sliding_window_inference` running the same-sized U-Net in
PyTorch (the 3-D network of `../shared/bench/torch_unet_reference.py`), as a ratio.

  python -m unet_jax.benchmarks.sliding_window --shape 182 218 182 --patch 128 128 16 \\
      --torch_reference ../shared/bench/torch_unet_reference.py

Both sides: a 3-D U-Net of --features base features and --depth poolings
(3x3x3 convolutions, BatchNorm, 2x2x2 pooling), windows of --patch
overlapping by --overlap, Gaussian blending, --batch windows at a time, one
output class reduced to labels. Prints one JSON line per framework (voxels/s
over --repeats runs after a warm-up that compiles) and one with the ratio.
torch and MONAI are needed for the comparison only, never by unet_jax.
"""

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time

import numpy as np


def median_seconds(run, volume, repeats: int) -> float:
    """Median wall time of `run(volume)` over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(volume)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_torch_reference(script: str):
    """The module `torch_unet_reference.py` at `script` (its `UNet`, `block`); imports torch."""
    spec = importlib.util.spec_from_file_location("torch_unet_reference", script)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    return reference


def measure_jax(shape, patch, *, features: int, depth: int, batch: int, overlap: float, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from unet_jax import inference, parallel, steps, tasks
    from unet_jax.models.unet import UNet

    mesh, task = parallel.make_mesh(), tasks.Segmentation()
    model = UNet(out_channels=1, features=features, depth=depth, norm="batch")
    tx = steps.make_optimizer(1e-4, total_steps=1, schedule="constant")
    state = jax.device_put(steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, *patch, 1))),
                           parallel.replicated(mesh))
    predict_step = jax.jit(lambda s, x: steps.predict_step(s, x, output_fn=task.window_output),
                           in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                           out_shardings=parallel.batch_sharded(mesh))
    window = inference.WindowOptions(tuple(patch), overlap=overlap)
    volume = np.random.default_rng(0).standard_normal((*shape, 1), np.float32)

    def run(image):
        labels, _ = inference.window_inference(predict_step, state, image, window, task.finalize,
                                              batch_size=batch, mesh=mesh)
        return labels

    compile_s = median_seconds(run, volume[tuple(slice(0, p) for p in patch)], 1)  # compiles
    seconds = median_seconds(run, volume, repeats)
    return {"framework": "jax", "version": jax.__version__, "device": str(jax.devices()[0].device_kind),
            "devices": jax.device_count(), "shape": list(shape), "patch": list(patch), "batch": batch,
            "overlap": overlap, "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": round(compile_s, 2), "seconds": round(seconds, 3),
            "voxels_per_s": round(float(np.prod(shape)) / seconds)}


def measure_torch(shape, patch, *, script: str, features: int, depth: int, batch: int, overlap: float,
                  repeats: int, threads: int) -> dict:
    import monai
    import torch
    from monai.inferers import sliding_window_inference

    reference = load_torch_reference(script)
    if threads:
        torch.set_num_threads(threads)
    model = reference.UNet(in_ch=1, out_ch=1, base=features, depth=depth, dims=3).eval()
    volume = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, *shape), np.float32))

    def run(image):
        with torch.inference_mode():
            probs = sliding_window_inference(image, tuple(patch), batch, lambda x: torch.sigmoid(model(x)),
                                             overlap=overlap, mode="gaussian")
            return (probs > 0.5).to(torch.uint8)

    median_seconds(run, volume[(..., *(slice(0, p) for p in patch))], 1)  # warm-up
    seconds = median_seconds(run, volume, repeats)
    return {"framework": "torch+monai", "version": f"{torch.__version__}/{monai.__version__}",
            "threads": torch.get_num_threads(), "shape": list(shape), "patch": list(patch), "batch": batch,
            "overlap": overlap, "params": int(sum(p.numel() for p in model.parameters())),
            "seconds": round(seconds, 3), "voxels_per_s": round(float(np.prod(shape)) / seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[182, 218, 182])
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 16])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--torch_reference", default="", help="path of torch_unet_reference.py: also run MONAI")
    parser.add_argument("--torch_threads", type=int, default=0)
    parser.add_argument("--torch_only", action="store_true", help=argparse.SUPPRESS)  # the subprocess's side
    args = parser.parse_args()
    common = dict(features=args.features, depth=args.depth, batch=args.batch, overlap=args.overlap,
                  repeats=args.repeats)
    if args.torch_only:
        print(json.dumps(measure_torch(args.shape, args.patch, script=args.torch_reference,
                                       threads=args.torch_threads, **common)))
        return
    ours = measure_jax(args.shape, args.patch, **common)
    print(json.dumps(ours), flush=True)
    if args.torch_reference:
        # Its own process, so the two frameworks' thread pools do not compete.
        out = subprocess.run([sys.executable, "-m", "unet_jax.benchmarks.sliding_window", "--torch_only",
                              *sys.argv[1:]], check=True, capture_output=True, text=True).stdout
        ref = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(ref), flush=True)
        print(json.dumps({"shape": args.shape, "patch": args.patch,
                          "jax_over_torch": round(ours["voxels_per_s"] / ref["voxels_per_s"], 3)}), flush=True)


if __name__ == "__main__":
    main()
