"""Evaluate a model on a prepared split: per-slice metrics, per-patient 3-D
Dice, the patient table, and the slices behind the figures; and test a
workdir's best checkpoint on any prepared folder (`--mode=evaluate`)."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from unet_jax import metrics as metrics_lib
from unet_jax import parallel, report
from unet_jax.data import pipeline


@dataclasses.dataclass
class Evaluation:
    """What one pass over a split produced, slice by slice (volume records are
    cut back into their slices)."""

    split: str
    metrics: dict[str, float]      # the task's metrics, plus per-patient scores for segmentation
    patients: list[dict]           # segmentation: one row per patient (VolumeAccumulator.patient_table)
    volumes: metrics_lib.VolumeAccumulator  # segmentation: predicted and true labels per patient
    images: dict[int, np.ndarray]  # patient_index -> display channel [S, H, W], slice order
    display_channel: int           # which input channel `images` holds (1: FLAIR in LGG data)
    # regression: patient_index -> (output, target) of the first channel [S, H, W], slice order
    outputs: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

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


def evaluate_split(eval_step: Callable, state, data_dir: str, split: str, *, batch_size: int,
                   normalization: str, mesh, task: str = "segmentation", num_classes: int = 2,
                   display_channel: int = 1) -> Evaluation:
    """Runs the jitted `eval_step` over every example of `split` once.

    `batch_size` is global; padding examples of the last batch are excluded
    from every metric. Segmentation adds per-patient 3-D Dice over the
    foreground classes of `num_classes`; `display_channel` of each image is
    kept for figures.
    """
    manifest = pipeline.read_manifest(data_dir)
    names = [p["patient"] for p in manifest["splits"][split]["patients"]]
    local_batch = parallel.check_batch_size(batch_size, mesh, name="eval_batch_size")
    ds = pipeline.eval_dataset(data_dir, split, batch_size=local_batch,
                               normalization=normalization, shard_index=jax.process_index(),
                               shard_count=jax.process_count())
    totals = None
    volumes = metrics_lib.VolumeAccumulator(num_classes)
    channels: dict[int, dict[int, np.ndarray]] = collections.defaultdict(dict)
    outputs: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = collections.defaultdict(dict)
    display_channel = min(display_channel, manifest["image_shape"][-1] - 1)
    for batch in ds:
        batch_metrics, preds = eval_step(state, parallel.to_global(batch, mesh))
        totals = batch_metrics if totals is None else totals.merge(batch_metrics)
        # Every process gathers every prediction: per-patient volumes need them all.
        keys = ["patient_index", "slice", "valid"] + (["slices"] if "slices" in batch else [])
        host = {k: np.asarray(v) for k, v in multihost_utils.process_allgather(
            {"pred": preds, "target": batch["mask"][..., 0] if task == "segmentation" else batch["mask"],
             "image": batch["image"][..., display_channel], **{k: batch[k] for k in keys}},
            tiled=True).items()}
        if "slices" in host:
            host = unstack_depth(host, host.pop("slices"))
        valid = np.flatnonzero(host["valid"])
        if task == "segmentation":
            volumes.add(host["pred"], host["target"], host["patient_index"], host["slice"], host["valid"])
        for i in valid:
            p, n = int(host["patient_index"][i]), int(host["slice"][i])
            channels[p][n] = host["image"][i].astype(np.float16)
            if task == "regression":
                outputs[p][n] = (host["pred"][i, ..., 0].astype(np.float16),
                                 host["target"][i, ..., 0].astype(np.float16))
    result = {k: float(v) for k, v in totals.compute().items()}
    table = []
    if task == "segmentation":
        # One table (and one connected-component pass) per evaluation.
        table = volumes.patient_table(names)
        result.update(metrics_lib.mean_over_patients(table))
    images = {p: np.stack([by_slice[n] for n in sorted(by_slice)]) for p, by_slice in channels.items()}
    stacked = {p: tuple(np.stack([by_slice[n][j] for n in sorted(by_slice)]) for j in (0, 1))
               for p, by_slice in outputs.items()}
    return Evaluation(split, result, table, volumes, images, display_channel, stacked)


def slices_to_show(pred: np.ndarray, target: np.ndarray, k: int) -> list[int]:
    """Indices (in slice order) of the k slices of a [S, H, W] label volume with the
    most foreground in mask plus prediction; ties go to the earlier slice."""
    # Counted as int64: label maps are uint8, and a negated unsigned sum wraps around.
    area = np.count_nonzero(target.reshape(len(target), -1), axis=1).astype(np.int64) \
        + np.count_nonzero(pred.reshape(len(pred), -1), axis=1)
    return sorted(np.argsort(-area, kind="stable")[:k].tolist())


def best_and_worst_figure(ev: Evaluation, path: str, rows_per_patient: int = 4) -> None:
    """A grid of slices (image, ground truth, overlay) from the best and the worst
    patient by 3-D Dice, preferring slices with tumour in mask or prediction."""
    table = sorted(ev.patients, key=lambda r: r["dice_3d"])
    chosen = [table[-1], table[0]] if len(table) > 1 else table
    images, targets, preds, titles = [], [], [], []
    vols = ev.volumes.volumes()
    for row in chosen:
        p = row["patient_index"]
        pred, target, slices = vols[p]
        for i in slices_to_show(pred, target, rows_per_patient):
            images.append(ev.images[p][i].astype(np.float32)[..., None])
            targets.append(target[i])
            preds.append(pred[i])
            titles.append(f"{row.get('patient', p)} slice {slices[i]}  "
                          f"Dice {metrics_lib.dice_score(pred[i], target[i]):.2f} "
                          f"(patient {row['dice_3d']:.2f})")
    report.plot_prediction_grid(np.stack(images), np.stack(targets), np.stack(preds), path,
                                titles=titles, channel=0, max_rows=len(images),
                                channel_label=f"channel {ev.display_channel}")


def largest_target_slices(ev: Evaluation, n: int) -> list[tuple[int, int]]:
    """(patient_index, slice index) of the n regression slices of largest target mass."""
    mass = [(float(target[i].astype(np.float32).sum()), p, i)
            for p, (_, target) in ev.outputs.items() for i in range(len(target))]
    return [(p, i) for _, p, i in sorted(mass, reverse=True)[:n]]


def regression_figure(ev: Evaluation, path: str, rows: int = 6) -> None:
    """The slices of largest target mass (input, target, output, error), titled
    with their grey-level Jaccard."""
    images, targets, outputs, titles = [], [], [], []
    for p, i in largest_target_slices(ev, rows):
        output, target = (x[i].astype(np.float32) for x in ev.outputs[p])
        images.append(ev.images[p][i].astype(np.float32))
        targets.append(target)
        outputs.append(output)
        jaccard = float(metrics_lib.regression_stats(output[None], target[None])["jaccard"][0])
        titles.append(f"patient {p}, slice {i + 1} of {len(ev.outputs[p][1])}  Jaccard {jaccard:.2f}")
    report.plot_regression_grid(np.stack(images), np.stack(targets), np.stack(outputs), path, titles=titles,
                                image_label=f"image (channel {ev.display_channel})")


def write_json(path: str, obj: Any) -> None:
    """JSON written under a temporary name, then renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)
