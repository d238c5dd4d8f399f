"""Evaluate a model on a prepared split: the task's metrics over every example,
per-patient tables on reassembled volumes, and the slices behind the figures.

An `Evaluator` (records as the model sees them: slices, or fixed-size
volumes) or a `VolumeEvaluator` (whole volumes of any size, by sliding window)
is built once per split and run (validation every epoch, the test once): the
dataset and the jitted step are made once, not per call. `test` writes an
evaluation's `<name>_metrics.json` and figure; `evaluate_workdir` is
--mode=evaluate: a finished run's best checkpoint on a split of any prepared folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from unet_jax import auto_config, inference, parallel
from unet_jax import metrics as metrics_lib
from unet_jax.builders import input_shape, pathology_options, window_options
from unet_jax.config_checks import validate_config
from unet_jax.data import pipeline
from unet_jax.data.pathology import PathologyOptions
from unet_jax.errors import ConfigError, DataError
from unet_jax.files import write_json
from unet_jax.run import TRAIN_MANIFEST, Run
from unet_jax.tasks import Task

# Metadata every batch carries beside image and mask.
ID_KEYS = ("patient_index", "slice", "valid")


@dataclasses.dataclass
class Evaluation:
    """What one pass over a split produced, slice by slice (volume records are
    cut back into their slices)."""

    split: str
    metrics: dict[str, float]  # the task's metric_names()
    patients: list[dict]       # one row per patient (Task.table)
    volumes: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]  # patient -> (pred, target, slice numbers)
    images: dict[int, np.ndarray]  # patient -> display channel [S, H, W], slice order
    display_channel: int       # which input channel `images` holds (1: FLAIR in LGG data)

    def summary(self) -> dict[str, Any]:
        return {"split": self.split, "metrics": self.metrics, "patients": self.patients}


def unstack_depth(arrays: dict[str, np.ndarray], slices: np.ndarray) -> dict[str, np.ndarray]:
    """Cuts a batch of volume records into slices: every array [B, H, W, D, ...]
    becomes [B*D, H, W, ...]; `patient_index` and `valid` [B] are repeated per
    slice, `slice` takes the numbers of `slices` [B, D], and padding slices
    (number -1) become invalid."""
    depth = slices.shape[1]
    out = {}
    for key, x in arrays.items():
        if key == "slice":
            continue
        if key in ("patient_index", "valid"):
            out[key] = np.repeat(x, depth)
        else:
            x = np.moveaxis(x, 3, 1)
            out[key] = x.reshape(-1, *x.shape[2:])
    out["slice"] = slices.reshape(-1)
    out["valid"] = out["valid"] & (out["slice"] >= 0)
    return out


class Evaluator:
    """Runs a jitted `eval_step` over every example of one split.

    `fold` evaluates that cross-validation fold's cases of the split.
    `batch_size` is global; padding examples of the last batch are excluded
    from every metric. Predictions, targets, ids and the `display_channel` of
    each image are gathered from the same global batch on every process, so
    per-patient tables see every slice whatever the device layout.
    """

    def __init__(self, task: Task, eval_step: Callable, data_dir: str, split: str, *, batch_size: int,
                 normalization: str, mesh, display_channel: int = 1, pathology: PathologyOptions | None = None,
                 seed: int = 0, fold: int | None = None):
        manifest = pipeline.read_manifest(data_dir, fold=fold)
        self.task, self.eval_step, self.split, self.mesh = task, eval_step, split, mesh
        self.data_dir = os.path.abspath(data_dir)
        self.names = [p["patient"] for p in manifest["splits"][split]["patients"]]
        self.display_channel = min(display_channel, pipeline.num_channels(manifest) - 1)
        self.dataset = pipeline.eval_dataset(
            data_dir, split, batch_size=parallel.check_batch_size(batch_size, mesh.size, name="eval_batch_size"),
            normalization=normalization, pathology=pathology, seed=seed, fold=fold, shard_index=jax.process_index(),
            shard_count=jax.process_count())

    def __call__(self, state) -> Evaluation:
        totals = self.task.empty_metrics()
        accumulator = metrics_lib.VolumeAccumulator()
        for local in self.dataset:
            batch = parallel.to_global(local, self.mesh)
            batch_metrics, preds = self.eval_step(state, batch)
            totals = totals.merge(batch_metrics)
            keys = ID_KEYS + (("slices",) if "slices" in batch else ())
            host = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(
                {"pred": preds, "target": batch["mask"], "image": batch["image"][..., self.display_channel],
                 **{k: batch[k] for k in keys}}, tiled=True).items()}
            if "slices" in host:
                host = unstack_depth(host, host.pop("slices"))
            pred, target = self.task.host_pair(host["pred"], host["target"])
            accumulator.add(pred, target, host["patient_index"], host["slice"], host["valid"],
                            image=host["image"].astype(np.float16))
        volumes = accumulator.volumes()
        table = self.task.table(volumes, self.names)  # once per evaluation: connected components are costly
        result = {k: float(v) for k, v in totals.compute().items()}
        result.update(metrics_lib.mean_over_patients(table, self.task.case_metrics))
        return Evaluation(self.split, result, table, volumes, accumulator.images(), self.display_channel)


def as_slices(volume: np.ndarray) -> np.ndarray:
    """A 3-D volume [X, Y, Z] as a stack of its Z slices [Z, X, Y] (the layout of
    per-patient tables and figures); a 2-D image as a stack of one."""
    return np.moveaxis(volume, -1, 0) if volume.ndim == 3 else volume[None]


class VolumeEvaluator:
    """Runs sliding-window inference over every whole volume (one record per
    case) of one split (with `fold`, that cross-validation fold's cases of
    it), and the task's metrics per case, in mm.

    `batch_size` windows (global) run at a time, sharded over the mesh; every
    process sees every case and gathers every window's output. The loss,
    defined on training patches, is NaN here; the per-case table holds
    Dice, surface distances and lesion scores on the whole volume.
    """

    def __init__(self, task: Task, predict_step: Callable, data_dir: str, split: str, *, batch_size: int,
                 normalization: str, mesh, window: inference.WindowOptions, display_channel: int = 0,
                 pathology: PathologyOptions | None = None, seed: int = 0, fold: int | None = None):
        manifest = pipeline.read_manifest(data_dir, fold=fold)
        self.task, self.predict_step, self.split, self.mesh, self.window = task, predict_step, split, mesh, window
        self.data_dir, self.normalization = os.path.abspath(data_dir), normalization
        self.pathology, self.seed = pathology, seed
        self.names = [p["patient"] for p in manifest["splits"][split]["patients"]]
        self.display_channel = min(display_channel, pipeline.num_channels(manifest) - 1)
        parallel.check_batch_size(batch_size, mesh.size, name="eval_batch_size")
        self.batch_size = batch_size
        self.source = pipeline.split_source(data_dir, split, fold)
        self.decode = pipeline.split_decoder(data_dir, split, fold)
        if len(self.source) != len(self.names):
            raise DataError(f"{data_dir}: split {split!r} has {len(self.source)} records for "
                                     f"{len(self.names)} cases; sliding-window evaluation needs one whole "
                                     "volume per case (data_prep.volumes without --slices)")

    def case(self, state, element: dict) -> tuple[np.ndarray, np.ndarray | None]:
        """The prediction for one decoded, normalised case, and None (no blend kept)."""
        return inference.window_inference(self.predict_step, state, element["image"], self.window,
                                          self.task.finalize, batch_size=self.batch_size, mesh=self.mesh)

    def __call__(self, state) -> Evaluation:
        totals = self.task.empty_metrics()
        volumes, images, spacings = {}, {}, {}
        for index in range(len(self.source)):
            element = pipeline.normalize(self.decode(self.source[index]), self.normalization)
            if self.pathology is not None:  # the same lesions every pass: seeded by the case
                element = pipeline.add_pathology(element, np.random.default_rng([self.seed, index]), self.pathology)
            pred, _ = self.case(state, element)
            _, target = self.task.host_pair(pred, element["mask"])
            totals = totals.merge(self.task.volume_metrics(pred, target))
            patient = int(element["patient_index"])
            volumes[patient] = (as_slices(pred), as_slices(target), np.arange(as_slices(pred).shape[0]))
            images[patient] = as_slices(element["image"][..., self.display_channel]).astype(np.float16)
            spacing = [float(v) for v in element.get("spacing", np.ones(pred.ndim))]
            spacings[patient] = spacing[-1:] + spacing[:-1] if pred.ndim == 3 else [1.0] + spacing
        table = self.task.table(volumes, self.names, spacings)
        result = {k: float(v) for k, v in totals.compute().items()}
        result.update(metrics_lib.mean_over_patients(table, self.task.case_metrics))
        return Evaluation(self.split, result, table, volumes, images, self.display_channel)


# --- evaluating a run -----------------------------------------------------------------

def make_evaluator(config, task, compiled, mesh, data_dir: str, split: str, fold: int | None = None):
    """An `Evaluator` of the records, or with patch training a `VolumeEvaluator`
    of whole volumes by sliding window, of `split` (of cross-validation fold
    `fold`'s cases, if given); `compiled` ends with the jitted eval and predict
    steps (`train.compile_steps`' result, or a `Run`'s pair)."""
    eval_step, predict_step = compiled[-2:]
    window = window_options(config)
    pathology = pathology_options(config, evaluation=True)
    if window is None:
        return Evaluator(task, eval_step, data_dir, split, batch_size=config.eval_batch_size,
                         normalization=config.data.normalization, mesh=mesh, pathology=pathology, seed=config.seed,
                         fold=fold)
    return VolumeEvaluator(task, predict_step, data_dir, split, batch_size=config.eval_batch_size,
                           normalization=config.data.normalization, mesh=mesh, window=window, pathology=pathology,
                           seed=config.seed, fold=fold)


def test(task, state, workdir: str, name: str, best_epoch: int | None, evaluator: Evaluator | None,
         fold: int | None = None) -> dict:
    """Evaluates `state` and writes `<name>_metrics.json` (with the
    cross-validation `fold` the run trained on) and the task's figure; without
    an evaluator (a split without examples) says that nothing was tested."""
    summary = {"best_epoch": best_epoch, "fold": fold, "metrics": {}, "patients": []}
    if evaluator is None:
        logging.warning("%s: the split has no examples, so nothing was tested; the best epoch is %s.", name,
                        best_epoch)
        summary["note"] = "the split has no examples: nothing was tested"
    else:
        ev = evaluator(state)
        summary.update(data_dir=evaluator.data_dir, **ev.summary())
        logging.info("%s on %s: %s", name, ev.split, ", ".join(f"{k}={v:.4f}" for k, v in ev.metrics.items()))
        if jax.process_index() == 0:
            task.figure(ev.patients, ev.volumes, ev.images,
                        os.path.join(workdir, "figures", f"{name}_{task.figure_name}.png"),
                        channel_label=f"channel {ev.display_channel}")
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, f"{name}_metrics.json"), summary)
    return summary


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, data_dir: str, split: str) -> dict:
    """Restores a workdir's best checkpoint and evaluates it on a split of any prepared folder."""
    workdir, mesh = os.path.abspath(workdir), parallel.make_mesh()
    config = auto_config.apply_plans(config)
    # The run's own folder is seen through its fold, so --split=val is the fold's validation cases.
    fold = config.data.get("fold") if os.path.abspath(data_dir) == os.path.abspath(config.data.data_dir) else None
    manifest = pipeline.read_manifest(data_dir, fold=fold)
    validate_config(config, manifest, num_devices=mesh.size, mode="evaluate")
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir}: no split {split!r}; the manifest has {', '.join(manifest['splits'])}")
    if not os.path.exists(os.path.join(workdir, TRAIN_MANIFEST)):
        raise ConfigError(f"{workdir}: no {TRAIN_MANIFEST}, so no training run finished an epoch here; "
                          "train first with --mode=train")
    trained_manifest = pipeline.read_manifest(workdir, TRAIN_MANIFEST)
    trained, shape = input_shape(config, trained_manifest), input_shape(config, manifest)
    if len(shape) != len(trained) or shape[-1] != trained[-1]:
        raise DataError(f"{data_dir}: images {shape} do not match the {trained} the run trained on; "
                        "prepare the data with the same channels and layout")
    if config.model.bottleneck == "transformer" and shape != trained:
        raise DataError(f"{data_dir}: images {shape} differ from the {trained} the run trained on, and the "
                        "transformer's position embeddings fit one size only; prepare the data at that size")
    opened = Run.open(workdir, mesh, config=config, manifest=trained_manifest)
    evaluator = make_evaluator(config, opened.task, (opened.eval_step, opened.predict_step), mesh, data_dir, split,
                               fold) if manifest["splits"][split]["num_examples"] else None
    name = f"evaluate_{os.path.basename(os.path.normpath(data_dir))}_{split}"
    return test(opened.task, opened.state, workdir, name + ("_pathology" if config.data.get("eval_pathology") else ""),
                opened.epoch, evaluator, fold)
