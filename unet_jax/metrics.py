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

from unet_jax import losses

IOU_SMOOTH = 1e-6


# ---------------------------------------------------------------------------
# Per-example statistics (inside jit)
# ---------------------------------------------------------------------------

def predict(logits: jnp.ndarray, task: str = "segmentation", threshold: float = 0.5) -> jnp.ndarray:
    """What the model predicts: for segmentation the labels [B, *spatial] (uint8,
    a quarter of the bytes of int32 to gather on the host every evaluation
    batch; one channel: `sigmoid(logits) > threshold`, C <= 256 channels: the
    argmax), for regression the outputs themselves [B, *spatial, C]."""
    if task == "regression":
        return logits
    if logits.shape[-1] > 256:
        raise ValueError(f"{logits.shape[-1]} output classes do not fit uint8 labels; use at most 256")
    if logits.shape[-1] > 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    # Compare logits with logit(threshold): sigmoid saturates to 1.0 in float32.
    log_odds = jnp.log(threshold) - jnp.log1p(-threshold)
    return (logits[..., 0] > log_odds).astype(jnp.uint8)


def overlap_stats(logits: jnp.ndarray, targets: jnp.ndarray,
                  threshold: float = 0.5) -> dict[str, jnp.ndarray]:
    """Per-example overlap of the predicted labels (`predict`) with the target
    labels [B, *spatial, 1], over the foreground classes (1 for a one-channel
    sigmoid output, 1..C-1 for a C-channel softmax).

    Returns float32 [B] arrays `intersection`, `pred_sum`, `target_sum`, `dice`
    and `iou`, summed over every spatial axis (2-D or 3-D alike) and over the
    foreground classes: with several classes the scores are micro-averaged
    (a voxel counts once per class it is predicted or labelled as).

    Conventions: per-image Dice = 2I / (P + T), and 1 when P + T = 0 (empty
    prediction on an empty mask); a non-empty prediction on an empty mask scores 0.
    Per-image IoU = (I + 1e-6) / (U + 1e-6) with U = P + T - I, the smoothing of
    the published LGG numbers, so empty on empty scores 1 and a non-empty
    prediction on an empty mask scores about 0.
    """
    labels = predict(logits, "segmentation", threshold)
    target_labels = jnp.round(targets[..., 0]).astype(jnp.int32)
    classes = jnp.arange(1, max(logits.shape[-1], 2))
    pred = (labels[..., None] == classes).astype(jnp.float32)
    target = (target_labels[..., None] == classes).astype(jnp.float32)
    axes = tuple(range(1, pred.ndim))
    intersection = jnp.sum(pred * target, axis=axes)
    pred_sum = jnp.sum(pred, axis=axes)
    target_sum = jnp.sum(target, axis=axes)
    total = pred_sum + target_sum
    dice = jnp.where(total > 0, 2.0 * intersection / jnp.maximum(total, 1.0), 1.0)
    iou = (intersection + IOU_SMOOTH) / (total - intersection + IOU_SMOOTH)
    return dict(intersection=intersection, pred_sum=pred_sum, target_sum=target_sum,
                dice=dice, iou=iou)


