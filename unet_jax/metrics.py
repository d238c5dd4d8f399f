"""Segmentation and regression metrics: per-example statistics inside jit,
aggregation through `clu.metrics`, and per-patient (per-case) scores
assembled on the host.

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

def predict_labels(logits: jnp.ndarray, threshold: float = 0.5) -> jnp.ndarray:
    """Segmentation labels [B, *spatial] as uint8 (a quarter of the bytes of int32
    to gather on the host every evaluation batch): with one channel
    `sigmoid(logits) > threshold`, with C <= 256 channels the argmax."""
    if logits.shape[-1] > 256:
        raise ValueError(f"{logits.shape[-1]} output classes do not fit uint8 labels; use at most 256")
    if logits.shape[-1] > 1:
        return jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    # Compare logits with logit(threshold): sigmoid saturates to 1.0 in float32.
    log_odds = jnp.log(threshold) - jnp.log1p(-threshold)
    return (logits[..., 0] > log_odds).astype(jnp.uint8)


def overlap_stats(logits: jnp.ndarray, targets: jnp.ndarray,
                  threshold: float = 0.5) -> dict[str, jnp.ndarray]:
    """Per-example overlap of the predicted labels (`predict_labels`) with the target
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
    return label_overlap_stats(predict_labels(logits, threshold), jnp.round(targets[..., 0]),
                               max(logits.shape[-1], 2))


def label_overlap_stats(labels: jnp.ndarray, target_labels: jnp.ndarray, num_classes: int) -> dict[str, jnp.ndarray]:
    """`overlap_stats` of predicted labels [B, *spatial] against target labels
    [B, *spatial] (whole volumes from a sliding window, say), over classes
    1..num_classes-1, with the same conventions."""
    target_labels = jnp.asarray(target_labels).astype(jnp.int32)
    classes = jnp.arange(1, num_classes)
    pred = (jnp.asarray(labels)[..., None] == classes).astype(jnp.float32)
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


def _loss_per_valid_example(loss: jnp.ndarray, mask: jnp.ndarray, **_) -> dict[str, jnp.ndarray]:
    # The batch's loss counts once per valid example, so a padded last
    # evaluation batch weighs what it holds, not as much as a full one.
    return dict(values=jnp.broadcast_to(loss, mask.shape), mask=mask)


@flax.struct.dataclass
class SegmentationMetrics(clu_metrics.Collection):
    """Evaluation metrics; `mask` (the batch's `valid`) excludes padding examples.

    `loss` is the mean of per-batch losses weighted by their valid examples;
    `dice` and `iou` are dataset-level (`DatasetDice`, `DatasetIoU`);
    `dice_per_image` and `iou_per_image` are means of the per-example scores of
    `overlap_stats` over valid examples (NaN if there are none).
    """

    loss: clu_metrics.Average.from_fun(_loss_per_valid_example)
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

    loss: clu_metrics.Average.from_fun(_loss_per_valid_example)
    mae: clu_metrics.Average.from_output("mae")
    rmse: RootMeanSquare
    soft_jaccard: SoftJaccard
    soft_jaccard_per_image: clu_metrics.Average.from_output("jaccard")


# ---------------------------------------------------------------------------
# Per-patient volumes (host, NumPy)
# ---------------------------------------------------------------------------

