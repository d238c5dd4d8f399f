"""Segment new scans with a trained run: files in, label maps out, in each
input's own format and geometry.

  python -m unet_jax.predict --workdir=runs/wmh --input=scans/ --output=predictions/
  python -m unet_jax.predict --workdir=runs/lgg --input=kaggle_3m/TCGA_CS_4941_19960909 --output=out \
      --tta --labels='*_mask.tif'
  python -m unet_jax.main --mode=predict --workdir=runs/wmh --input=patient.nii.gz --output=out
  python -m unet_jax.predict --workdir=runs/f0,runs/f1,runs/f2,runs/f3,runs/f4 --input=scans/ --output=out

The workdir holds everything prediction needs: config.json (the model, its
precision, the sliding window) and train_manifest.json (channel patterns,
intensity normalisation, spacing, crop, slice plane); nothing is re-typed.
Several workdirs, separated by commas (the folds of a cross-validation, say),
predict as an ensemble: each run's blend of windows (after TTA) is averaged
before the labels are taken; the runs must share task, classes, channels,
preprocessing and input size.

Post-processing: a run's postprocessing.json (written at the end of training
from its validation cases, or by unet_jax.cv_summary from all folds' cases)
keeps only the largest connected component of the classes it chose; an
ensemble applies the classes a majority of its runs chose. `--postprocessing=none`
turns that off, `--lcc` applies it to every class.

`--input` is a file or a folder of:
  - NIfTI/NRRD/MHA volumes, or DICOM series folders (one channel each);
  - the per-case folders of data_prep.volumes, found by the run's channel patterns;
  - Decathlon-style <case>_0000.nii.gz, <case>_0001.nii.gz, ... files (or imagesTs/);
  - kaggle_3m patient folders of TIFF slices, or a folder of them;
  - PNG/TIFF pictures.
Outputs in `--output`: the label map of each case in its own format and
geometry (<case>.nii.gz, a DICOM series folder, <patient>/<patient>_<n>_mask.tif
with 0/255, <name>_mask.png; a regression's outputs as float32 volumes and TIFFs,
or PNGs in 16 bits where the picture or the run's targets were 16-bit), with
--save_probabilities the softmax or sigmoid maps as float volumes,
overlays/<case>.png, predictions.csv (volume in ml, connected lesions, largest
lesion, mean probability, the classes cut to their largest component, seconds
per case), and with --labels scores.csv and scores_summary.json (the training
metrics per case).

What is refused, in one line: an output on, inside or around a scan or a
--labels file; with --overwrite, a case folder predict did not write (those
it writes hold a .unet_jax_predict file); two scans of one case name (a.nii
and a.nii.gz: one would overwrite the other's outputs); a scan, or a grid it
is resampled to, of more than --max_voxels voxels; a model whose outputs are
NaN (damaged weights). --skip_bad skips unreadable cases and reports them.

`Predictor` is the same in a notebook:

  predictor = Predictor.from_workdir("runs/wmh")
  volume = read_volume("patient.nii.gz")
  labels, probabilities = predictor(volume.array, spacing=volume.geometry.spacing)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fnmatch
import functools
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags, logging
from tqdm import tqdm

from unet_jax import inference, metrics, parallel, report, tasks
from unet_jax import postprocessing as postprocessing_lib
from unet_jax.config_checks import ConfigError, input_shape
from unet_jax.data import DataError, pipeline
from unet_jax.data.medical_io import (MAX_VOXELS, VOLUME_SUFFIXES, Geometry, Volume, dicom_series_files,
                                      is_image_path, is_volume_path, plane_axis, read_image, resample_to,
                                      write_dicom_series, write_image, write_volume)
from unet_jax.evaluate import as_slices
from unet_jax.files import atomic_write, temporary_folder, write_json
from unet_jax.run import Run, compile_eval_steps, read_run

# Input preparation is data_prep's own code, so a new scan is read and
# normalised exactly as the training data was.
from data_prep import common, lgg, pictures, volumes  # noqa: E402  (after unet_jax: data_prep imports it)

LGG_DATASET = "lgg_kaggle_3m"  # the manifest's `dataset` of data_prep.lgg
PICTURES_DATASET = "pictures"  # of data_prep.pictures: 8-bit slices, normalised by the pipeline as LGG's are
OUTPUT_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha", "dicom")
# Detached headers are written as the single-file format of the same kind.
_SINGLE_FILE = {".nhdr": ".nrrd", ".mhd": ".mha"}
# Inside every case folder predict writes (kaggle_3m masks, DICOM series): --overwrite replaces only those.
MARKER = ".unet_jax_predict"

flags.DEFINE_string("input", None, "predict: a scan (file or DICOM folder) or a folder of scans.")
flags.DEFINE_string("output", None, "predict: folder for the label maps, predictions.csv and overlays/.")
flags.DEFINE_bool("tta", False, "predict: average over flips of every spatial axis (4x in 2-D, 8x in 3-D).")
flags.DEFINE_bool("lcc", False, "predict: keep only the largest connected component of each class.")
flags.DEFINE_enum("postprocessing", "auto", ["auto", "none"],
                  "predict: auto applies the run's postprocessing.json (an ensemble: the classes most runs "
                  "chose); none keeps every component.")
flags.DEFINE_bool("save_probabilities", False, "predict: also write the softmax/sigmoid maps as float volumes.")
flags.DEFINE_bool("overwrite", False, "predict: replace existing output files, and case folders predict wrote.")
flags.DEFINE_bool("skip_bad", False, "predict: skip unreadable or mismatched cases, list them at the end.")
flags.DEFINE_string("labels", None, "predict: score against labels: a file, a folder of <case>.<ext>, or a glob "
                                    "in each case's folder ('GOLD_STANDARD*'; {case} allowed); for kaggle_3m "
                                    "folders any pattern means the <patient>_<n>_mask.tif beside each slice.")
flags.DEFINE_enum("output_format", None, list(OUTPUT_FORMATS), "predict: write volumes in this format rather "
                                                               "than the input's.")
flags.DEFINE_integer("batch_size", None, "predict: windows per device batch (default: the run's eval_batch_size).")
flags.DEFINE_bool("overlays", True, "predict: write overlays/<case>.png.")
flags.DEFINE_integer("max_voxels", MAX_VOXELS, "predict: refuse a scan, or a grid it is resampled to, of more voxels "
                                               "(times channels) than this: raise it for a really large scan.")


# --- the model ----------------------------------------------------------------------

@dataclasses.dataclass
class Prediction:
    """A case's prediction on its input grid: labels [*spatial] (outputs for
    regression), the blended softmax/sigmoid maps [*spatial, K], and notes
    (padding, say) a person should read."""

    labels: np.ndarray
    probabilities: np.ndarray
    notes: list[str]


class Predictor:
    """A trained run, or an ensemble of runs, that predicts raw images: the
    run's preprocessing, sliding windows of its training input size on the
    device mesh (optionally with flip test-time augmentation), each run's blend
    averaged over the ensemble, the inverse of the preprocessing, and
    optionally the largest connected component of chosen classes.

    Images are [*spatial, C] (C may be left out for one channel) with raw
    intensities as the files hold them, in the axis order of `read_volume`
    ([X, Y, Z]); a 2-D run takes one slice [H, W, C] or a stack [H, W, S, C],
    predicted slice by slice along the run's slice axis (the last for
    kaggle_3m stacks and for volumes without a direction).
    """

    def __init__(self, config, manifest: dict, state, mesh, *, tta: bool = False, lcc: bool = False,
                 postprocess: dict | None = None, batch_size: int | None = None, workdir: str | None = None,
                 max_voxels: int = MAX_VOXELS, predict_step=None):
        """`state` is a TrainState of `config`'s model, or a list of them (an
        ensemble, windowed as `config` says); `postprocess` is a
        `postprocessing.choose` result to apply to the labels, `lcc` applies
        it to every class; `max_voxels` caps the scans read and the grids
        resampled (a hostile header must not exhaust the memory);
        `predict_step` is a `Run`'s (default: compiled here)."""
        self.config, self.manifest, self.mesh, self.max_voxels = config, manifest, mesh, max_voxels
        self.states = list(state) if isinstance(state, (list, tuple)) else [state]
        self.workdir = workdir  # where the run(s) came from (comma-separated), for the record
        self.task = tasks.get_task(config)
        shape = input_shape(config, manifest)
        self.patch, self.num_channels = tuple(int(v) for v in shape[:-1]), int(shape[-1])
        self.is_lgg = manifest.get("dataset") == LGG_DATASET
        self.is_8bit = self.is_lgg or manifest.get("dataset") == PICTURES_DATASET  # records as stored 8-bit slices
        self.settings = None if self.is_8bit else volumes.settings_from_manifest(manifest)
        self.tta = tta or config.data.sliding_window.flip_tta
        segmentation = isinstance(self.task, tasks.Segmentation)
        if lcc and segmentation:
            postprocess = {"keep_largest_component": list(range(1, self.task.num_classes)), "chosen_on": "--lcc"}
        self.postprocess = postprocess if segmentation else None
        self.batch_size = batch_size or config.eval_batch_size
        try:
            parallel.check_batch_size(self.batch_size, mesh.size, name="batch_size")
        except ValueError as e:
            raise ConfigError(f"--{e}") from None
        self.predict_step = predict_step or compile_eval_steps(config, self.task, mesh)[1]

    @classmethod
    def from_workdir(cls, workdir: str, **options) -> Predictor:
        """The best checkpoint of the run in `workdir` (`from_workdirs`' options)."""
        return cls.from_workdirs([workdir], **options)

    @classmethod
    def from_workdirs(cls, workdirs: Sequence[str], *, tta: bool = False, lcc: bool = False,
                      postprocessing: str = "auto", batch_size: int | None = None, mesh=None,
                      max_voxels: int = MAX_VOXELS) -> Predictor:
        """The best checkpoints of the runs in `workdirs` (one: that run, more:
        an ensemble), on `mesh` (default: every device). `postprocessing`
        "auto" applies the runs' postprocessing.json (an ensemble: the classes
        a majority chose), "none" nothing; ConfigError in one line when the
        runs do not agree on what prediction needs (`ensemble_key`)."""
        if postprocessing not in ("auto", "none"):
            raise ConfigError(f"--postprocessing={postprocessing!r}: choose auto or none")
        workdirs = [os.path.abspath(w) for w in workdirs]
        if not workdirs:
            raise ConfigError("--workdir: no run given; name a run's folder, or several separated by commas")
        runs = [read_run(w) for w in workdirs]
        first = ensemble_key(*runs[0])
        for workdir, run in zip(workdirs[1:], runs[1:]):
            key = ensemble_key(*run)
            differ = next((k for k in first if key[k] != first[k]), None)
            if differ:
                raise ConfigError(f"--workdir: {workdirs[0]} and {workdir} differ in {differ} ({first[differ]} "
                                  f"against {key[differ]}); an ensemble takes runs of one task on the same data")
        mesh = mesh if mesh is not None else parallel.make_mesh()
        opened = [Run.open(w, mesh, config=config, manifest=manifest) for w, (config, manifest) in zip(workdirs, runs)]
        auto = postprocessing == "auto" and not lcc and first["task"] == "segmentation"
        choice = postprocessing_lib.vote([postprocessing_lib.read(w) for w in workdirs]) if auto else None
        if choice is not None:
            logging.info("Post-processing from %s: %s.", ", ".join(os.path.join(w, postprocessing_lib.FILE)
                                                                   for w in workdirs), describe(choice))
        return cls(*runs[0], [r.state for r in opened], mesh, tta=tta, lcc=lcc, postprocess=choice,
                   batch_size=batch_size, workdir=",".join(workdirs), max_voxels=max_voxels,
                   predict_step=opened[0].predict_step)

    def __call__(self, image: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
        """(labels [*spatial], probabilities [*spatial, K]) of a raw image;
        `spacing` (mm per axis) lets a run that resampled its training data
        resample this image too, and back."""
        geometry = None if spacing is None else Geometry.identity(len(spacing), spacing)
        result = self.predict(np.asarray(image), geometry=geometry)
        for note in result.notes:
            logging.warning(note)
        return result.labels, result.probabilities

    def with_channels(self, image: np.ndarray, name: str) -> np.ndarray:
        """`image` as [*spatial, C] with the run's channel count; DataError otherwise."""
        dims = len(self.patch)
        spatial = (dims,) if dims == 3 else (2, 3)
        if image.ndim - 1 in spatial and image.shape[-1] == self.num_channels:
            return image
        if self.num_channels == 1 and dims == 2 and image.ndim == 3 and image.shape[-1] in (3, 4) \
                and pictures.is_grey(image[..., :3]):
            return image[..., :1]  # a grey picture stored as RGB(A), as data_prep.pictures stored it
        if self.num_channels == 1 and image.ndim in spatial:
            return image[..., None]
        takes = " or ".join(f"{d}-D" for d in spatial)
        raise DataError(f"{name}: an image of shape {list(image.shape)}, but the run takes {takes} images with "
                        f"{self.num_channels} channel(s) ({', '.join(self._channel_names())}); give those channels")

    def _channel_names(self) -> list[str]:
        return [str(c) for c in self.manifest.get("channels", [])] or \
            (["pre-contrast", "FLAIR", "post-contrast"] if self.is_lgg else [f"{self.num_channels} channels"])

    def predict(self, image: np.ndarray, *, geometry: Geometry | None = None, foreground: np.ndarray | None = None,
                name: str = "image") -> Prediction:
        """The prediction for one raw image; `geometry` places it in space
        (spacing for resampling, direction for the slice plane), `foreground`
        is the z-score mask where the run used one, `name` heads errors and notes."""
        image = self.with_channels(image, name)
        if not np.issubdtype(image.dtype, np.number) or (image.dtype.kind == "f" and not np.isfinite(image).all()):
            raise DataError(f"{name}: {int((~np.isfinite(image)).sum())} NaN or infinite voxels; fix the scan "
                            "or pass --skip_bad")
        notes: list[str] = []
        if self.is_8bit:
            x, restore = self._prepare_8bit(image, name)
            axis = 2
        else:
            x, restore, axis = self._prepare_volume(image, geometry, foreground, name, notes)
        blend = self._infer(x, axis, name, notes)
        if not np.isfinite(blend).all():  # damaged weights: never write such a case as if it were a prediction
            raise DataError(f"{name}: the model gave {int((~np.isfinite(blend)).sum())} NaN or infinite outputs; "
                            f"the weights of {self.workdir or 'the run'} are damaged: retrain, or restore another "
                            "checkpoint")
        probabilities = restore(blend)
        labels = postprocessing_lib.apply(np.asarray(self.task.finalize(probabilities)), self.postprocess)
        return Prediction(labels, probabilities, notes)

    def _prepare_8bit(self, image: np.ndarray, name: str):
        """kaggle_3m-style slices or pictures as data_prep.lgg or .pictures and
        the input pipeline made them: LGG's shrunk in-plane by the run's
        factor, normalised by `config.data.normalization` with the patient's
        statistics; a regression's outputs go back to the picture's units
        (times the divisor data_prep.pictures scaled the targets by)."""
        source, record = (self.manifest.get("source_image_shape") or [0])[0], self.manifest["image_shape"][0]
        factor = source // record if self.is_lgg and source > record else 1
        scale = np.float32(self.manifest.get("target", {}).get("divisor", 1.0))
        stack = image if image.ndim == 4 else image[:, :, None]  # [H, W, S, C]
        h, w = stack.shape[:2]
        if factor > 1:
            stack = np.stack([lgg.shrink(stack[:, :, s], np.zeros((h, w), np.uint8), h // factor, name)[0]
                              for s in range(stack.shape[2])], axis=2)
        method = self.config.data.normalization
        slices = [stack[:, :, s] for s in range(stack.shape[2])]
        mean, std = common.intensity_stats(slices)
        if method == "zscore" and len(self.patch) == 2:  # 2-D records: one z-score per slice
            x = np.stack([pipeline.normalize({"image": s}, method)["image"] for s in slices], axis=2)
        else:
            x = pipeline.normalize({"image": stack, "channel_mean": mean, "channel_std": std}, method)["image"]
        x = x if image.ndim == 4 else x[:, :, 0]

        def restore(blend: np.ndarray) -> np.ndarray:
            blend = blend * scale if scale != 1 else blend
            return np.repeat(np.repeat(blend, factor, axis=0), factor, axis=1) if factor > 1 else blend
        return x, restore

    def _prepare_volume(self, image: np.ndarray, geometry: Geometry | None, foreground: np.ndarray | None,
                        name: str, notes: list[str]):
        """A scan as data_prep.volumes made the run's records (resampled,
        cropped, normalised per channel), with the function that puts a blend
        on the record grid back onto the scan's grid."""
        dims = image.ndim - 1
        geometry = geometry or Geometry.identity(dims)
        settings = self.settings
        if settings.spacing is not None and dims != len(settings.spacing):
            notes.append(f"{name}: a {dims}-D image for a run resampled to {list(settings.spacing)} mm; predicted "
                         "at its own pixel size")
            settings = dataclasses.replace(settings, spacing=None)
        channels = [Volume(image[..., c], geometry) for c in range(image.shape[-1])]
        x, _, info, stats = volumes.preprocess(channels, None, foreground, settings, name, max_voxels=self.max_voxels)
        # A regression's outputs go back to the target's units: the scale data_prep
        # divided the target by, computed from this scan's own input.
        scale = np.float32(stats.get("target", {}).get("scale", 1.0))
        axis = plane_axis(geometry, settings.slices) if len(self.patch) == 2 and dims == 3 else None
        resampled = Geometry(tuple(info["spacing"]), geometry.origin, geometry.direction)
        crop = tuple(slice(lo, hi) for lo, hi in info["crop"])
        background = 1.0 if isinstance(self.task, tasks.Segmentation) else 0.0

        def restore(blend: np.ndarray) -> np.ndarray:
            k = blend.shape[-1]
            full = np.zeros((*info["resampled_shape"], k), np.float32)
            if k > 1:
                full[..., 0] = background  # outside the crop: certainly background
            full[crop] = blend * scale if scale != 1 else blend
            if settings.spacing is None:
                return full
            return resample_to(Volume(full, resampled), geometry, info["source"]["shape"], label=False,
                               max_voxels=self.max_voxels).array
        return x, restore, axis

    def _infer(self, x: np.ndarray, axis: int | None, name: str, notes: list[str]) -> np.ndarray:
        """The blend [*spatial, K] of windows of the training input size over
        `x` [*spatial, C], averaged over the ensemble's runs; a 2-D run on a
        3-D `x` goes slice by slice along `axis`."""
        flips = inference.WindowOptions(self.patch, flip_tta=self.tta).flip_axes()
        stacked = len(self.patch) == 2 and x.ndim == 4
        if stacked:  # windows of one slice: [1, H, W] over the slices moved to axis 0
            x = np.moveaxis(x, axis, 0)
            patch, flips = (1, *self.patch), [tuple(a + 1 for a in f) for f in flips]
        else:
            patch = self.patch
        small = [s for s, p in zip(x.shape[:len(patch)], patch) if s < p]
        if small:
            notes.append(f"{name}: {'x'.join(map(str, x.shape[:len(patch)]))} is smaller than the network's "
                         f"{'x'.join(map(str, patch))} input; zero-padded to it and cropped back")
        window = self.config.data.sliding_window
        blend = None
        for n, state in enumerate(self.states):
            predict = functools.partial(inference.predict_windows, self.predict_step, state,
                                        batch_size=self.batch_size, mesh=self.mesh)
            if stacked:
                predict = (lambda batch, inner=predict: inner(batch[:, 0])[:, None])
            _, one = inference.sliding_window(x, predict, patch_size=patch, batch_size=self.batch_size,
                                              finalize=self.task.finalize, overlap=window.overlap,
                                              importance=window.importance, flip_axes=flips, keep_probabilities=True)
            # A running mean: an ensemble of identical runs blends exactly as one run does.
            blend = one if blend is None else blend + (one - blend) / (n + 1)
        return np.moveaxis(blend, 0, axis) if stacked else blend


def ensemble_key(config, manifest: dict) -> dict:
    """What the runs of an ensemble must share to average their outputs on
    one input: the task and its classes, the input channels and size, and
    how the data was prepared and normalised (splits and folds may differ)."""
    shape = input_shape(config, manifest)
    return {"task": config.task, "model.out_channels": config.model.out_channels, "input channels": shape[-1],
            "input size": list(shape[:-1]), "data.normalization": config.data.normalization,
            **{f"manifest {k}": manifest.get(k) for k in ("dataset", "channels", "preprocessing", "target",
                                                          "source_image_shape")}}


def describe(choice: dict) -> str:
    """A line on what the post-processing `choice` does (for an ensemble,
    `postprocessing.vote`'s, with how many runs chose each class)."""
    kept = postprocessing_lib.classes_of(choice)
    line = (f"keeping the largest connected component of class {', '.join(map(str, kept))}" if kept else
            "no class is cut to its largest component")
    if "votes" in choice:
        line += " (by majority: " + ", ".join(f"class {k} chosen by {n} of {choice['runs']} runs"
                                              for k, n in choice["votes"].items()) + ")"
    return line + f"; chosen on {choice.get('chosen_on', '?')}"


# --- finding scans -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Scan:
    """One case to predict: `kind` "volume" (a file or DICOM folder per
    channel), "kaggle" (a patient folder of TIFF slices) or "image" (a
    picture); `name` is its output name under --output; `folder` and `key`
    find its labels by pattern ({case} is `key`)."""

    name: str
    kind: str
    paths: tuple[str, ...]
    folder: str
    key: str
    mask: str | None = None


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for suffix in (*VOLUME_SUFFIXES, ".png", ".jpg", ".jpeg", ".bmp", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


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


def find_scans(path: str, manifest: dict) -> tuple[list[Scan], list[common.Problem]]:
    """The cases under `path` (see the module doc), tried in this order:
    kaggle_3m patient folders, the run's per-case folders, Decathlon files,
    volume files, DICOM series folders, pictures; DataError if none, or if two
    scans share a case name (a.nii and a.nii.gz, x.png and x.tif): their outputs
    would land on one path, and neither is bad, so --skip_bad does not skip them."""
    scans, problems = _find_scans(os.path.abspath(path), manifest)
    first: dict[str, Scan] = {}
    for scan in scans:
        if (other := first.setdefault(scan.name, scan)) is not scan:
            raise DataError(f"{other.paths[0]} and {scan.paths[0]}: two scans of case {scan.name!r} would write "
                            "one output; rename one, or move it to another --input folder")
    return scans, problems


def _find_scans(path: str, manifest: dict) -> tuple[list[Scan], list[common.Problem]]:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; check --input")
    if os.path.isfile(path):
        if is_volume_path(path):
            return [Scan(_stem(path), "volume", (path,), os.path.dirname(path), _stem(path))], []
        if is_image_path(path):
            return [Scan(_stem(path), "image", (path,), os.path.dirname(path), _stem(path))], []
        raise DataError(f"{path}: neither a volume ({', '.join(VOLUME_SUFFIXES)}) nor a picture (.png, .tif); "
                        "convert it, or point --input at a DICOM series folder")
    if _is_kaggle_patient(path):
        return [Scan(_stem(path), "kaggle", (path,), path, _stem(path))], []
    subfolders = sorted(e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    kaggle = [Scan(_stem(f), "kaggle", (f,), f, _stem(f)) for f in subfolders if _is_kaggle_patient(f)]
    if kaggle:
        return kaggle, []
    if manifest.get("source_layout") == "folders" and manifest.get("channels"):
        cases, problems = volumes.scan_folders(path, manifest["channels"], None, manifest.get("mask_pattern"),
                                               unlabelled=True)
        if cases:
            scans = []
            for c in cases:
                name = _stem(path) if c.name == "." else c.name
                scans.append(Scan(name, "volume", c.channels, os.path.dirname(c.channels[0]),
                                  os.path.basename(name), c.mask))
            return scans, problems
    files = sorted(e.path for e in os.scandir(path) if e.is_file() and not e.name.startswith("."))
    if any(_stem(f).endswith("_0000") for f in files if is_volume_path(f)) or \
            os.path.isdir(os.path.join(path, "imagesTs")):
        cases, problems = volumes.scan_decathlon(path, unlabelled=True)
        folder = os.path.dirname(cases[0].channels[0]) if cases else path
        return [Scan(c.name, "volume", c.channels, folder, c.name) for c in cases], problems
    found = [Scan(_stem(f), "volume", (f,), path, _stem(f)) for f in files if is_volume_path(f)]
    if _is_dicom_folder(path):
        found.append(Scan(_stem(path), "volume", (path,), os.path.dirname(path), _stem(path)))
    found += [Scan(_stem(f), "volume", (f,), path, _stem(f)) for f in subfolders if _is_dicom_folder(f)]
    if found:
        return found, []
    images = [f for f in files if is_image_path(f) and not _stem(f).endswith("_mask")]
    if images:
        return [Scan(_stem(f), "image", (f,), path, _stem(f)) for f in images], []
    raise DataError(f"{path}: no scans found (volumes, DICOM series folders, kaggle_3m patient folders, "
                    "PNG/TIFF pictures, or case folders matching the run's channels "
                    f"{manifest.get('channels') or ''}); check --input")


# --- reading, writing -----------------------------------------------------------------

@dataclasses.dataclass
class LoadedScan:
    """A scan read from disk: the raw image [*spatial, C], its geometry
    (None for kaggle_3m and pictures), the z-score mask where the run used
    one, and the kaggle_3m slice numbers."""

    image: np.ndarray
    geometry: Geometry | None
    foreground: np.ndarray | None = None
    slice_numbers: list[int] | None = None


def load_scan(scan: Scan, max_voxels: int = MAX_VOXELS) -> LoadedScan:
    """The scan's image and geometry as the files hold them; DataError for a
    file of more than `max_voxels` voxels (times channels)."""
    if scan.kind == "kaggle":
        images, _, _ = lgg.patient_files(scan.paths[0])
        numbers = sorted(images)
        slices = [lgg.read_tiff(images[n], max_voxels) for n in numbers]  # as data_prep.lgg read the training slices
        shapes = {s.shape for s in slices}
        if len(shapes) > 1 or slices[0].ndim != 3:
            raise DataError(f"{scan.paths[0]}: slices of shapes {sorted(shapes)}; every slice must be HxWxC alike")
        return LoadedScan(np.stack(slices, axis=2), None, slice_numbers=numbers)
    if scan.kind == "image":
        return LoadedScan(read_image(scan.paths[0], max_voxels=max_voxels), None)
    channels, _, foreground = volumes.read_case(volumes.Case(scan.name, scan.paths, None, scan.mask), {},
                                                max_voxels=max_voxels)
    image = np.stack([v.array for v in channels], axis=-1)
    return LoadedScan(image, channels[0].geometry, foreground)


def volume_format(scan: Scan, output_format: str | None) -> str:
    """The ending of a volume scan's outputs ("dicom" for a DICOM series)."""
    if output_format:
        return output_format
    first = scan.paths[0]
    if os.path.isdir(first):
        return "dicom"
    suffix = next(s for s in VOLUME_SUFFIXES if first.lower().endswith(s))
    return _SINGLE_FILE.get(suffix, suffix)


def output_paths(scan: Scan, out: str, output_format: str | None, save_probabilities: bool,
                 overlays: bool) -> dict[str, str]:
    """Where a scan's outputs go: `mask` (a file, or a folder for DICOM and
    kaggle_3m), and `probabilities` and `overlay` when asked for."""
    base = os.path.join(out, scan.name)
    paths = {}
    if scan.kind == "volume":
        fmt = volume_format(scan, output_format)
        paths["mask"] = base if fmt == "dicom" else base + fmt
        if save_probabilities:
            paths["probabilities"] = base + "_probabilities" + (".nii.gz" if fmt == "dicom" else fmt)
    elif scan.kind == "kaggle":
        paths["mask"] = base  # a folder of <patient>_<n>_mask.tif (and _probabilities.tif)
    else:
        ext = ".tif" if scan.paths[0].lower().endswith((".tif", ".tiff")) else ".png"
        paths["mask"] = base + "_mask" + ext
        if save_probabilities:
            paths["probabilities"] = base + "_probabilities.tif"
    if overlays:
        paths["overlay"] = os.path.join(out, "overlays", scan.name + ".png")
    return paths


def _check_replaceable(path: str, overwrite: bool) -> None:
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
def _new_folder(path: str, overwrite: bool):
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
            _check_replaceable(path, overwrite)
            old = temporary_folder(path)  # an empty folder: the old one renames over it
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _as_mask_image(labels: np.ndarray, num_classes: int, path: str = "", sixteen_bit: bool = False) -> np.ndarray:
    """Binary labels as 0/255 (as kaggle_3m masks are), several classes as their
    numbers; a regression's outputs as float32, or for a PNG `path` rounded and
    clipped to 8 bits (16 with `sixteen_bit`: a 16-bit input or target)."""
    if labels.dtype.kind == "f" and path.endswith(".png"):
        dtype = np.uint16 if sixteen_bit else np.uint8
        return np.clip(np.round(labels), 0, np.iinfo(dtype).max).astype(dtype)
    if labels.dtype.kind == "f":
        return labels.astype(np.float32)
    return (labels * 255).astype(np.uint8) if num_classes <= 2 else labels.astype(np.uint8)


def write_outputs(scan: Scan, loaded: LoadedScan, prediction: Prediction, paths: dict[str, str], *,
                  num_classes: int, overwrite: bool, save_probabilities: bool, sixteen_bit: bool = False) -> None:
    """The label map (and probabilities) of `scan` in its own format and
    geometry; a regression's PNG in 16 bits when the picture, or with
    `sixteen_bit` the run's targets, were 16-bit."""
    labels = prediction.labels.astype(np.float32 if prediction.labels.dtype.kind == "f" else np.uint8)
    probabilities = prediction.probabilities
    foreground_probability = probabilities[..., -1] if probabilities.shape[-1] <= 2 else probabilities
    mask = paths["mask"]
    os.makedirs(os.path.dirname(mask), exist_ok=True)
    if scan.kind == "kaggle":
        with _new_folder(mask, overwrite) as tmp:
            for s, n in enumerate(loaded.slice_numbers):
                write_image(os.path.join(tmp, f"{scan.key}_{n}_mask.tif"), _as_mask_image(labels[:, :, s],
                                                                                          num_classes))
                if save_probabilities:
                    write_image(os.path.join(tmp, f"{scan.key}_{n}_probabilities.tif"),
                                foreground_probability[:, :, s].astype(np.float32))
        return
    if scan.kind == "image":
        write_image(mask, _as_mask_image(labels, num_classes, mask, sixteen_bit or loaded.image.dtype == np.uint16))
        if save_probabilities:
            write_image(paths["probabilities"], foreground_probability.astype(np.float32))
        return
    geometry = loaded.geometry
    if mask.endswith(tuple(OUTPUT_FORMATS[:-1])):
        write_volume(mask, Volume(labels, geometry))
    else:
        if labels.dtype.kind == "f":
            raise DataError(f"{mask}: DICOM series hold integer labels; pass --output_format=.nii.gz for the "
                            "float outputs of a regression run")
        with _new_folder(mask, overwrite) as tmp:
            os.rmdir(tmp)  # write_dicom_series makes the folder itself
            write_dicom_series(tmp, Volume(labels, geometry), series_description="unet_jax prediction")
    if save_probabilities:
        write_volume(paths["probabilities"], Volume(foreground_probability.astype(np.float32), geometry))


# --- labels and per-case numbers ------------------------------------------------------

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


def find_label(scan: Scan, labels: str) -> str:
    """The label file of a volume or picture scan: `labels` itself (a file),
    <name>.<ext> or <name>_mask.<ext> in the `labels` folder, or the file
    matching the glob `labels` in the scan's folder."""
    if os.path.isfile(labels):
        return labels
    if os.path.isdir(labels):
        for stem in (scan.name, scan.key, scan.key + "_mask"):
            for suffix in (*VOLUME_SUFFIXES, ".png", ".tif", ".tiff", ".bmp"):
                if os.path.isfile(candidate := os.path.join(labels, stem + suffix)):
                    return candidate
        if scan.kind == "volume" and os.path.isdir(candidate := os.path.join(labels, scan.name)):
            return candidate  # a DICOM series folder
        raise DataError(f"{labels}: no label named {scan.name}.<ext> for {scan.paths[0]}; name the labels like "
                        "their scans, or pass --skip_bad")
    hit = _pattern_hit(scan.folder, labels, scan.key)
    if hit is None:
        raise DataError(f"{scan.folder}: no file matches --labels={labels!r} for case {scan.name}; fix the pattern "
                        "or pass --skip_bad")
    return hit


def _label_files(scan: Scan, labels: str | None) -> list[str]:
    """The label files --labels names for `scan` (a kaggle_3m patient's folder
    of masks), to keep outputs off them; none where they cannot be found (the
    case then fails when it is scored)."""
    if labels is None:
        return []
    if scan.kind == "kaggle":
        if not os.path.isdir(labels):
            return []  # the masks beside the slices, inside the scan's own folder
        folder = os.path.join(labels, scan.key)
        return [folder] if os.path.isdir(folder) else \
            [os.path.join(labels, n) for n in os.listdir(labels) if fnmatch.fnmatch(n, f"{scan.key}_*_mask.tif")]
    try:
        return [find_label(scan, labels)]
    except DataError:
        return []


def load_target(scan: Scan, loaded: LoadedScan, labels: str, predictor: Predictor) -> np.ndarray:
    """The scan's reference labels on its own grid, as the run's classes; a
    regression's target image as float32, in its own units."""
    regression = isinstance(predictor.task, tasks.Regression)
    classes = 256 if regression else predictor.task.num_classes
    if regression and scan.kind == "kaggle":
        raise DataError(f"{scan.paths[0]}: kaggle_3m folders hold masks, not regression targets; give the targets "
                        "as pictures or volumes")
    if regression and scan.kind == "image":
        picture = read_image(find_label(scan, labels), max_voxels=predictor.max_voxels)
        target = (picture[..., 0] if picture.ndim == 3 else picture).astype(np.float32)
    elif regression:
        target = volumes.load_target(find_label(scan, labels), Volume(loaded.image[..., 0], loaded.geometry),
                                     scan.paths[0], max_voxels=predictor.max_voxels)
    elif scan.kind == "kaggle":
        if os.path.isdir(labels):
            folder = os.path.join(labels, scan.key) if os.path.isdir(os.path.join(labels, scan.key)) else labels
            masks = {n: os.path.join(folder, f"{scan.key}_{n}_mask.tif") for n in loaded.slice_numbers}
        else:
            masks = lgg.patient_files(scan.paths[0])[1]
        missing = [n for n in loaded.slice_numbers if n not in masks or not os.path.exists(masks[n])]
        if missing:
            raise DataError(f"{scan.paths[0]}: no mask for slice {missing[0]} ({scan.key}_{missing[0]}_mask.tif); "
                            "add it or pass --skip_bad")
        target = np.stack([_binary_picture(lgg.read_tiff(masks[n], predictor.max_voxels), classes)
                           for n in loaded.slice_numbers], axis=2)
    elif scan.kind == "image":
        target = _binary_picture(read_image(find_label(scan, labels), max_voxels=predictor.max_voxels), classes)
    else:
        path = find_label(scan, labels)
        label_map = {int(k): v for k, v in predictor.manifest.get("preprocessing", {}).get("label_map", {}).items()}
        target = volumes.load_label(path, Volume(loaded.image[..., 0], loaded.geometry), scan.paths[0], label_map,
                                    max_voxels=predictor.max_voxels)
    expected = loaded.image.shape[:-1]
    if target.shape != expected:
        raise DataError(f"{scan.paths[0]}: its labels have shape {list(target.shape)}, the scan {list(expected)}; "
                        "give the labels of this scan")
    return target


def spacing_of(loaded: LoadedScan) -> tuple[float, ...] | None:
    return None if loaded.geometry is None else tuple(loaded.geometry.spacing)


def case_summary(prediction: Prediction, spacing) -> dict:
    """predictions.csv's numbers for one case: foreground voxels and ml, the
    connected lesions, the largest one, and the mean probability of the
    predicted class inside the prediction."""
    labels, probabilities = prediction.labels, prediction.probabilities
    if labels.dtype.kind == "f":  # regression outputs
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


# --- the command -----------------------------------------------------------------------

CSV_COLUMNS = ["case", "status", "input", "output", "shape", "spacing", "seconds", "voxels", "volume_ml",
               "components", "largest_voxels", "largest_ml", "mean_probability", "mean_output",
               "largest_component_of", "note"]


def predict_files(predictor: Predictor, input_path: str, output: str, *, labels: str | None = None,
                  save_probabilities: bool = False, overwrite: bool = False, skip_bad: bool = False,
                  output_format: str | None = None, overlays: bool = True, progress: bool = True) -> dict:
    """Predicts every scan under `input_path` into `output` (see the module
    doc); returns {"cases": predictions.csv rows, "scores": per-case scores
    or None, "summary": their means or None, "skipped": [(input, reason)]}."""
    output = os.path.abspath(output)
    scans, problems = find_scans(input_path, predictor.manifest)
    if problems and not skip_bad:
        raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    if output_format == "dicom" and any(s.kind != "volume" for s in scans):
        raise DataError("--output_format=dicom: only volume scans can be written as DICOM series")
    planned = {s.name: output_paths(s, output, output_format, save_probabilities, overlays) for s in scans}
    tables = [os.path.join(output, n) for n in ("predictions.csv", "scores.csv", "scores_summary.json")]
    inputs = {pathlib.Path(os.path.realpath(p)) for s in scans for p in (*s.paths, *_label_files(s, labels))}
    around = {folder: i for i in inputs for folder in i.parents}  # the folders that hold an input
    for path in [p for paths in planned.values() for p in paths.values()] + tables:
        real = pathlib.Path(os.path.realpath(path))
        # An output on an input, inside one (a kaggle_3m folder) or around one (a case folder replaced by a series).
        hit = next((p for p in (real, *real.parents) if p in inputs), None) or around.get(real)
        if hit:
            raise DataError(f"{path}: would overwrite an input ({hit}); choose an --output folder apart from the "
                            "scans and labels")
        _check_replaceable(path, overwrite)
    writes = jax.process_index() == 0  # every process predicts (windows are sharded), one writes
    if writes:
        os.makedirs(output, exist_ok=True)
    rows, score_rows, skipped = [], [], [(p.file, p.reason) for p in problems]
    num_classes = getattr(predictor.task, "num_classes", 0)
    # data_prep.pictures divided 16-bit targets by 65535: their predictions are written in 16 bits.
    sixteen_bit = predictor.manifest.get("target", {}).get("divisor") == pictures.TARGET_DIVISORS[np.dtype(np.uint16)]
    # The classes cut to their largest component, recorded with every case.
    kept = " ".join(map(str, postprocessing_lib.classes_of(predictor.postprocess)))
    for scan in tqdm(scans, desc="cases", unit="case", disable=not progress):
        start = time.time()
        paths = planned[scan.name]
        try:
            loaded = load_scan(scan, predictor.max_voxels)
            target = None if labels is None else load_target(scan, loaded, labels, predictor)
            prediction = predictor.predict(loaded.image, geometry=loaded.geometry, foreground=loaded.foreground,
                                           name=scan.paths[0])
            if writes:
                write_outputs(scan, loaded, prediction, paths, num_classes=num_classes, overwrite=overwrite,
                              save_probabilities=save_probabilities, sixteen_bit=sixteen_bit)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append((scan.paths[0], str(e)))
            rows.append({"case": scan.name, "status": "skipped", "input": scan.paths[0], "note": str(e)})
            continue
        spacing = spacing_of(loaded)
        summary = case_summary(prediction, spacing)
        if target is not None:
            slice_spacing = None if spacing is None else (
                [spacing[-1], *spacing[:-1]] if len(spacing) == 3 else [1.0, *spacing])
            pred = prediction.labels if prediction.labels.dtype.kind == "f" else prediction.labels.astype(np.uint8)
            volumes_ = {0: (as_slices(pred), as_slices(target), np.arange(as_slices(pred).shape[0]))}
            score = predictor.task.table(volumes_, [scan.name], None if spacing is None else {0: slice_spacing})[0]
            score_rows.append({k: v for k, v in score.items() if k != "patient_index"})
        if "overlay" in paths and writes:
            _overlay(scan, loaded, prediction, target, summary, paths["overlay"])
        for note in prediction.notes:
            logging.warning(note)
        rows.append({"case": scan.name, "status": "ok", "input": scan.paths[0], "output": paths["mask"],
                     "shape": "x".join(map(str, prediction.labels.shape)),
                     "spacing": "" if spacing is None else "x".join(f"{v:g}" for v in spacing),
                     "seconds": round(time.time() - start, 3), **summary, "largest_component_of": kept,
                     "note": " ".join(prediction.notes)})
    result = {"cases": rows, "scores": None, "summary": None, "skipped": skipped}
    if labels is not None:
        result["scores"] = score_rows
        result["summary"] = metrics.mean_over_patients(score_rows, predictor.task.case_metrics) if score_rows else {}
    if not writes:
        return result
    _write_csv(os.path.join(output, "predictions.csv"), rows, CSV_COLUMNS)
    if labels is not None:
        _write_csv(os.path.join(output, "scores.csv"), score_rows, list(dict.fromkeys(k for r in score_rows for k in r)))
        write_json(os.path.join(output, "scores_summary.json"),
                   {"workdir": predictor.workdir, "postprocessing": predictor.postprocess,
                    "input": os.path.abspath(input_path), "labels": labels,
                    "num_cases": len(score_rows), "mean": result["summary"],
                    "skipped": [{"file": f, "reason": r} for f, r in skipped]})
    return result


def _write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                                 round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def _overlay(scan: Scan, loaded: LoadedScan, prediction: Prediction, target, summary: dict, path: str) -> None:
    """overlays/<case>.png: the slices with the most foreground of the display
    channel (FLAIR for kaggle_3m slices, else the first); for a regression,
    input, output and (given) target and error."""

    def view(array: np.ndarray) -> np.ndarray:
        # Volumes in radiological view: rows along y (anterior at the top in LPS), columns
        # along x (the patient's right on the left); as_slices alone puts x down the rows.
        slices = as_slices(array)
        return np.swapaxes(slices, 1, 2) if loaded.geometry is not None and array.ndim == 3 else slices

    channel = 1 if scan.kind == "kaggle" and loaded.image.shape[-1] > 1 else 0
    if prediction.labels.dtype.kind == "f":
        report.regression_prediction_figure(
            view(loaded.image[..., channel].astype(np.float32)), view(prediction.labels.astype(np.float32)), path,
            title=f"{scan.name}: mean output {summary['mean_output']:.4g}",
            target=None if target is None else view(target.astype(np.float32)), slice_numbers=loaded.slice_numbers)
        return
    volume = (f"{summary['volume_ml']:.2f} ml" if summary.get("volume_ml") is not None
              else f"{summary['voxels']} voxels")
    probabilities = prediction.probabilities
    confidence = probabilities[..., 0] if probabilities.shape[-1] == 1 else 1 - probabilities[..., 0]
    report.prediction_figure(view(loaded.image[..., channel].astype(np.float32)), view(prediction.labels), path,
                             title=f"{scan.name}: {volume}, {summary['components']} connected lesion(s)",
                             target=None if target is None else view(target), slice_numbers=loaded.slice_numbers,
                             probabilities=view(confidence))


def run(workdir: str, input_path: str, output: str, **options) -> dict:
    """The command: a Predictor from `workdir` (runs separated by commas: an
    ensemble), then `predict_files`; logs a summary."""
    if not input_path or not output:
        raise ConfigError("--mode=predict needs --input=SCAN_OR_FOLDER and --output=FOLDER")
    predictor = Predictor.from_workdirs([w.strip() for w in workdir.split(",") if w.strip()],
                                        tta=options.pop("tta", False), lcc=options.pop("lcc", False),
                                        postprocessing=options.pop("postprocessing", "auto"),
                                        batch_size=options.pop("batch_size", None),
                                        max_voxels=options.pop("max_voxels", MAX_VOXELS))
    result = predict_files(predictor, input_path, output, **options)
    done = [r for r in result["cases"] if r["status"] == "ok"]
    seconds = sum(r["seconds"] for r in done)
    print(f"predicted {len(done)} case(s) into {os.path.abspath(output)} "
          f"({seconds / max(len(done), 1):.2f} s per case)")
    if predictor.postprocess:
        print(f"post-processing: {describe(predictor.postprocess)}")
    if result["summary"]:
        print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in result["summary"].items()))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])}:\n" + "\n".join(f"  {f}: {r}" for f, r in result["skipped"]))
    return result


def run_from_flags(workdir: str) -> dict:
    f = flags.FLAGS
    return run(workdir, f.input, f.output, tta=f.tta, lcc=f.lcc, postprocessing=f.postprocessing,
               batch_size=f.batch_size, labels=f.labels,
               save_probabilities=f.save_probabilities, overwrite=f.overwrite, skip_bad=f.skip_bad,
               output_format=f.output_format, overlays=f.overlays, max_voxels=f.max_voxels)


def main(argv) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        parallel.initialize_distributed()
        run_from_flags(flags.FLAGS.workdir)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from absl import app

    flags.DEFINE_string("workdir", None, "Folder of a trained run (config.json, train_manifest.json, checkpoints/), "
                                         "or several separated by commas: an ensemble.")
    flags.mark_flags_as_required(["workdir", "input", "output"])
    jax.config.config_with_absl()
    app.run(main)
