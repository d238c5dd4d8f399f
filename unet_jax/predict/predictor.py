"""`Predictor`: a trained run, or an ensemble of runs, that predicts raw
images (arrays in, label maps and probabilities out), preprocessing them
exactly as the run's training data was prepared."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from unet_jax import inference, parallel, tasks
from unet_jax import postprocessing as postprocessing_lib
from unet_jax.builders import input_shape
from unet_jax.data import pipeline
from unet_jax.data.medical_io import MAX_VOXELS, Geometry, Volume, plane_axis, resample_to
from unet_jax.errors import ConfigError, DataError
from unet_jax.run import Run, compile_eval_steps, read_run

# Input preparation is the training data's own code, so a new scan is read and
# normalised exactly as the training data was.
from unet_jax.preprocess import intensity, lgg, pictures, volumes

LGG_DATASET = "lgg_kaggle_3m"  # the manifest's `dataset` of data_prep.lgg
PICTURES_DATASET = "pictures"  # of data_prep.pictures: 8-bit slices, normalised by the pipeline as LGG's are


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
        # data_prep.pictures divided 16-bit targets by 65535: their predictions are written in 16 bits.
        self.sixteen_bit = manifest.get("target", {}).get("divisor") == pictures.TARGET_DIVISORS[np.dtype(np.uint16)]
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
        self.predict_step = compile_eval_steps(config, self.task, mesh)[1] if predict_step is None else predict_step

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
        mean, std = intensity.intensity_stats(slices)
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
