"""The inputs predict reads, one class per kind: `VolumeScan` (a volume file,
or a DICOM series folder, per channel), `KaggleScan` (a kaggle_3m patient
folder of TIFF slices) and `PictureScan` (a PNG/TIFF picture).

`find_scans` picks the kind once per scan; the scan then reads its image,
finds and reads its labels, and names and writes its outputs in its own
format and geometry.
"""

from __future__ import annotations

import abc
import dataclasses
import fnmatch
import os
from typing import ClassVar

import numpy as np

from unet_jax import tasks
from unet_jax.data.medical_io import (IMAGE_SUFFIXES, MAX_VOXELS, TIFF_SUFFIXES, VOLUME_SUFFIXES, Geometry, Volume,
                                      dicom_series_files, is_image_path, is_volume_path, read_image,
                                      write_dicom_series, write_image, write_volume)
from unet_jax.errors import DataError
from unet_jax.predict.outputs import mask_image, new_folder
from unet_jax.predict.predictor import Prediction, Predictor

# Reading a scan is the training data's own code, so a new scan is read exactly as the training data was.
from unet_jax.preprocess import layouts, lgg, volumes
from unet_jax.preprocess.problems import Problem

OUTPUT_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha", "dicom")
# Detached headers are written as the single-file format of the same kind.
_SINGLE_FILE = {".nhdr": ".nrrd", ".mhd": ".mha"}


@dataclasses.dataclass
class LoadedScan:
    """A scan read from disk: the raw image [*spatial, C], its geometry
    (None for kaggle_3m and pictures), the z-score mask where the run used
    one, and the kaggle_3m slice numbers."""

    image: np.ndarray
    geometry: Geometry | None
    foreground: np.ndarray | None = None
    slice_numbers: list[int] | None = None

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """mm per axis, where the scan has a geometry."""
        return None if self.geometry is None else tuple(self.geometry.spacing)


@dataclasses.dataclass(frozen=True)
class Scan(abc.ABC):
    """One case to predict: `name` is its output name under --output, `paths`
    its files (one per channel), `folder` and `key` find its labels by pattern
    ({case} is `key`), `mask` is its z-score mask where the run used one."""

    name: str
    paths: tuple[str, ...]
    folder: str
    key: str
    mask: str | None = None

    display_channel: ClassVar[int] = 0  # the input channel overlays show, where the scan has it
    series_labels: ClassVar[bool] = False  # whether its labels may be a DICOM series folder

    @classmethod
    @abc.abstractmethod
    def find(cls, path: str, manifest: dict) -> tuple[list[Scan], list[Problem]] | None:
        """The scans of this kind at `path` (a file or a folder), with the
        problems met, or None when there are none."""

    @abc.abstractmethod
    def read(self, max_voxels: int = MAX_VOXELS) -> LoadedScan:
        """The scan's image and geometry as the files hold them; DataError for a
        file of more than `max_voxels` voxels (times channels)."""

    def read_labels(self, loaded: LoadedScan, labels: str, predictor: Predictor) -> np.ndarray:
        """The scan's reference labels on its own grid, as the run's classes; a
        regression's target image as float32, in its own units."""
        target = self._read_labels(loaded, labels, predictor)
        expected = loaded.image.shape[:-1]
        if target.shape != expected:
            raise DataError(f"{self.paths[0]}: its labels have shape {list(target.shape)}, the scan "
                            f"{list(expected)}; give the labels of this scan")
        return target

    @abc.abstractmethod
    def _read_labels(self, loaded: LoadedScan, labels: str, predictor: Predictor) -> np.ndarray:
        ...

    def find_label(self, labels: str) -> str:
        """The scan's label file: `labels` itself (a file), <name>.<ext> or
        <name>_mask.<ext> in the `labels` folder, or the file matching the glob
        `labels` in the scan's folder."""
        if os.path.isfile(labels):
            return labels
        if os.path.isdir(labels):
            for stem in (self.name, self.key, self.key + "_mask"):
                for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES):
                    if os.path.isfile(candidate := os.path.join(labels, stem + suffix)):
                        return candidate
            if self.series_labels and os.path.isdir(candidate := os.path.join(labels, self.name)):
                return candidate  # a DICOM series folder
            raise DataError(f"{labels}: no label named {self.name}.<ext> for {self.paths[0]}; name the labels like "
                            "their scans, or pass --skip_bad")
        hit = _pattern_hit(self.folder, labels, self.key)
        if hit is None:
            raise DataError(f"{self.folder}: no file matches --labels={labels!r} for case {self.name}; fix the "
                            "pattern or pass --skip_bad")
        return hit

    def label_files(self, labels: str | None) -> list[str]:
        """The label files --labels names for the scan, to keep outputs off
        them; none where they cannot be found (the case then fails when it is
        scored)."""
        if labels is None:
            return []
        try:
            return [self.find_label(labels)]
        except DataError:
            return []

    def output_paths(self, out: str, output_format: str | None, save_probabilities: bool,
                     overlays: bool) -> dict[str, str]:
        """Where the scan's outputs go: `mask` (a file, or a folder for DICOM and
        kaggle_3m), and `probabilities` and `overlay` when asked for."""
        paths = self._output_paths(os.path.join(out, self.name), output_format, save_probabilities)
        if overlays:
            paths["overlay"] = os.path.join(out, "overlays", self.name + ".png")
        return paths

    @abc.abstractmethod
    def _output_paths(self, base: str, output_format: str | None, save_probabilities: bool) -> dict[str, str]:
        ...

    def write(self, loaded: LoadedScan, prediction: Prediction, paths: dict[str, str], *, task: tasks.Task,
              overwrite: bool, save_probabilities: bool, sixteen_bit: bool = False) -> None:
        """The label map (and probabilities) of the scan in its own format and
        geometry; a regression's PNG in 16 bits when the picture, or with
        `sixteen_bit` the run's targets, were 16-bit."""
        labels = prediction.labels.astype(task.output_dtype)
        probabilities = prediction.probabilities
        foreground_probability = probabilities[..., -1] if probabilities.shape[-1] <= 2 else probabilities
        os.makedirs(os.path.dirname(paths["mask"]), exist_ok=True)
        self._write(loaded, labels, foreground_probability, paths, task=task, overwrite=overwrite,
                    save_probabilities=save_probabilities, sixteen_bit=sixteen_bit)

    @abc.abstractmethod
    def _write(self, loaded: LoadedScan, labels: np.ndarray, probability: np.ndarray, paths: dict[str, str], *,
               task: tasks.Task, overwrite: bool, save_probabilities: bool, sixteen_bit: bool) -> None:
        ...