def regression_stats(outputs: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """Per-example float32 [B] errors of a regression output against its targets.

    `mae` and `mse` are means over the example's elements. `min_sum` and
    `max_sum` are sums of min(y, t) and max(y, t) with the output clipped at 0,
    and `jaccard` their ratio, the grey-level Jaccard of document 000
    (1 when both images are all zero).
    """
    outputs, t = losses.regression_pair(outputs, targets)
    y = jnp.maximum(outputs, 0.0)
    error = outputs - t
    axes = tuple(range(1, y.ndim))
    min_sum = jnp.sum(jnp.minimum(y, t), axis=axes)
    max_sum = jnp.sum(jnp.maximum(y, t), axis=axes)
    return dict(mae=jnp.mean(jnp.abs(error), axis=axes), mse=jnp.mean(jnp.square(error), axis=axes),
                min_sum=min_sum, max_sum=max_sum,
                jaccard=jnp.where(max_sum > 0, min_sum / jnp.maximum(max_sum, 1e-12), 1.0))


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
    `overlap_stats` over valid examples (NaN if there are none).
    """

    loss: clu_metrics.Average.from_fun(_batch_loss)
    dice: DatasetDice
    iou: DatasetIoU
    dice_per_image: clu_metrics.Average.from_output("dice")
    iou_per_image: clu_metrics.Average.from_output("iou")


@flax.struct.dataclass
class SoftJaccard(clu_metrics.Metric):
    """Dataset-level grey-level Jaccard sum(min(y, t)) / sum(max(y, t)) over the
    valid examples (outputs clipped at 0); 1.0 when everything is zero."""

    min_sum: jnp.ndarray
    max_sum: jnp.ndarray

    @classmethod
    def empty(cls):
        zero = jnp.array(0.0, jnp.float32)
        return cls(min_sum=zero, max_sum=zero)

    @classmethod
    def from_model_output(cls, min_sum: jnp.ndarray, max_sum: jnp.ndarray,
                          mask: jnp.ndarray | None = None, **_):
        keep = jnp.ones_like(min_sum) if mask is None else mask.astype(jnp.float32)
        return cls(min_sum=jnp.sum(keep * min_sum), max_sum=jnp.sum(keep * max_sum))

    def merge(self, other):
        return jax.tree.map(jnp.add, self, other)

    def compute(self):
        return jnp.where(self.max_sum > 0, self.min_sum / jnp.maximum(self.max_sum, 1e-12), 1.0)


@flax.struct.dataclass
class RootMeanSquare(clu_metrics.Average.from_output("mse")):
    """Root of the mean squared error over valid examples (examples have equal sizes)."""

    def compute(self):
        return jnp.sqrt(super().compute())


@flax.struct.dataclass
class RegressionMetrics(clu_metrics.Collection):
    """Evaluation metrics of a regression head; `mask` excludes padding examples.

    `loss` as in `SegmentationMetrics`; `mae` and `rmse` over all elements of
    valid examples; `soft_jaccard` dataset-level (`SoftJaccard`) and
    `soft_jaccard_per_image` the mean of per-example scores of `regression_stats`.
    """

    loss: clu_metrics.Average.from_fun(_batch_loss)
    mae: clu_metrics.Average.from_output("mae")
    rmse: RootMeanSquare
    soft_jaccard: SoftJaccard
    soft_jaccard_per_image: clu_metrics.Average.from_output("jaccard")


COLLECTIONS = {"segmentation": SegmentationMetrics, "regression": RegressionMetrics}


def metric_names(task: str) -> list[str]:
    """Names of the metrics a task's collection computes, in order."""
    return list(COLLECTIONS[task].__annotations__)


def empty_metrics(task: str = "segmentation") -> SegmentationMetrics | RegressionMetrics:
    return COLLECTIONS[task].empty()


def compute_metrics(logits: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray,
                    loss: jnp.ndarray, task: str = "segmentation") -> SegmentationMetrics | RegressionMetrics:
    """The task's metric collection for one batch; jit-able, merge batches with `.merge`."""
    if task == "regression":
        stats = regression_stats(logits, targets)
    else:
        stats = overlap_stats(logits, targets)
    return COLLECTIONS[task].single_from_model_output(loss=loss, mask=valid, **stats)


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
    """Collects per-slice label maps on the host and scores them per patient.

    Per-patient 3-D Dice stacks each patient's slices in slice order into one
    volume, computes one Dice per foreground class (1..num_classes-1) and takes
    their mean (a patient's class absent from both mask and prediction scores
    1), then averages over patients.
    """

    def __init__(self, num_classes: int = 2):
        self.num_classes = max(num_classes, 2)
        self._slices: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)

    def add(self, pred: Any, target: Any, patient_index: Any, slice: Any, valid: Any) -> None:
        """Adds one batch: label maps `pred` and `target` [B, *spatial] (bool or
        integer), and the batch's `patient_index`, `slice` and `valid` [B];
        invalid rows are dropped."""
        pred, target = np.asarray(pred).astype(np.uint8), np.asarray(target).astype(np.uint8)
        patient_index, slice_number = np.asarray(patient_index), np.asarray(slice)
        for row in np.flatnonzero(np.asarray(valid)):
            self._slices[int(patient_index[row])].append(
                (int(slice_number[row]), pred[row], target[row]))

    def volumes(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`{patient_index: (pred, target, slice_numbers)}`, uint8 label slices
        stacked along a new first axis in slice order (a stack of 2-D slices is
        [S, H, W])."""
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
        `tumor_voxels` and `pred_voxels` (foreground, any class), `dice_3d`, and
        `dice_3d_lcc` (keeping only the largest connected component of each
        predicted class); with more than one foreground class also
        `dice_3d_class<k>` per class."""
        rows = []
        classes = range(1, self.num_classes)
        for patient, (pred, target, numbers) in self.volumes().items():
            per_class = [dice_score(pred == k, target == k) for k in classes]
            lcc = [dice_score(largest_connected_component(pred == k), target == k) for k in classes]
            row = dict(
                patient_index=patient,
                patient=str(patient) if patient_names is None else patient_names[patient],
                num_slices=len(numbers),
                tumor_voxels=int(np.count_nonzero(target)),
                pred_voxels=int(np.count_nonzero(pred)),
                dice_3d=float(np.mean(per_class)),
                dice_3d_lcc=float(np.mean(lcc)),
            )
            if len(per_class) > 1:
                row.update({f"dice_3d_class{k}": d for k, d in zip(classes, per_class)})
            rows.append(row)
        return rows


def mean_over_patients(table: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over the rows of `VolumeAccumulator.patient_table` of `dice_3d` and
    `dice_3d_lcc` (NaN if there are no patients)."""
    return {key: float(np.mean([row[key] for row in table])) if table else float("nan")
            for key in ("dice_3d", "dice_3d_lcc")}
