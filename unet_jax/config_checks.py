"""`validate_config`: every check that can fail before training, made before
anything is created (after maxtext's `validate_train_config`).

Each failure is a `ConfigError` with one line naming the config key, the value
and what is allowed; `main.py` prints it and exits with status 2.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import ml_collections

import configs.default
from unet_jax import inference, parallel, steps, tasks
from unet_jax.builders import best_metric, input_shape, model_from_config
from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.data.pathology import PathologyOptions
from unet_jax.errors import ConfigError
from unet_jax.models.unet import UNet

BEST_MODES = ("max", "min")
MODES = ("train", "evaluate")
AUGMENT_ON = ("host", "device")

# Keys a run's config.json may lack: the code reads them with a default, for runs written before they existed.
OPTIONAL_KEYS = frozenset({"optimizer", "momentum", "plans", "allow_changed_config", "model.deep_supervision",
                           "data.augment_on", "data.pathology", "data.eval_pathology", "data.fold", "model.conv_impl"})
# Keys whose change on a resume keeps the run's meaning: where it stops, how often it logs, how many
# preview images its figures show, the convolution's implementation, and the switch itself.
RESUME_IGNORES = frozenset({"halt_after_steps", "log_every_steps", "num_preview_images", "model.conv_impl",
                            "allow_changed_config"})
NOT_A_RUN = ("this is not a unet_jax workdir or it was written by another version; point --workdir at a run "
             "folder")


@functools.cache
def _default_config() -> dict:
    return configs.default.get_config().to_dict()


def check_run_config(values: Any, source: str) -> None:
    """ConfigError in one line naming `source` unless `values` (a run's
    config.json) holds the keys of configs/default.py, at the top and in its
    model and data sections, and no others (a model may set any U-Net field;
    nested option dicts such as data.augment are checked where they are used)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: holds a JSON {type(values).__name__}, not a config; {NOT_A_RUN}")
    reference = _default_config()
    unet_fields = {f.name for f in dataclasses.fields(UNet)} - {"parent", "name"}
    missing, unknown = [], []
    for section, extra in (("", {"plans"}), ("model", unet_fields), ("data", set())):
        expected, found = (reference, values) if not section else (reference[section], values.get(section))
        prefix = f"{section}." if section else ""
        if not isinstance(found, dict):
            missing.append(section)
            continue
        missing += [prefix + k for k in expected if k not in found and prefix + k not in OPTIONAL_KEYS]
        unknown += [prefix + k for k in found if k not in expected and k not in extra]
    problems = [f"{what} {', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''}"
                for what, keys in (("no key", missing), ("unknown key", unknown)) if keys]
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}: {NOT_A_RUN}")


def config_changes(before: dict, after: dict) -> list[str]:
    """The keys (dotted) whose values differ between two configs as plain
    dicts, as "key: old -> new", leaving out RESUME_IGNORES."""
    old, new = flat_config(before, _as_tuples), flat_config(after, _as_tuples)
    return [f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}" for key in sorted(old.keys() | new.keys())
            if key not in RESUME_IGNORES and old.get(key, "(unset)") != new.get(key, "(unset)")]