class VolumeScan(Scan):
    """NIfTI/NRRD/MHA volumes or DICOM series folders, one per channel: the
    run's per-case folders, Decathlon-style <case>_0000.nii.gz files, or
    single scans; written back in their own format and geometry."""

    series_labels = True

    @classmethod
    def find(cls, path, manifest):
        if os.path.isfile(path):
            return ([cls(_stem(path), (path,), os.path.dirname(path), _stem(path))], []) if is_volume_path(path) \
                else None
        if manifest.get("source_layout") == "folders" and manifest.get("channels"):
            cases, problems = layouts.scan_folders(path, manifest["channels"], None, manifest.get("mask_pattern"),
                                                   unlabelled=True)
            if cases:
                scans = []
                for c in cases:
                    name = _stem(path) if c.name == "." else c.name
                    scans.append(cls(name, c.channels, os.path.dirname(c.channels[0]), os.path.basename(name),
                                     c.mask))
                return scans, problems
        files = _files(path)
        if any(_stem(f).endswith("_0000") for f in files if is_volume_path(f)) or \
                os.path.isdir(os.path.join(path, "imagesTs")):
            cases, problems = layouts.scan_decathlon(path, unlabelled=True)
            folder = os.path.dirname(cases[0].channels[0]) if cases else path
            return [cls(c.name, c.channels, folder, c.name) for c in cases], problems
        found = [cls(_stem(f), (f,), path, _stem(f)) for f in files if is_volume_path(f)]
        if _is_dicom_folder(path):
            found.append(cls(_stem(path), (path,), os.path.dirname(path), _stem(path)))
        found += [cls(_stem(f), (f,), path, _stem(f)) for f in _subfolders(path) if _is_dicom_folder(f)]
        return (found, []) if found else None

    def read(self, max_voxels=MAX_VOXELS):
        channels, _, foreground = volumes.read_case(layouts.Case(self.name, self.paths, None, self.mask), {},
                                                    max_voxels=max_voxels)
        image = np.stack([v.array for v in channels], axis=-1)
        return LoadedScan(image, channels[0].geometry, foreground)

    def _read_labels(self, loaded, labels, predictor):
        path = self.find_label(labels)
        reference = Volume(loaded.image[..., 0], loaded.geometry)
        if isinstance(predictor.task, tasks.Regression):
            return volumes.load_target(path, reference, self.paths[0], max_voxels=predictor.max_voxels)
        label_map = {int(k): v for k, v in predictor.manifest.get("preprocessing", {}).get("label_map", {}).items()}
        return volumes.load_label(path, reference, self.paths[0], label_map, max_voxels=predictor.max_voxels)

    def volume_format(self, output_format: str | None) -> str:
        """The ending of the scan's outputs ("dicom" for a DICOM series)."""
        if output_format:
            return output_format
        first = self.paths[0]
        if os.path.isdir(first):
            return "dicom"
        suffix = next(s for s in VOLUME_SUFFIXES if first.lower().endswith(s))
        return _SINGLE_FILE.get(suffix, suffix)

    def _output_paths(self, base, output_format, save_probabilities):
        fmt = self.volume_format(output_format)
        paths = {"mask": base if fmt == "dicom" else base + fmt}
        if save_probabilities:
            paths["probabilities"] = base + "_probabilities" + (".nii.gz" if fmt == "dicom" else fmt)
        return paths

    def _write(self, loaded, labels, probability, paths, *, task, overwrite, save_probabilities, sixteen_bit):
        mask, geometry = paths["mask"], loaded.geometry
        if mask.endswith(tuple(OUTPUT_FORMATS[:-1])):
            write_volume(mask, Volume(labels, geometry))
        else:
            if task.float_outputs:
                raise DataError(f"{mask}: DICOM series hold integer labels; pass --output_format=.nii.gz for the "
                                "float outputs of a regression run")
            with new_folder(mask, overwrite) as tmp:
                os.rmdir(tmp)  # write_dicom_series makes the folder itself
                write_dicom_series(tmp, Volume(labels, geometry), series_description="unet_jax prediction")
        if save_probabilities:
            write_volume(paths["probabilities"], Volume(probability.astype(np.float32), geometry))


