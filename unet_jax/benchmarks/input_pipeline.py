"""Input-pipeline throughput: training batches per second with augmentation.

  python -m unet_jax.benchmarks.input_pipeline --data_dir=DIR --workers 0 2

Prints one JSON line per worker count: examples/s over --batches batches
after --warmup batches (worker start-up excluded).
"""

import argparse
import json
import time

from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions


def measure(data_dir: str, *, workers: int, batch_size: int, batches: int, warmup: int,
            normalization: str) -> dict:
    ds = pipeline.train_dataset(data_dir, batch_size=batch_size, seed=0, normalization=normalization,
                                augment_options=AugmentOptions())
    it = pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=workers))
    for _ in range(warmup):
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": batch_size, "image_shape": list(batch["image"].shape[1:]),
            "examples_per_s": round(batches * batch_size / seconds, 1), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="a folder written by data_prep")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--normalization", default="scale", choices=pipeline.NORMALIZATIONS)
    args = parser.parse_args()
    for w in args.workers:
        print(json.dumps(measure(args.data_dir, workers=w, batch_size=args.batch_size, batches=args.batches,
                                 warmup=args.warmup, normalization=args.normalization)), flush=True)


if __name__ == "__main__":
    main()
