"""Compares the U-Net variants of configs/: parameter count (ours and the one
the source document reports), training throughput on random batches, and test
Dice after the same short training on the demo phantoms.

  python -m unet_jax.benchmarks.variants --workdir=/tmp/variants
  python -m unet_jax.benchmarks.variants --workdir=/tmp/variants --configs lgg lgg_3d --epochs 4

Every variant keeps its own model and trains with the demo's recipe (phantoms,
optimiser, schedule, loss, epochs); 3-D variants see the same phantoms as
volumes. Prints one JSON line per variant and writes `variants.json` and
`variants.md` (a table) into the workdir.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import jax
import jax.numpy as jnp

from configs import demo
from unet_jax import phantoms, train
from unet_jax.benchmarks.train_step import measure
from unet_jax.files import atomic_write, write_json
from unet_jax.run import build_model

VARIANTS = ["lgg", "lgg_res_attention", "lgg_keras_model1", "lgg_keras_model2", "lgg_transunet", "lgg_3d"]
# What the source documents report (None: not reported).
REPORTED_PARAMS = {"lgg": 7_763_041,            # document 001's PyTorch U-Net (the reference step)
                   "lgg_keras_model1": 7_774_049, "lgg_keras_model2": 10_655_809}
DEPTH_3D = 16  # slices per volume for 3-D variants (document 004's 128x128x16)


def load(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def is_3d(config) -> bool:
    return len(build_model(config).level_kernels(2)[0]) == 3


def count_params(config) -> int:
    """Parameters at the variant's native input: 256x256x3 slices, 128x128x16x3 volumes."""
    shape = (1, 128, 128, DEPTH_3D, 3) if is_3d(config) else (1, 256, 256, 3)
    variables = jax.eval_shape(build_model(config).init, jax.random.PRNGKey(0), jnp.zeros(shape))
    return int(sum(x.size for x in jax.tree.leaves(variables["params"])))


def phantom_config(name: str, workdir: str, epochs: int):
    """The variant's model and the demo's data and training recipe."""
    config, recipe = load(name), demo.get_config()
    for key in ("loss", "learning_rate", "lr_schedule", "warmup_steps", "batch_size", "eval_batch_size",
                "log_every_steps"):
        config[key] = recipe[key]
    config.num_epochs = epochs
    config.data.num_workers = 0
    synthetic = recipe.data.synthetic.to_dict()
    if is_3d(config):
        # 14 patients of 16 slices are 14 volumes: batches of 2 keep 5 steps per epoch.
        config.batch_size = config.eval_batch_size = 2
        synthetic["volume_depth"] = DEPTH_3D
    kind = "volumes" if is_3d(config) else "slices"
    config.data.data_dir = phantoms.prepare(os.path.join(workdir, f"phantoms_{kind}"), synthetic)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--configs", nargs="+", default=VARIANTS, help="config names under configs/")
    parser.add_argument("--epochs", type=int, default=10, help="phantom training epochs (0: skip training)")
    parser.add_argument("--size", type=int, default=128, help="throughput: slice size")
    parser.add_argument("--batch", type=int, default=8, help="throughput: examples per step")
    parser.add_argument("--steps", type=int, default=5, help="throughput: timed steps (0: skip)")
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        config = load(name)
        row = {"variant": name, "params": count_params(config), "reported_params": REPORTED_PARAMS.get(name)}
        if args.steps:
            shape = (args.size, args.size, DEPTH_3D, 3) if is_3d(config) else (args.size, args.size, 3)
            m = measure(build_model(config), shape, args.batch, steps_timed=args.steps, warmup=1)
            row.update(throughput_shape=list(shape), examples_per_s=round(m["images_per_s"], 3),
                       slices_per_s=round(m["images_per_s"] * (DEPTH_3D if is_3d(config) else 1), 3))
        if args.epochs:
            run = os.path.join(args.workdir, name)
            start = time.time()
            config = phantom_config(name, args.workdir, args.epochs)
            summary = train.train_and_evaluate(config, run)
            with open(os.path.join(config.data.data_dir, "manifest.json")) as f:
                train_examples = json.load(f)["splits"]["train"]["num_examples"]
            row.update(train_minutes=round((time.time() - start) / 60, 2), best_epoch=summary["best_epoch"],
                       train_steps=args.epochs * (train_examples // config.batch_size),
                       **{f"test_{k}": round(summary["metrics"][k], 4) for k in ("dice", "dice_3d")})
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_json(os.path.join(args.workdir, "variants.json"), rows)
    header = ["variant", "params", "reported_params", "examples_per_s", "slices_per_s", "train_steps",
              "test_dice", "test_dice_3d"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if r.get(k) is None else f"{r[k]:,}" if isinstance(r.get(k), int) else str(r[k])
                                for k in header) + " |" for r in rows]
    with atomic_write(os.path.join(args.workdir, "variants.md")) as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