class KaggleScan(Scan):
    """A kaggle_3m patient folder of <patient>_<n>.tif slices (pre-contrast,
    FLAIR, post-contrast), its masks <patient>_<n>_mask.tif beside them;
    written as a folder of such masks (0/255)."""

    display_channel = 1  # FLAIR

    @classmethod
    def find(cls, path, manifest):
        if not os.path.isdir(path):
            return None
        if _is_kaggle_patient(path):
            return [cls(_stem(path), (path,), path, _stem(path))], []
        kaggle = [cls(_stem(f), (f,), f, _stem(f)) for f in _subfolders(path) if _is_kaggle_patient(f)]
        return (kaggle, []) if kaggle else None

    def read(self, max_voxels=MAX_VOXELS):
        images, _, _ = lgg.patient_files(self.paths[0])
        numbers = sorted(images)
        slices = [lgg.read_tiff(images[n], max_voxels) for n in numbers]  # as data_prep.lgg read the training slices
        shapes = {s.shape for s in slices}
        if len(shapes) > 1 or slices[0].ndim != 3:
            raise DataError(f"{self.paths[0]}: slices of shapes {sorted(shapes)}; every slice must be HxWxC alike")
        return LoadedScan(np.stack(slices, axis=2), None, slice_numbers=numbers)

    def _read_labels(self, loaded, labels, predictor):
        if isinstance(predictor.task, tasks.Regression):
            raise DataError(f"{self.paths[0]}: kaggle_3m folders hold masks, not regression targets; give the targets "
                            "as pictures or volumes")
        if os.path.isdir(labels):
            folder = os.path.join(labels, self.key) if os.path.isdir(os.path.join(labels, self.key)) else labels
            masks = {n: os.path.join(folder, f"{self.key}_{n}_mask.tif") for n in loaded.slice_numbers}
        else:
            masks = lgg.patient_files(self.paths[0])[1]
        missing = [n for n in loaded.slice_numbers if n not in masks or not os.path.exists(masks[n])]
        if missing:
            raise DataError(f"{self.paths[0]}: no mask for slice {missing[0]} ({self.key}_{missing[0]}_mask.tif); "
                            "add it or pass --skip_bad")
        return np.stack([_binary_picture(lgg.read_tiff(masks[n], predictor.max_voxels), predictor.task.num_classes)
                         for n in loaded.slice_numbers], axis=2)

    def label_files(self, labels):
        """The masks of a --labels folder (the patient's folder in it, or its
        files of the patient); none for a pattern: the masks beside the slices,
        inside the scan's own folder."""
        if labels is None or not os.path.isdir(labels):
            return []
        folder = os.path.join(labels, self.key)
        return [folder] if os.path.isdir(folder) else \
            [os.path.join(labels, n) for n in os.listdir(labels) if fnmatch.fnmatch(n, f"{self.key}_*_mask.tif")]

    def _output_paths(self, base, output_format, save_probabilities):
        return {"mask": base}  # a folder of <patient>_<n>_mask.tif (and _probabilities.tif)

    def _write(self, loaded, labels, probability, paths, *, task, overwrite, save_probabilities, sixteen_bit):
        with new_folder(paths["mask"], overwrite) as tmp:
            for s, n in enumerate(loaded.slice_numbers):
                write_image(os.path.join(tmp, f"{self.key}_{n}_mask.tif"), mask_image(labels[:, :, s], task))
                if save_probabilities:
                    write_image(os.path.join(tmp, f"{self.key}_{n}_probabilities.tif"),
                                probability[:, :, s].astype(np.float32))


