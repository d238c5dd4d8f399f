"""One object per task: everything that differs between segmentation and
regression (losses, metrics, predictions, per-patient tables, pictures),
chosen once from the config by `get_task`.

Steps, evaluation and the trainer take what they need from the task object
and never ask which task it is; a new task (lesion detection, multi-label)
is a new class here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from unet_jax import losses, report
from unet_jax import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class Task:
    """What a task computes; subclasses fill in the class variables and methods."""

    name: ClassVar[str]
    loss_fns: ClassVar[Mapping[str, losses.LossFn]]
    collection: ClassVar[type[clu_metrics.Collection]]  # per-batch metrics, merged over batches
    case_metrics: ClassVar[tuple[str, ...]]  # means over patients of the patient table's columns
    default_best_metric: ClassVar[str]
    figure_name: ClassVar[str]  # figures/<evaluation name>_<figure_name>.png
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    # What `finalize` gives, and so what predict writes: class labels (masks) or a regression's outputs (images).
    output_dtype: ClassVar[type] = np.uint8

    @property
    def float_outputs(self) -> bool:
        """Whether a prediction is a float image in the target's units rather
        than class labels: predict then writes float volumes and TIFFs (PNGs
        rounded), sums no lesions and draws the regression figure."""
        return np.dtype(self.output_dtype).kind == "f"

    def loss(self, name: str) -> losses.LossFn:
        """The loss registered under `name`; ValueError naming the valid ones."""
        if name not in self.loss_fns:
            raise ValueError(f"loss={name!r} is not a {self.name} loss; choose one of "
                             f"{', '.join(sorted(self.loss_fns))}")
        return self.loss_fns[name]

    def metric_names(self) -> list[str]:
        """Every metric an evaluation reports, in order: the batch collection's,
        then the per-patient means; metrics.csv's columns come from here."""
        return [*self.collection.__annotations__, *self.case_metrics]

    def best_mode(self, metric: str) -> str:
        """'min' for losses and errors, 'max' for scores, of a metric named with
        or without its `val_` prefix."""
        return "min" if metric.removeprefix("val_") in self.lower_is_better else "max"

    def output_problem(self, out_channels: int, manifest: dict) -> str | None:
        """Why a head of `out_channels` cannot fit the prepared data, or None."""
        raise NotImplementedError

    def empty_metrics(self) -> clu_metrics.Collection:
        return self.collection.empty()

    def batch_metrics(self, logits: jnp.ndarray, targets: jnp.ndarray, valid: jnp.ndarray,
                      loss: jnp.ndarray) -> clu_metrics.Collection:
        """The collection for one batch (jit-able); merge batches with `.merge`."""
        return self.collection.single_from_model_output(loss=loss, mask=valid, **self.stats(logits, targets))

    def stats(self, logits: jnp.ndarray, targets: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Per-example statistics [B] that the collection aggregates (jit-able)."""
        raise NotImplementedError

    def predict(self, logits: jnp.ndarray) -> jnp.ndarray:
        """What the model predicts, per example (jit-able)."""
        raise NotImplementedError

    def host_pair(self, pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prediction and target of gathered slices as the per-patient table wants them."""
        raise NotImplementedError

    def window_output(self, logits: jnp.ndarray) -> jnp.ndarray:
        """What a sliding window blends, per voxel [B, *spatial, K] (jit-able)."""
        raise NotImplementedError

    def finalize(self, blend: np.ndarray) -> np.ndarray:
        """The prediction [*spatial] from a blend of `window_output`s [*spatial, K] (host)."""
        raise NotImplementedError

    def volume_metrics(self, pred: np.ndarray, target: np.ndarray) -> clu_metrics.Collection:
        """The collection of one whole case, `pred` and `target` as `host_pair`
        gives them; the loss, defined on training patches, is left NaN."""
        return self.collection.single_from_model_output(
            loss=jnp.float32(jnp.nan), mask=jnp.ones((1,), bool), **self.case_stats(pred[None], target[None]))

    def case_stats(self, pred: np.ndarray, target: np.ndarray) -> dict[str, jnp.ndarray]:
        """`stats` of whole predictions [1, *spatial] rather than logits."""
        raise NotImplementedError

    def table(self, volumes: Mapping, names: Sequence[str], spacings: Mapping | None = None) -> list[dict[str, Any]]:
        """One row per patient of the volumes of `metrics.VolumeAccumulator`,
        distances in mm where `spacings` gives each patient's voxel size (in the
        volumes' axis order)."""
        raise NotImplementedError

    def preview(self, volumes: Mapping, images: Mapping, n: int) -> np.ndarray:
        """[n, H, W', 3] uint8 pictures of a validation pass for TensorBoard."""
        raise NotImplementedError

    def figure(self, table: list[dict], volumes: Mapping, images: Mapping, path: str, channel_label: str) -> None:
        """The PNG a person looks at after a test."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Segmentation(Task):
    """Labels: one output channel is a sigmoid (binary), C > 1 a softmax over C classes."""

    num_classes: int = 2  # background included; 2 for a one-channel sigmoid

    name: ClassVar[str] = "segmentation"
    loss_fns: ClassVar = losses.SEGMENTATION_LOSSES
    collection: ClassVar = metrics_lib.SegmentationMetrics
    case_metrics: ClassVar = ("dice_3d", "dice_3d_lcc", "iou_3d", "hd95", "assd", "avd", "lesion_recall",
                              "lesion_f1")
    default_best_metric: ClassVar = "val_dice"
    figure_name: ClassVar = "best_worst"
    lower_is_better: ClassVar = frozenset({"loss", "hd95", "assd", "avd"})

    def output_problem(self, out_channels, manifest):
        classes = manifest.get("num_classes", 2)
        if max(out_channels, 2) < classes:
            return f"cannot predict the {classes} classes of the data; set it to {classes}"
        return None

    def stats(self, logits, targets):
        return metrics_lib.overlap_stats(logits, targets)

    def predict(self, logits):
        return metrics_lib.predict_labels(logits)

    def host_pair(self, pred, target):
        return pred.astype(np.uint8), np.round(target[..., 0]).astype(np.uint8)

    def window_output(self, logits):
        return losses.probabilities(logits)

    def finalize(self, blend):
        # A one-channel sigmoid is foreground above 0.5; several channels, the argmax.
        return (blend[..., 0] > 0.5).astype(np.uint8) if blend.shape[-1] == 1 else \
            np.argmax(blend, axis=-1).astype(np.uint8)

    def case_stats(self, pred, target):
        return metrics_lib.label_overlap_stats(pred, target, self.num_classes)

    def table(self, volumes, names, spacings=None):
        return metrics_lib.segmentation_table(volumes, self.num_classes, names, spacings)

    def preview(self, volumes, images, n):
        return report.segmentation_preview(volumes, images, n)

    def figure(self, table, volumes, images, path, channel_label):
        report.best_and_worst_figure(table, volumes, images, path, channel_label=channel_label)


@dataclasses.dataclass(frozen=True)
class Regression(Task):
    """Image-to-image: the raw outputs are compared with float targets."""

    name: ClassVar[str] = "regression"
    loss_fns: ClassVar = losses.REGRESSION_LOSSES
    collection: ClassVar = metrics_lib.RegressionMetrics
    case_metrics: ClassVar = ("soft_jaccard_3d", "mae_3d", "rmse_3d", "psnr_3d", "ssim_3d")
    default_best_metric: ClassVar = "val_soft_jaccard"
    figure_name: ClassVar = "predictions"
    output_dtype: ClassVar = np.float32
    lower_is_better: ClassVar = frozenset({"loss", "mae", "rmse", "mae_3d", "rmse_3d"})

    def output_problem(self, out_channels, manifest):
        return None if out_channels == 1 else "regression targets have 1 channel here; set it to 1"

    def stats(self, logits, targets):
        return metrics_lib.regression_stats(logits, targets)

    def predict(self, logits):
        return logits

    def host_pair(self, pred, target):
        # The first channel, as float32: float16 would turn values past 65504 into inf and round the rest.
        return pred[..., 0].astype(np.float32), target[..., 0].astype(np.float32)

    def window_output(self, logits):
        return logits

    def finalize(self, blend):
        return blend[..., 0].astype(np.float32)

    def case_stats(self, pred, target):
        return metrics_lib.regression_stats(jnp.asarray(pred, jnp.float32)[..., None],
                                            jnp.asarray(target, jnp.float32)[..., None])

    def table(self, volumes, names, spacings=None):
        return metrics_lib.regression_table(volumes, names)

    def preview(self, volumes, images, n):
        return report.regression_preview(volumes, images, n)

    def figure(self, table, volumes, images, path, channel_label):
        report.regression_figure(table, volumes, images, path, channel_label=channel_label)


TASKS: dict[str, type[Task]] = {"segmentation": Segmentation, "regression": Regression}


def make_task(name: str, out_channels: int = 1) -> Task:
    """The task object for `config.task` and `config.model.out_channels`;
    ValueError naming the valid tasks."""
    if name not in TASKS:
        raise ValueError(f"task={name!r}: choose one of {', '.join(TASKS)}")
    return Segmentation(num_classes=max(out_channels, 2)) if name == "segmentation" else Regression()


def get_task(config) -> Task:
    return make_task(config.task, config.model.out_channels)
