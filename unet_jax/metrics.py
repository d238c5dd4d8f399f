"""Segmentation metrics: per-example overlap statistics inside jit, aggregation
through `clu.metrics`, and per-patient 3-D scores assembled on the host.

Published numbers differ in how they treat empty masks, smoothing and whether
they average per slice, per patient or over the whole dataset, so each metric
states its convention in its docstring.
"""

# No `from __future__ import annotations`: clu's Collection reads its metric
# classes from the evaluated `__annotations__`.
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from scipy import ndimage

IOU_SMOOTH = 1e-6


# ---------------------------------------------------------------------------
# Per-example statistics (inside jit)
# ---------------------------------------------------------------------------

def binary_stats(logits: jnp.ndarray, targets: jnp.ndarray,
                 threshold: float = 0.5) -> dict[str, jnp.ndarray]:
    """Per-example overlap of hard predictions `sigmoid(logits) > threshold`.

    Returns float32 [B] arrays `intersection`, `pred_sum`, `target_sum`, `dice`
    and `iou`, summed over every axis but the first (2-D or 3-D alike).

    Conventions: per-image Dice = 2I / (P + T), and 1 when P + T = 0 (empty
    prediction on an empty mask); a non-empty prediction on an empty mask scores 0.
    Per-image IoU = (I + 1e-6) / (U + 1e-6) with U = P + T - I, the smoothing of
    the published LGG numbers, so empty on empty scores 1 and a non-empty
    prediction on an empty mask scores about 0.
    """
    # Compare logits with logit(threshold): sigmoid saturates to 1.0 in float32.
    log_odds = jnp.log(threshold) - jnp.log1p(-threshold)
    pred = (logits > log_odds).astype(jnp.float32)
    target = (targets > 0.5).astype(jnp.float32)
    axes = tuple(range(1, pred.ndim))
    intersection = jnp.sum(pred * target, axis=axes)
    pred_sum = jnp.sum(pred, axis=axes)
    target_sum = jnp.sum(target, axis=axes)
    total = pred_sum + target_sum
    dice = jnp.where(total > 0, 2.0 * intersection / jnp.maximum(total, 1.0), 1.0)
    iou = (intersection + IOU_SMOOTH) / (total - intersection + IOU_SMOOTH)
    return dict(intersection=intersection, pred_sum=pred_sum, target_sum=target_sum,
                dice=dice, iou=iou)


# ---------------------------------------------------------------------------
# clu metrics
# ---------------------------------------------------------------------------

@flax.struct.dataclass
class _OverlapSums(clu_metrics.Metric):
    """Sums of intersection, prediction and target over all valid examples."""

    intersection: jnp.ndarray
    pred_sum: jnp.ndarray
    target_sum: jnp.ndarray

    @classmethod
    def empty(cls):
        zero = jnp.array(0.0, jnp.float32)
        return cls(intersection=zero, pred_sum=zero, target_sum=zero)

    @classmethod
    def from_model_output(cls, intersection: jnp.ndarray, pred_sum: jnp.ndarray,
                          target_sum: jnp.ndarray, mask: jnp.ndarray | None = None, **_):
        keep = jnp.ones_like(intersection) if mask is None else mask.astype(jnp.float32)
        return cls(intersection=jnp.sum(keep * intersection),
                   pred_sum=jnp.sum(keep * pred_sum),
                   target_sum=jnp.sum(keep * target_sum))

    def merge(self, other):
        return jax.tree.map(jnp.add, self, other)


@flax.struct.dataclass
class DatasetDice(_OverlapSums):
    """Dataset-level (micro) Dice 2 sum(I) / (sum(P) + sum(T)) over valid examples.

    Large tumours weigh more than small ones, and empty slices count only through
    their false positives. 1.0 when every prediction and mask is empty.
    """

    def compute(self):
        total = self.pred_sum + self.target_sum
        return jnp.where(total > 0, 2.0 * self.intersection / jnp.maximum(total, 1.0), 1.0)


@flax.struct.dataclass
class DatasetIoU(_OverlapSums):
    """Dataset-level (micro) IoU sum(I) / (sum(P) + sum(T) - sum(I)), unsmoothed.

    1.0 when every prediction and mask is empty.
    """

    def compute(self):
        union = self.pred_sum + self.target_sum - self.intersection
        return jnp.where(union > 0, self.intersection / jnp.maximum(union, 1.0), 1.0)