def connected_components(volume: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 1..n of the connected components of a boolean array with full
    connectivity (26 neighbours in 3-D, 8 in 2-D), and n."""
    return ndimage.label(volume, structure=np.ones((3,) * volume.ndim, bool))


def largest_connected_component(volume: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean array, as a boolean array.

    Full connectivity (26 neighbours in 3-D, 8 in 2-D); ties go to the component
    with the lowest label; an empty input stays empty.
    """
    volume = np.asarray(volume, bool)
    labels, num = connected_components(volume)
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


def grey_level_jaccard(output: np.ndarray, target: np.ndarray) -> float:
    """sum(min(y, t)) / sum(max(y, t)) over every element, the output clipped at 0
    (document 000's soft Jaccard); 1.0 when both are all zero."""
    y, t = np.maximum(np.asarray(output, np.float64), 0.0), np.asarray(target, np.float64)
    top = np.maximum(y, t).sum()
    return float(np.minimum(y, t).sum() / top) if top > 0 else 1.0


def psnr(output: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of a whole case, 10 log10(R**2 / mse), with
    R = target.max() - target.min() of that case (skimage's
    `peak_signal_noise_ratio(target, output, data_range=R)`); published numbers
    differ on R (a fixed range, the output's) and on per-slice averaging.

    Conventions: +inf when output equals target (mse 0), which makes a mean over
    cases +inf too (`mean_over_patients` skips only NaN), a value that best-
    checkpoint selection ranks worst and JSON files write as null; NaN
    (undefined) when the target is constant and the output is not.
    """
    y, t = np.asarray(output, np.float64), np.asarray(target, np.float64)
    mse = float(np.mean(np.square(y - t)))
    if mse == 0:
        return float("inf")
    data_range = float(t.max() - t.min())
    return 10.0 * float(np.log10(data_range**2 / mse)) if data_range > 0 else float("nan")


SSIM_WINDOW = 7


def mean_ssim(output: np.ndarray, target: np.ndarray) -> float:
    """Mean structural similarity of a case's stack of slices [S, H, W] (a 2-D
    image is one slice; a 3-D volume its Z slices [Z, X, Y], as `evaluate.as_slices`
    gives them): the SSIM of each slice over its last two axes, as
    skimage's `structural_similarity(target_slice, output_slice, data_range=R,
    win_size=7, gaussian_weights=False)` computes it (uniform 7x7 window, sample
    covariance N / (N - 1), K1 = 0.01, K2 = 0.03, the mean over the slice cropped
    by 3 pixels on every side), with R = target.max() - target.min() of the whole
    case, averaged over the slices; in float64, one slice at a time.

    Published numbers differ on R (a fixed range, or one per slice), on the window
    (Gaussian 11x11) and on 3-D windows, so compare like with like.
    Conventions: slices under 7 pixels in an axis use the largest odd window that
    fits; NaN (undefined) when a slice is under 3 pixels in an axis or the target
    is constant.
    """
    y, t = np.asarray(output, np.float64), np.asarray(target, np.float64)
    if y.shape != t.shape or y.ndim not in (2, 3):
        raise ValueError(f"expected output and target of one shape [S, H, W] or [H, W], got {y.shape}, {t.shape}")
    y, t = y.reshape(-1, *y.shape[-2:]), t.reshape(-1, *t.shape[-2:])
    side = min(y.shape[1:])
    window = min(SSIM_WINDOW, side - 1 + side % 2)  # the largest odd size that fits
    data_range = float(t.max() - t.min())
    if window < 3 or data_range == 0:
        return float("nan")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cov_norm = window**2 / (window**2 - 1)
    pad = (window - 1) // 2
    crop = (slice(pad, y.shape[1] - pad), slice(pad, y.shape[2] - pad))
    scores = []
    for a, b in zip(y, t):
        mean_a, mean_b, mean_aa, mean_bb, mean_ab = (ndimage.uniform_filter(x, window)
                                                     for x in (a, b, a * a, b * b, a * b))
        var_a, var_b = cov_norm * (mean_aa - mean_a**2), cov_norm * (mean_bb - mean_b**2)
        cov = cov_norm * (mean_ab - mean_a * mean_b)
        ssim = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)
                / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)))
        scores.append(ssim[crop].mean())
    return float(np.mean(scores))


# ---------------------------------------------------------------------------
# Per-case lesion and surface metrics (host, NumPy)
# ---------------------------------------------------------------------------
# Boolean masks of any ndim (2-D or 3-D alike). `spacing` gives the voxel size in
# mm along each axis of the array, in the array's axis order (a stack of 2-D
# slices is [S, H, W], so the slice thickness comes first); None means 1.0 per
# axis, i.e. distances in voxels.

def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    """Voxel sizes [ndim] in mm, 1.0 per axis when None."""
    return np.ones(ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, np.float64), (ndim,))


def iou_score(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU (Jaccard) |P & T| / |P | T| of two boolean arrays, unsmoothed; 1.0 when
    both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    union = int(np.logical_or(pred, target).sum())
    return int(np.logical_and(pred, target).sum()) / union if union else 1.0


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face neighbour (6 in 3-D, 4 in 2-D),
    voxels outside the array counting as background."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, cross, border_value=0)


def _distances(source: np.ndarray, destination: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance in mm from each voxel of `source` to the nearest voxel of
    `destination` (infinite when `destination` is empty), with one EDT."""
    if not destination.any():
        return np.full(int(source.sum()), np.inf)
    return ndimage.distance_transform_edt(~destination, sampling=spacing)[source]


def surface_distances(pred: np.ndarray, target: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from every surface voxel of `pred` to the nearest surface
    voxel of `target`, and from every surface voxel of `target` to `pred`'s.

    A surface voxel is a foreground voxel with at least one background face
    neighbour (6-connectivity in 3-D, 4 in 2-D); voxels outside the array count
    as background, so a mask touching the border has a surface there. Distances
    to an empty mask are infinite; an empty mask has no distances.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    spacing = _spacing(spacing, pred.ndim)
    objects = ndimage.find_objects((pred | target).astype(np.uint8))
    if not objects:
        return np.zeros(0), np.zeros(0)
    # Cropping to the union's bounding box changes nothing: every voxel outside it
    # is background, as the erosion's border_value assumes, and every surface voxel
    # is inside. It makes the two EDTs cheap on large, mostly empty volumes.
    pred_surface, target_surface = _surface(pred[objects[0]]), _surface(target[objects[0]])
    return _distances(pred_surface, target_surface, spacing), _distances(target_surface, pred_surface, spacing)


def _hd95_and_assd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None) -> tuple[float, float]:
    """(hd95, assd), both 0.0 when both masks are empty and both the array's
    diagonal in mm when exactly one is."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() and not target.any():
        return 0.0, 0.0
    if not pred.any() or not target.any():
        diagonal = float(np.sqrt(np.sum(((np.array(pred.shape) - 1) * _spacing(spacing, pred.ndim)) ** 2)))
        return diagonal, diagonal
    to_target, to_pred = surface_distances(pred, target, spacing)
    return (float(max(np.percentile(to_target, 95), np.percentile(to_pred, 95))),
            float(np.mean(np.concatenate([to_target, to_pred]))))


def hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile Hausdorff distance in mm: the larger of the two directed
    95th percentiles (linear interpolation) of `surface_distances`, the WMH
    segmentation challenge's rule (its script takes in-plane contours as the
    surface; here the surface is 3-D, face-connected).

    Conventions: 0.0 when both masks are empty; when exactly one is empty, the worst
    possible value, the length in mm of the array's diagonal
    sqrt(sum(((shape - 1) * spacing) ** 2)), finite so that means over cases and
    best-epoch selection keep working (as BraTS does).
    """
    return _hd95_and_assd(pred, target, spacing)[0]


def assd(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance in mm: the mean over both directed sets
    of `surface_distances` together (each surface voxel counts once).

    Conventions as `hd95`: 0.0 when both masks are empty, the array's diagonal in
    mm when exactly one is.
    """
    return _hd95_and_assd(pred, target, spacing)[1]


def avd(pred: np.ndarray, target: np.ndarray) -> float:
    """Absolute volume difference in percent, 100 |Vp - Vt| / Vt, from voxel counts
    (the voxel volume cancels).

    Conventions: 0.0 when both are empty; NaN (undefined, as in the WMH
    challenge) when the target is empty and the prediction is not, so means over
    cases must skip NaN (`mean_over_patients` does).
    """
    predicted, true = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    if true == 0:
        return 0.0 if predicted == 0 else float("nan")
    return 100.0 * abs(predicted - true) / true


def lesion_detection(pred: np.ndarray, target: np.ndarray) -> dict[str, float | int]:
    """Lesion-wise detection, as the WMH segmentation challenge scores it.

    Lesions are connected components with full connectivity (26 neighbours in
    3-D, 8 in 2-D: lesions touching at a corner are one). A target lesion is
    detected when any predicted voxel overlaps it; `lesion_recall` = detected /
    `num_lesions` (target components), `lesion_precision` = predicted components
    overlapping any target voxel / `num_pred_lesions`, and `lesion_f1` =
    2PR / (P + R).

    Conventions: no target lesions gives recall 1.0, no predicted lesions
    precision 1.0, and P + R = 0 an F1 of 0. So both empty scores 1 throughout;
    an empty prediction on lesions recall 0, precision 1, F1 0; predictions on
    an empty target recall 1, precision 0, F1 0.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    target_labels, num_lesions = connected_components(target)
    pred_labels, num_pred = connected_components(pred)
    overlap = pred & target
    recall = np.unique(target_labels[overlap]).size / num_lesions if num_lesions else 1.0
    precision = np.unique(pred_labels[overlap]).size / num_pred if num_pred else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return dict(lesion_recall=recall, lesion_precision=precision, lesion_f1=f1,
                num_lesions=num_lesions, num_pred_lesions=num_pred)


def _mean_where_defined(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN if there are none."""
    values = np.asarray(values, np.float64)
    defined = values[~np.isnan(values)]
    return float(np.mean(defined)) if defined.size else float("nan")


def case_scores(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None,
                num_classes: int = 2) -> dict[str, float]:
    """Scores of one case's label arrays (integers, 0 background) for each
    foreground class k in 1..num_classes-1 on (pred == k, target == k):
    `dice_3d` (`dice_score`), `iou_3d`, `hd95` and `assd` (mm, or voxels
    without `spacing`), `avd` (percent), `lesion_recall` and `lesion_f1`, each
    with the conventions of its function.

    Returns each score's mean over the classes, skipping the classes where it is
    undefined (NaN, only `avd` on an empty target; NaN if every class is), and
    with more than one foreground class also the per-class scores as
    `<key>_class<k>`.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    per_class = {}
    for k in range(1, max(num_classes, 2)):
        p, t = pred == k, target == k
        distance_95, distance_mean = _hd95_and_assd(p, t, spacing)
        detection = lesion_detection(p, t)
        per_class[k] = dict(dice_3d=dice_score(p, t), iou_3d=iou_score(p, t), hd95=distance_95,
                            assd=distance_mean, avd=avd(p, t), lesion_recall=detection["lesion_recall"],
                            lesion_f1=detection["lesion_f1"])
    scores = {key: _mean_where_defined([s[key] for s in per_class.values()]) for key in per_class[1]}
    if len(per_class) > 1:
        scores.update({f"{key}_class{k}": v for k, s in per_class.items() for key, v in s.items()})
    return scores


class VolumeAccumulator:
    """Collects per-slice predictions, targets and display images on the host
    and stacks them into one volume per patient, in slice order."""

    def __init__(self):
        self._slices: dict[int, list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]] = defaultdict(list)

    def add(self, pred: Any, target: Any, patient_index: Any, slice: Any, valid: Any, image: Any = None) -> None:
        """Adds one batch: `pred` and `target` [B, *spatial, ...] (stored with
        the dtype given), the batch's `patient_index`, `slice` and `valid` [B],
        and optionally `image` [B, H, W] to display; invalid rows are dropped."""
        pred, target = np.asarray(pred), np.asarray(target)
        patient_index, slice_number = np.asarray(patient_index), np.asarray(slice)
        for row in np.flatnonzero(np.asarray(valid)):
            self._slices[int(patient_index[row])].append(
                (int(slice_number[row]), pred[row], target[row], None if image is None else np.asarray(image[row])))

    def volumes(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`{patient_index: (pred, target, slice_numbers)}`, slices stacked along
        a new first axis in slice order (a stack of 2-D slices is [S, H, W])."""
        out = {}
        for patient, items in sorted(self._slices.items()):
            items = sorted(items, key=lambda item: item[0])
            numbers = np.array([item[0] for item in items])
            if np.any(np.diff(numbers) == 0):
                raise ValueError(f"patient {patient} has a slice number more than once")
            out[patient] = (np.stack([item[1] for item in items]), np.stack([item[2] for item in items]), numbers)
        return out

    def images(self) -> dict[int, np.ndarray]:
        """`{patient_index: [S, H, W]}` display images in slice order (patients
        added without images are left out)."""
        return {p: np.stack([item[3] for item in sorted(items, key=lambda item: item[0])])
                for p, items in sorted(self._slices.items()) if items[0][3] is not None}


def _name(patient: int, names: Sequence[str] | Mapping[int, str] | None) -> str:
    return str(patient) if names is None else names[patient]


def segmentation_table(volumes: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int = 2,
                       names: Sequence[str] | Mapping[int, str] | None = None,
                       spacings: Mapping[int, Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """One row per patient of label volumes (`VolumeAccumulator.volumes`):
    `patient_index`, `patient` (its name from `names[patient_index]`, else the
    index as a string), `num_slices`, `tumor_voxels` and `pred_voxels`
    (foreground, any class), `dice_3d_lcc` (the mean over the foreground
    classes of the Dice after keeping only the largest connected component of
    each predicted class; class 1's for one class), and the `case_scores` of
    the volume.

    `spacings[patient_index]` is the voxel size in mm per axis in the volume's
    axis order (slice axis first for stacked 2-D slices); without `spacings`
    distances are in voxels.

    `dice_3d` is the mean of one Dice per foreground class 1..num_classes-1 (a
    class absent from both mask and prediction scores 1); with more than one
    foreground class the per-class scores are added as `dice_3d_class<k>`
    and `dice_3d_lcc_class<k>` (and likewise for the other `case_scores`), so
    post-processing can be chosen per class (`postprocessing.choose`).
    """
    rows = []
    classes = range(1, max(num_classes, 2))
    for patient, (pred, target, numbers) in volumes.items():
        scores = case_scores(pred, target, None if spacings is None else spacings[patient], num_classes)
        lcc = {k: dice_score(largest_connected_component(pred == k), target == k) for k in classes}
        rows.append(dict(
            patient_index=patient,
            patient=_name(patient, names),
            num_slices=len(numbers),
            tumor_voxels=int(np.count_nonzero(target)),
            pred_voxels=int(np.count_nonzero(pred)),
            dice_3d=scores["dice_3d"],
            dice_3d_lcc=float(np.mean(list(lcc.values()))),
            **({f"dice_3d_lcc_class{k}": v for k, v in lcc.items()} if len(lcc) > 1 else {}),
            **{key: v for key, v in scores.items() if key != "dice_3d"},
        ))
    return rows


def regression_table(volumes: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     names: Sequence[str] | Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """One row per patient of output and target volumes [S, H, W]: `patient_index`,
    `patient`, `num_slices`, and over the patient's whole volume `mae_3d`,
    `rmse_3d`, `soft_jaccard_3d` (sum(min(y, t)) / sum(max(y, t)) with the
    output clipped at 0; 1 when both are all zero), `psnr_3d` (`psnr`, dB, the
    case's target range) and `ssim_3d` (`mean_ssim`, per-slice SSIM averaged
    over the case's slices)."""
    rows = []
    for patient, (output, target, numbers) in volumes.items():
        error = output.astype(np.float64) - target.astype(np.float64)
        rows.append(dict(patient_index=patient, patient=_name(patient, names), num_slices=len(numbers),
                         mae_3d=float(np.abs(error).mean()), rmse_3d=float(np.sqrt(np.square(error).mean())),
                         soft_jaccard_3d=grey_level_jaccard(output, target), psnr_3d=psnr(output, target),
                         ssim_3d=mean_ssim(output, target)))
    return rows


def mean_over_patients(table: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """Means of the `keys` columns over the rows of a patient table, each over
    the patients where it is defined (not NaN, e.g. `avd` on an empty mask);
    NaN if there are none, or no patients."""
    return {key: _mean_where_defined([row[key] for row in table]) for key in keys}
