"""Reading the Kaggle LGG `kaggle_3m` slices as data_prep.lgg prepares them and prediction reads a
new patient: a patient folder's slice files, one slice TIFF, slices shrunk in-plane."""

from __future__ import annotations

import os
import re

import numpy as np
import tifffile

from unet_jax.data import medical_io
from unet_jax.errors import DataError
from unet_jax.preprocess.problems import Problem


def patient_files(folder: str) -> tuple[dict[int, str], dict[int, str], list[Problem]]:
    """The slice images and masks of one kaggle_3m patient folder, by slice
    number (`<folder name>_<n>.tif`, `<folder name>_<n>_mask.tif`), and the
    files named otherwise or naming a slice number a second time."""
    patient = os.path.basename(os.path.normpath(folder))
    pattern = re.compile(rf"^{re.escape(patient)}_(\d+)(_mask)?\.tiff?$")
    images: dict[int, str] = {}
    masks: dict[int, str] = {}
    problems = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        m = pattern.match(name)
        if m is None:
            problems.append(Problem(path, f"unexpected file name; expected {patient}_<n>.tif or "
                                          f"{patient}_<n>_mask.tif"))
            continue
        found = masks if m.group(2) else images
        number = int(m.group(1))
        if number in found:  # `_1.tif` beside `_01.tif` or `_1.tiff`: one slice, two files
            problems.append(Problem(path, f"slice {number} again, beside {os.path.basename(found[number])}; "
                                          "remove one of the two files"))
            continue
        found[number] = path
    return images, masks, problems


def read_tiff(path: str, max_voxels: int = medical_io.MAX_VOXELS) -> np.ndarray:
    """A kaggle_3m TIFF as tifffile reads it (prediction reads slices through here too); one whose
    header promises more than `max_voxels` values is refused before its pixels are decoded."""
    try:
        with tifffile.TiffFile(path) as tiff:
            medical_io.check_voxels(tiff.series[0].shape, path, max_voxels)
            return tiff.asarray()
    except DataError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(f"{path}: unreadable or truncated TIFF ({type(e).__name__}: {e}); "
                        "replace the file or pass --skip_bad") from None


def shrink(image: np.ndarray, mask: np.ndarray, size: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Block-averages an [H, W, C] uint8 image and its 0/1 mask to size x size;
    the mask is its block average thresholded at 0.5."""
    h, w = mask.shape
    if h % size or w % size:
        raise DataError(f"{path}: slice size {h}x{w} is not a multiple of --size={size}; "
                        "choose a size that divides it")
    fh, fw = h // size, w // size
    image = image.reshape(size, fh, size, fw, -1).astype(np.float32).mean(axis=(1, 3))
    mask = mask.reshape(size, fh, size, fw).astype(np.float32).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8), (mask >= 0.5).astype(np.uint8)
