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
    """What one pass over a split produced."""

    split: str
    metrics: dict[str, float]      # per-slice (dataset and per-image) and per-patient scores
    patients: list[dict]           # one row per patient, see VolumeAccumulator.patient_table
    volumes: metrics_lib.VolumeAccumulator
    images: dict[int, np.ndarray]  # patient_index -> display channel [S, H, W], slice order
    display_channel: int           # which input channel `images` holds (1: FLAIR in LGG data)

    def summary(self) -> dict[str, Any]:
        return {"split": self.split, "metrics": self.metrics, "patients": self.patients}


def evaluate_split(eval_step: Callable, state, data_dir: str, split: str, *, batch_size: int,
                   normalization: str, mesh, display_channel: int = 1) -> Evaluation:
    """Runs the jitted `eval_step` over every example of `split` once.

    `batch_size` is global; padding examples of the last batch are excluded
    from every metric. `display_channel` of each image is kept for figures.
    """
    manifest = pipeline.read_manifest(data_dir)
    names = [p["patient"] for p in manifest["splits"][split]["patients"]]
    local_batch = parallel.check_batch_size(batch_size, mesh, name="eval_batch_size")
    ds = pipeline.eval_dataset(data_dir, split, batch_size=local_batch,
                               normalization=normalization, shard_index=jax.process_index(),
                               shard_count=jax.process_count())
    totals = None
    volumes = metrics_lib.VolumeAccumulator()
    channels: dict[int, dict[int, np.ndarray]] = collections.defaultdict(dict)
    display_channel = min(display_channel, manifest["image_shape"][-1] - 1)
    for batch in ds:
        batch_metrics, preds = eval_step(state, parallel.to_global(batch, mesh))
        totals = batch_metrics if totals is None else totals.merge(batch_metrics)
        # Every process gathers every prediction: per-patient volumes need them all.
        preds, mask, pidx, sl, valid, image = (np.asarray(x) for x in multihost_utils.process_allgather(
            (preds, batch["mask"], batch["patient_index"], batch["slice"], batch["valid"],
             batch["image"][..., display_channel]), tiled=True))
        volumes.add(preds, mask[..., 0] > 0.5, pidx, sl, valid)
        for i in np.flatnonzero(valid):
            channels[int(pidx[i])][int(sl[i])] = image[i].astype(np.float16)
    # One table (and one connected-component pass) per evaluation.
    table = volumes.patient_table(names)
    result = {k: float(v) for k, v in totals.compute().items()}
    result.update(metrics_lib.mean_over_patients(table))
    images = {p: np.stack([by_slice[n] for n in sorted(by_slice)]) for p, by_slice in channels.items()}
    return Evaluation(split, result, table, volumes, images, display_channel)


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
        area = target.reshape(len(slices), -1).sum(1) + pred.reshape(len(slices), -1).sum(1)
        picks = sorted(np.argsort(-area, kind="stable")[:rows_per_patient])
        for i in picks:
            images.append(ev.images[p][i].astype(np.float32)[..., None])
            targets.append(target[i])
            preds.append(pred[i])
            titles.append(f"{row.get('patient', p)} slice {slices[i]}  "
                          f"Dice {metrics_lib.dice_score(pred[i], target[i]):.2f} "
                          f"(patient {row['dice_3d']:.2f})")
    report.plot_prediction_grid(np.stack(images), np.stack(targets), np.stack(preds), path,
                                titles=titles, channel=0, max_rows=len(images),
                                channel_label=f"channel {ev.display_channel}")


def write_json(path: str, obj: Any) -> None:
    """JSON written under a temporary name, then renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)