def flat_config(d: dict, leaf: Callable[[Any], Any] = lambda v: v, prefix: str = "") -> dict[str, Any]:
    """A nested config dict with dotted keys, each value passed through `leaf`."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, leaf, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = leaf(v)
    return out


def _as_tuples(v: Any) -> Any:
    """Lists and tuples alike as tuples (JSON keeps tuples as lists)."""
    return tuple(_as_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_config(config: ml_collections.ConfigDict, manifest: dict, num_devices: int,
                    mode: str = "train") -> None:
    """Raises ConfigError unless `config` can train on (`mode="train"`) or
    evaluate on (`mode="evaluate"`) the prepared data that `manifest`
    describes, on `num_devices` devices (all processes)."""
    _require(mode in MODES, f"--mode={mode}: choose one of {', '.join(MODES)}")
    try:
        task = tasks.get_task(config)
        task.loss(config.loss)
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None
    metrics = [f"val_{name}" for name in task.metric_names()]
    metric, direction = best_metric(config)
    _require(metric in metrics, f"config.best_metric={metric!r} is not a {task.name} metric; choose one of "
                                f"{', '.join(metrics)}")
    _require(direction in BEST_MODES, f"config.best_mode={config.best_mode!r}: choose one of {', '.join(BEST_MODES)} "
                                 "(or leave it unset: the metric's own direction)")

    # ---- optimisation
    for key in ("num_epochs", "grad_accum_steps", "log_every_steps", "max_nonfinite_steps"):
        _require(config[key] >= 1, f"config.{key}={config[key]}: must be at least 1")
    for key in ("warmup_steps", "weight_decay", "clip_norm", "halt_after_steps", "num_preview_images"):
        _require(config[key] >= 0, f"config.{key}={config[key]}: must be 0 or more")
    _require(config.learning_rate > 0, f"config.learning_rate={config.learning_rate}: must be positive")
    _require(config.lr_schedule in steps.SCHEDULES,
             f"config.lr_schedule={config.lr_schedule!r}: choose one of {', '.join(steps.SCHEDULES)}")
    _require(config.get("optimizer", "adamw") in steps.OPTIMIZERS,
             f"config.optimizer={config.get('optimizer')!r}: choose one of {', '.join(steps.OPTIMIZERS)}")
    _require(0 <= config.get("momentum", 0.99) < 1, f"config.momentum={config.get('momentum')}: a fraction in [0, 1)")
    try:
        parallel.check_batch_size(config.batch_size, num_devices, config.grad_accum_steps)
        parallel.check_batch_size(config.eval_batch_size, num_devices, name="eval_batch_size")
    except ValueError as e:
        raise ConfigError(f"config.{e}") from None

    # ---- patches against the data, then the model against its input
    data = config.data
    _require(data.patch_size or not (manifest.get("dataset") == "volumes" and manifest.get("layout") == "volumes"),
             f"{data.data_dir} holds whole volumes of data_prep.volumes; set config.data.patch_size (e.g. "
             "(128, 128, 16)) to train on patches and evaluate by sliding window")
    _require(not (data.patch_size and metric == "val_loss"),
             "config.best_metric='val_loss': sliding-window evaluation of whole volumes computes no loss (it is "
             "defined on training patches); choose val_dice or a per-case metric such as val_hd95")
    if data.patch_size:
        dims = pipeline.spatial_dims(manifest)
        _require(len(data.patch_size) == dims and min(data.patch_size) >= 1,
                 f"config.data.patch_size={tuple(data.patch_size)}: give {dims} positive sizes for the "
                 f"{dims}-D records of {data.data_dir}")
        _require(0 <= data.foreground_prob <= 1,
                 f"config.data.foreground_prob={data.foreground_prob}: a probability in [0, 1]")
        _require(data.patches_per_volume >= 1,
                 f"config.data.patches_per_volume={data.patches_per_volume}: must be at least 1")
        window = data.sliding_window
        _require(0 <= window.overlap < 1, f"config.data.sliding_window.overlap={window.overlap}: a fraction in [0, 1)")
        _require(window.importance in inference.IMPORTANCE,
                 f"config.data.sliding_window.importance={window.importance!r}: choose one of "
                 f"{', '.join(inference.IMPORTANCE)}")
        for name, split in manifest["splits"].items():
            _require(split["num_examples"] == split["num_patients"],
                     f"config.data.patch_size is set, but split {name!r} of {data.data_dir} has "
                     f"{split['num_examples']} records for {split['num_patients']} cases; sliding-window "
                     "evaluation needs one whole volume per case (data_prep.volumes without --slices)")
    spatial = input_shape(config, manifest)[:-1]
    try:
        model_from_config(config).check(spatial)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from None
    weights = tuple(config.deep_supervision_weights)
    _require(len(weights) == config.model.deep_supervision,
             f"config.deep_supervision_weights has {len(weights)} entries but model.deep_supervision="
             f"{config.model.deep_supervision}; give one weight per level")
    _require(all(w >= 0 for w in weights), f"config.deep_supervision_weights={weights}: weights must be 0 or more")
    problem = task.output_problem(config.model.out_channels, manifest)
    _require(problem is None, f"config.model.out_channels={config.model.out_channels}: {problem}")

    # ---- data
    _require(data.normalization in pipeline.NORMALIZATIONS,
             f"config.data.normalization={data.normalization!r}: choose one of {', '.join(pipeline.NORMALIZATIONS)}")
    pipeline.check_normalization(data.data_dir, manifest, data.normalization)  # DataError: the data must change
    _require(data.num_workers >= 0, f"config.data.num_workers={data.num_workers}: must be 0 or more")
    _require(data.prefetch_buffer_size >= 1,
             f"config.data.prefetch_buffer_size={data.prefetch_buffer_size}: must be at least 1")
    if data.augment:
        known = [f.name for f in dataclasses.fields(AugmentOptions)]
        for key, value in data.augment.items():
            _require(key in known, f"config.data.augment.{key}: no such field; choose from {', '.join(known)}")
            if key.endswith("_prob"):
                _require(0 <= value <= 1, f"config.data.augment.{key}={value}: a probability in [0, 1]")
        _require(0 <= data.augment.get("max_rotate_deg", 0) <= 180,
                 f"config.data.augment.max_rotate_deg={data.augment.get('max_rotate_deg')}: degrees in [0, 180]")
        _require(0 <= data.augment.get("max_scale", 0) < 1,
                 f"config.data.augment.max_scale={data.augment.get('max_scale')}: a fraction in [0, 1)")
        for key, value in data.augment.items():
            if key.endswith("_range"):
                _require(len(value) == 2 and 0 < value[0] <= value[1],
                         f"config.data.augment.{key}={tuple(value)}: give (low, high) with 0 < low <= high")
        _require(data.augment.get("noise_std", 0) >= 0,
                 f"config.data.augment.noise_std={data.augment.get('noise_std')}: must be 0 or more")
        dims = len(spatial)
        _require(all(0 <= a < dims for a in data.augment.get("flip_axes", ())),
                 f"config.data.augment.flip_axes={tuple(data.augment.get('flip_axes', ()))}: axes of the "
                 f"{dims}-D input lie in 0..{dims - 1}")
    _require(data.get("augment_on", "host") in AUGMENT_ON,
             f"config.data.augment_on={data.get('augment_on')!r}: choose one of {', '.join(AUGMENT_ON)}")
    if data.get("pathology"):
        known = [f.name for f in dataclasses.fields(PathologyOptions)]
        for key in data.pathology:
            _require(key in known, f"config.data.pathology.{key}: no such field; choose from {', '.join(known)}")
        try:
            PathologyOptions(**data.pathology)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.data.pathology: {e}") from None
        _require(data.get("augment_on", "host") == "host" or data.pathology.prob == 0 or "blob" not in data.pathology.shapes,
                 "config.data.pathology.shapes: blob lesions are drawn on the host only; drop blob or set "
                 "config.data.augment_on=host")
        _require(task.name == "segmentation" or not (data.pathology.prob > 0 or data.get("eval_pathology")),
                 "config.data.pathology draws lesions into lung CT for segmentation; set its prob to 0 and "
                 "eval_pathology to False for a regression")

    # ---- splits
    if mode != "train":
        return
    splits = manifest["splits"]
    train = splits["train"]["num_examples"] * (data.patches_per_volume if data.patch_size else 1)
    _require(train > 0, f"{data.data_dir} has no training examples (prepared for evaluation only, with val and "
                        "test fractions summing to 1); train on another folder, or evaluate with --mode=evaluate")
    _require(train >= config.batch_size,
             f"config.batch_size={config.batch_size} is larger than the {train} training examples of "
             f"{data.data_dir} per epoch; lower it" + (", or raise config.data.patches_per_volume"
                                                       if data.patch_size else ""))
    _require(splits.get("val", {}).get("num_examples", 0) > 0,
             f"{data.data_dir} has no validation examples, so no best epoch can be chosen; "
             + (f"it holds {manifest['split']['cv_folds']} cross-validation folds: set --config.data.fold=0 (.. "
                f"{manifest['split']['cv_folds'] - 1})" if manifest.get("split", {}).get("cv_folds") and
                data.get("fold") is None else "prepare it with --val_fraction above 0"))