def _batch_loss(loss: jnp.ndarray, mask: jnp.ndarray, **_) -> dict[str, jnp.ndarray]:
    # clu's masks need a leading axis, so the scalar loss becomes a one-element
    # batch that counts unless every example in it is padding.
    return dict(values=jnp.reshape(loss, (1,)), mask=jnp.reshape(jnp.any(mask), (1,)))


@flax.struct.dataclass
class SegmentationMetrics(clu_metrics.Collection):
    """Evaluation metrics; `mask` (the batch's `valid`) excludes padding examples.

    `loss` is the mean of per-batch losses over batches with a valid example;
    `dice` and `iou` are dataset-level (`DatasetDice`, `DatasetIoU`);
    `dice_per_image` and `iou_per_image` are means of the per-example scores of
    `binary_stats` over valid examples (NaN if there are none).
    """

    loss: clu_metrics.Average.from_fun(_batch_loss)
    dice: DatasetDice
    iou: DatasetIoU
    dice_per_image: clu_metrics.Average.from_output("dice")
    iou_per_image: clu_metrics.Average.from_output("iou")


def compute_metrics(logits: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray,
                    loss: jnp.ndarray) -> SegmentationMetrics:
    """`SegmentationMetrics` of one batch; jit-able, merge batches with `.merge`."""
    stats = binary_stats(logits, targets)
    return SegmentationMetrics.single_from_model_output(loss=loss, mask=valid, **stats)


# ---------------------------------------------------------------------------
# Per-patient volumes (host, NumPy)
# ---------------------------------------------------------------------------

def largest_connected_component(volume: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean array, as a boolean array.

    Full connectivity (26 neighbours in 3-D, 8 in 2-D); ties go to the component
    with the lowest label; an empty input stays empty.
    """
    volume = np.asarray(volume, bool)
    structure = np.ones((3,) * volume.ndim, bool)
    labels, num = ndimage.label(volume, structure=structure)
    if num == 0:
        return np.zeros_like(volume)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice 2|P & T| / (|P| + |T|) of two boolean arrays; 1.0 when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


class VolumeAccumulator:
    """Collects per-slice predictions on the host and scores them per patient.

    Per-patient 3-D Dice stacks each patient's slices in slice order into one
    volume, computes one Dice per patient, and averages over patients; a patient
    with an empty mask and an empty prediction scores 1.
    """

    def __init__(self):
        self._slices: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)

    def add(self, pred: Any, target: Any, patient_index: Any, slice: Any, valid: Any) -> None:
        """Adds one batch: binary `pred` and `target` [B, *spatial], and the
        batch's `patient_index`, `slice` and `valid` [B]; invalid rows are dropped."""
        pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
        patient_index, slice_number = np.asarray(patient_index), np.asarray(slice)
        for row in np.flatnonzero(np.asarray(valid)):
            self._slices[int(patient_index[row])].append(
                (int(slice_number[row]), pred[row], target[row]))

    def volumes(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`{patient_index: (pred, target, slice_numbers)}`, slices stacked along a
        new first axis in slice order (a stack of 2-D slices is [S, H, W])."""
        out = {}
        for patient, items in sorted(self._slices.items()):
            items = sorted(items, key=lambda item: item[0])
            numbers = np.array([number for number, _, _ in items])
            if np.any(np.diff(numbers) == 0):
                raise ValueError(f"patient {patient} has a slice number more than once")
            out[patient] = (np.stack([p for _, p, _ in items]),
                            np.stack([t for _, _, t in items]), numbers)
        return out

    def patient_table(self, patient_names: Sequence[str] | Mapping[int, str] | None = None
                      ) -> list[dict[str, Any]]:
        """One row per patient: `patient_index`, `patient` (its name from
        `patient_names[patient_index]`, else the index as a string), `num_slices`,
        `tumor_voxels`, `pred_voxels`, `dice_3d`, and `dice_3d_lcc` (after keeping
        only the largest connected component of the predicted volume)."""
        rows = []
        for patient, (pred, target, numbers) in self.volumes().items():
            rows.append(dict(
                patient_index=patient,
                patient=str(patient) if patient_names is None else patient_names[patient],
                num_slices=len(numbers),
                tumor_voxels=int(target.sum()),
                pred_voxels=int(pred.sum()),
                dice_3d=dice_score(pred, target),
                dice_3d_lcc=dice_score(largest_connected_component(pred), target),
            ))
        return rows


def mean_over_patients(table: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over the rows of `VolumeAccumulator.patient_table` of `dice_3d` and
    `dice_3d_lcc` (NaN if there are no patients)."""
    return {key: float(np.mean([row[key] for row in table])) if table else float("nan")
            for key in ("dice_3d", "dice_3d_lcc")}
