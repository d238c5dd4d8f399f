"""Turn a config into the objects a run is made of: the U-Net, its input
shape, the metric that picks the best epoch, and the options of training
patches, sliding windows, augmentation on the device and simulated pathology.
Checking a config is `config_checks`'s job, before any of these is built."""

from __future__ import annotations

import functools
from collections.abc import Callable

import ml_collections

from unet_jax import inference, tasks
from unet_jax.data import augment_device, pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.data.pathology import PathologyOptions
from unet_jax.data.pipeline import PatchOptions
from unet_jax.errors import ConfigError
from unet_jax.models.transformer import TransformerOptions
from unet_jax.models.unet import UNet


def model_from_config(config: ml_collections.ConfigDict, **overrides) -> UNet:
    """The U-Net of `config.model` (transformer sizes as one `TransformerOptions`)."""
    fields = config.model.to_dict()
    fields["transformer"] = TransformerOptions(**fields["transformer"])
    return UNet(**fields, **overrides)


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(metric, mode) that picks the best epoch: `config.best_metric` or the
    task's default, and `config.best_mode` or the metric's direction."""
    task = tasks.get_task(config)
    metric = config.best_metric or task.default_best_metric
    return metric, config.best_mode or task.best_mode(metric)


def input_shape(config: ml_collections.ConfigDict, manifest: dict) -> tuple[int, ...]:
    """The shape [*spatial, C] of one model input: a training patch when
    `config.data.patch_size` is set, else the prepared records' shape."""
    if config.data.patch_size:
        return (*(int(v) for v in config.data.patch_size), pipeline.num_channels(manifest))
    if manifest.get("image_shape") is None:
        raise ConfigError(f"{config.data.data_dir} holds volumes of different sizes; set config.data.patch_size "
                          "(e.g. (128, 128, 16)) to train on patches and evaluate by sliding window")
    return tuple(manifest["image_shape"])


def window_options(config: ml_collections.ConfigDict) -> inference.WindowOptions | None:
    """Sliding-window evaluation of whole volumes, when training on patches."""
    if not config.data.patch_size:
        return None
    return inference.WindowOptions(tuple(int(v) for v in config.data.patch_size), **config.data.sliding_window)


def patch_options(config: ml_collections.ConfigDict) -> PatchOptions | None:
    if not config.data.patch_size:
        return None
    return PatchOptions(tuple(int(v) for v in config.data.patch_size), config.data.foreground_prob,
                        config.data.patches_per_volume)


def device_augment(config: ml_collections.ConfigDict, task: tasks.Task) -> Callable | None:
    """With `config.data.augment_on="device"`, the train step's `augment_fn`:
    `augment_device.augment_batch` with the config's augmentation and
    simulated pathology; None when augmentation runs on the host (or is off)."""
    if config.data.get("augment_on", "host") != "device":  # runs trained before it existed: host
        return None
    opts, pathology = AugmentOptions(**config.data.augment) if config.data.augment else None, pathology_options(config)
    if opts is None and pathology is None:
        return None
    regression = task.name == "regression"
    return functools.partial(augment_device.augment_batch, opts=opts or AugmentOptions(
        flip_prob=0, rotate_prob=0, scale_prob=0), continuous=regression,
        num_labels=1 if regression else max(task.num_classes - 1, 1), pathology=pathology)


def pathology_options(config: ml_collections.ConfigDict, evaluation: bool = False) -> PathologyOptions | None:
    """The simulated pathology of training (None when `config.data.pathology.prob`
    is 0), or with `evaluation` the lesions that `config.data.eval_pathology`
    draws into every validation or test slice (probability 1), else None."""
    options = config.data.get("pathology")
    if evaluation:
        return PathologyOptions(**{**options, "prob": 1.0}) if config.data.get("eval_pathology") else None
    return PathologyOptions(**options) if options and options.get("prob", 0) > 0 else None
