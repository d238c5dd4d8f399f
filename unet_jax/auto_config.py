"""Fills a config's unset fields from the experiment plan of its data
(plans.json, written by `python -m data_prep.plan` and copied beside the
manifest by `data_prep.volumes --plans`), so `configs/auto_3d.py` trains a
3-D U-Net that fits any prepared folder with no other flag.

Only fields left None are filled: a value given in a config file or on the
command line (`--config.batch_size=4`) always wins. The resolved values are
what the workdir's config.json records, so evaluation and prediction read a
complete config and never the plans.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections

from unet_jax.data import pipeline
from unet_jax.errors import ConfigError
from unet_jax.preprocess import plans

# nnU-Net's epoch: 250 training iterations, whatever the dataset's size.
STEPS_PER_EPOCH = 250


def plans_path(config: ml_collections.ConfigDict) -> str:
    """Where the config's plans file is: `config.plans` as given when absolute, else inside the data folder."""
    return config.plans if os.path.isabs(config.plans) else os.path.join(config.data.data_dir, config.plans)


def deep_supervision_weights(heads: int) -> tuple[float, ...]:
    """nnU-Net's halving weights of the auxiliary heads relative to the main
    output: 1/2 for decoder level 1 (half resolution), 1/4 for level 2, ..."""
    return tuple(0.5 ** level for level in range(1, heads + 1))


def planned_values(plan: dict, manifest: dict, num_devices: int, backend: str) -> dict[str, object]:
    """The config values a plan sets, as dotted keys. The batch is rounded
    down to a multiple of the devices (at least one per device); an epoch is
    nnU-Net's `STEPS_PER_EPOCH` steps, drawn as patches per training volume;
    mixed precision wherever the backend computes bf16 natively (not a CPU)."""
    batch = max(num_devices, plan["batch_size"] // num_devices * num_devices)
    train_cases = max(manifest["splits"]["train"]["num_patients"], 1)
    return {
        "data.patch_size": tuple(int(v) for v in plan["patch_size"]),
        "data.patches_per_volume": max(1, math.ceil(STEPS_PER_EPOCH * batch / train_cases)),
        "batch_size": batch,
        "eval_batch_size": 2 * batch,
        "model.depth": int(plan["depth"]),
        "model.features": int(plan["features"]),
        "model.kernel_size": tuple(tuple(int(k) for k in level) for level in plan["kernel_size"]),
        "model.pool_strides": tuple(tuple(int(k) for k in level) for level in plan["pool_strides"]),
        "model.deep_supervision": int(plan["deep_supervision"]),
        "deep_supervision_weights": deep_supervision_weights(int(plan["deep_supervision"])),
        "model.out_channels": int(manifest.get("num_classes", 2)),
        "mixed_precision": backend in ("gpu", "tpu"),
    }


def apply_plans(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Sets every None field that the plan decides (see `planned_values`) and
    returns the config; a config without `plans` is returned unchanged."""
    if not config.get("plans"):
        return config
    path = plans_path(config)
    manifest = pipeline.read_manifest(config.data.data_dir, fold=config.data.get("fold"))
    values = planned_values(plans.read_plans(path)["plan"], manifest, jax.device_count(), jax.default_backend())
    deep = (int(config.model.deep_supervision) if config.model.get("deep_supervision") is not None
            else values["model.deep_supervision"])
    values["deep_supervision_weights"] = deep_supervision_weights(deep)  # one weight per head the model has
    return fill_unset(config, values)


def fill_unset(config: ml_collections.ConfigDict, values: dict[str, object]) -> ml_collections.ConfigDict:
    """Sets each dotted key of `values` that is None in `config`; returns it."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise ConfigError(f"config.{key}: the auto config needs this field; build the config on configs/auto_3d.py")
        if node[leaf] is None:
            node[leaf] = value
    return config
