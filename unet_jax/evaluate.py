"""Evaluate a model on a prepared split: the task's metrics over every example,
per-patient tables on reassembled volumes, and the slices behind the figures.

An `Evaluator` (records as the model sees them: slices, or fixed-size
volumes) or a `VolumeEvaluator` (whole volumes of any size, by sliding window)
is built once per split and run (validation every epoch, the test once): the
dataset and the jitted step are made once, not per call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from unet_jax import inference, parallel
from unet_jax import metrics as metrics_lib
from unet_jax.data import pipeline
from unet_jax.data.pathology import PathologyOptions
from unet_jax.errors import DataError
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
