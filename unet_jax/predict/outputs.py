"""What predict writes beside the label maps, and how it writes them safely:
mask images, predictions.csv's per-case numbers, the CSV tables, overlays,
and the marker that lets --overwrite replace only the folders predict wrote."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import time

import numpy as np

from unet_jax import metrics, report, tasks
from unet_jax.errors import DataError
from unet_jax.evaluate import as_slices
from unet_jax.files import atomic_write, temporary_folder, write_json
from unet_jax.predict.predictor import Prediction

# Inside every case folder predict writes (kaggle_3m masks, DICOM series): --overwrite replaces only those.
MARKER = ".unet_jax_predict"
CSV_COLUMNS = ["case", "status", "input", "output", "shape", "spacing", "seconds", "voxels", "volume_ml",
               "components", "largest_voxels", "largest_ml", "mean_probability", "mean_output",
               "largest_component_of", "note"]


def check_replaceable(path: str, overwrite: bool) -> None:
    """DataError unless `path` is free, or `overwrite` is given and `path` is a
    file or a case folder predict wrote (one holding its MARKER): a folder of a
    person's own files is never replaced."""
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise DataError(f"{path}: already exists; pass --overwrite or choose another --output")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, MARKER)):
        raise DataError(f"{path}: not written by unet_jax.predict (no {MARKER} inside), so --overwrite leaves it; "
                        "move it away or choose another --output")


@contextlib.contextmanager
def new_folder(path: str, overwrite: bool):
    """A temporary folder renamed onto `path` when the block succeeds (the old
    one, with `overwrite` and only if predict wrote it, removed only then);
    the folder gets predict's MARKER."""
    tmp = temporary_folder(path)
    try:
        yield tmp
        write_json(os.path.join(tmp, MARKER), {"written_by": "unet_jax.predict", "pid": os.getpid(),
                                                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        old = None
        if os.path.lexists(path):
            check_replaceable(path, overwrite)
            old = temporary_folder(path)  # an empty folder: the old one renames over it
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mask_image(labels: np.ndarray, task: tasks.Task, path: str = "", sixteen_bit: bool = False) -> np.ndarray:
    """Binary labels as 0/255 (as kaggle_3m masks are), several classes as their
    numbers; a regression's outputs as float32, or for a PNG `path` rounded and
    clipped to 8 bits (16 with `sixteen_bit`: a 16-bit input or target)."""
    if task.float_outputs and path.endswith(".png"):
        dtype = np.uint16 if sixteen_bit else np.uint8
        return np.clip(np.round(labels), 0, np.iinfo(dtype).max).astype(dtype)
    if task.float_outputs:
        return labels.astype(np.float32)
    return (labels * 255).astype(np.uint8) if task.num_classes <= 2 else labels.astype(np.uint8)


def case_summary(prediction: Prediction, spacing, task: tasks.Task) -> dict:
    """predictions.csv's numbers for one case: foreground voxels and ml, the
    connected lesions, the largest one, and the mean probability of the
    predicted class inside the prediction; a regression's mean output."""
    labels, probabilities = prediction.labels, prediction.probabilities
    if task.float_outputs:
        return {"mean_output": float(labels.astype(np.float64).mean())}
    foreground = labels > 0
    components, count = metrics.connected_components(foreground)
    sizes = np.bincount(components.ravel())[1:]
    largest = int(sizes.max()) if count else 0
    ml = None if spacing is None else math.prod(spacing) / 1000.0
    if probabilities.shape[-1] == 1:
        confidence = probabilities[..., 0]
    else:
        confidence = np.take_along_axis(probabilities, labels[..., None].astype(np.intp), axis=-1)[..., 0]
    return {"voxels": int(foreground.sum()), "volume_ml": None if ml is None else foreground.sum() * ml,
            "components": int(count), "largest_voxels": largest, "largest_ml": None if ml is None else largest * ml,
            "mean_probability": float(confidence[foreground].mean()) if count else None}


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """predictions.csv or scores.csv: missing values and NaN empty, floats to 6 places."""
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                                 round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def overlay(path: str, name: str, image: np.ndarray, prediction: Prediction, target, summary: dict,
            task: tasks.Task, *, radiological: bool, slice_numbers: list[int] | None) -> None:
    """overlays/<case>.png of `image` (the scan's display channel): the slices
    with the most foreground; for a regression, input, output and (given)
    target and error. `radiological` volumes are shown as radiologists view them."""

    def view(array: np.ndarray) -> np.ndarray:
        # Volumes in radiological view: rows along y (anterior at the top in LPS), columns
        # along x (the patient's right on the left); as_slices alone puts x down the rows.
        slices = as_slices(array)
        return np.swapaxes(slices, 1, 2) if radiological and array.ndim == 3 else slices

    if task.float_outputs:
        report.regression_prediction_figure(
            view(image.astype(np.float32)), view(prediction.labels.astype(np.float32)), path,
            title=f"{name}: mean output {summary['mean_output']:.4g}",
            target=None if target is None else view(target.astype(np.float32)), slice_numbers=slice_numbers)
        return
    volume = (f"{summary['volume_ml']:.2f} ml" if summary.get("volume_ml") is not None
              else f"{summary['voxels']} voxels")
    probabilities = prediction.probabilities
    confidence = probabilities[..., 0] if probabilities.shape[-1] == 1 else 1 - probabilities[..., 0]
    report.prediction_figure(view(image.astype(np.float32)), view(prediction.labels), path,
                             title=f"{name}: {volume}, {summary['components']} connected lesion(s)",
                             target=None if target is None else view(target), slice_numbers=slice_numbers,
                             probabilities=view(confidence))