class PictureScan(Scan):
    """A PNG/TIFF picture (not a <name>_mask picture); written as <name>_mask
    in its own format, a regression's outputs in 8 or 16 bits (PNG) or float32
    (TIFF)."""

    @classmethod
    def find(cls, path, manifest):
        if os.path.isfile(path):
            return ([cls(_stem(path), (path,), os.path.dirname(path), _stem(path))], []) if is_image_path(path) \
                else None
        images = [f for f in _files(path) if is_image_path(f) and not _stem(f).endswith("_mask")]
        return ([cls(_stem(f), (f,), path, _stem(f)) for f in images], []) if images else None

    def read(self, max_voxels=MAX_VOXELS):
        return LoadedScan(read_image(self.paths[0], max_voxels=max_voxels), None)

    def _read_labels(self, loaded, labels, predictor):
        picture = read_image(self.find_label(labels), max_voxels=predictor.max_voxels)
        if isinstance(predictor.task, tasks.Regression):
            return (picture[..., 0] if picture.ndim == 3 else picture).astype(np.float32)
        return _binary_picture(picture, predictor.task.num_classes)

    def _output_paths(self, base, output_format, save_probabilities):
        ext = ".tif" if self.paths[0].lower().endswith(TIFF_SUFFIXES) else ".png"
        paths = {"mask": base + "_mask" + ext}
        if save_probabilities:
            paths["probabilities"] = base + "_probabilities.tif"
        return paths

    def _write(self, loaded, labels, probability, paths, *, task, overwrite, save_probabilities, sixteen_bit):
        mask = paths["mask"]
        write_image(mask, mask_image(labels, task, mask, sixteen_bit or loaded.image.dtype == np.uint16))
        if save_probabilities:
            write_image(paths["probabilities"], probability.astype(np.float32))


# The kinds in the order they are tried: a folder of kaggle_3m patients is not taken for pictures.
KINDS: tuple[type[Scan], ...] = (KaggleScan, VolumeScan, PictureScan)


def find_scans(path: str, manifest: dict) -> tuple[list[Scan], list[Problem]]:
    """The cases under `path` (see the package doc), tried in this order:
    kaggle_3m patient folders, the run's per-case folders, Decathlon files,
    volume files, DICOM series folders, pictures; DataError if none, or if two
    scans share a case name (a.nii and a.nii.gz, x.png and x.tif): their outputs
    would land on one path, and neither is bad, so --skip_bad does not skip them."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; check --input")
    scans, problems = next((found for kind in KINDS if (found := kind.find(path, manifest)) is not None), (None, []))
    if scans is None and os.path.isfile(path):
        raise DataError(f"{path}: neither a volume ({', '.join(VOLUME_SUFFIXES)}) nor a picture (.png, .tif); "
                        "convert it, or point --input at a DICOM series folder")
    if scans is None:
        raise DataError(f"{path}: no scans found (volumes, DICOM series folders, kaggle_3m patient folders, "
                        "PNG/TIFF pictures, or case folders matching the run's channels "
                        f"{manifest.get('channels') or ''}); check --input")
    first: dict[str, Scan] = {}
    for scan in scans:
        if (other := first.setdefault(scan.name, scan)) is not scan:
            raise DataError(f"{other.paths[0]} and {scan.paths[0]}: two scans of case {scan.name!r} would write "
                            "one output; rename one, or move it to another --input folder")
    return scans, problems


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _files(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _subfolders(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _is_kaggle_patient(folder: str) -> bool:
    images, _, _ = lgg.patient_files(folder)
    return bool(images)


def _is_dicom_folder(folder: str) -> bool:
    if not os.path.isdir(folder) or any(e.is_dir() for e in os.scandir(folder)):
        return False
    try:
        return bool(dicom_series_files(folder))
    except DataError:
        return False


def _binary_picture(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A 2-D mask picture as labels: class numbers when they fit the run's
    classes, else 0/255 (or anti-aliased) masks thresholded at 127."""
    mask = mask[..., 0] if mask.ndim == 3 else mask
    return mask.astype(np.uint8) if mask.max(initial=0) < num_classes else (mask > 127).astype(np.uint8)


def _pattern_hit(folder: str, pattern: str, key: str) -> str | None:
    hits = sorted(n for n in os.listdir(folder) if fnmatch.fnmatch(n, pattern.replace("{case}", key)))
    if len(hits) > 1:
        raise DataError(f"{folder}: --labels={pattern!r} matches {len(hits)} files ({', '.join(hits[:3])}); make "
                        "it match one per case")
    return os.path.join(folder, hits[0]) if hits else None
