"""Reading, checking and preprocessing one case of volumes: what data_prep.volumes does to every training
case and prediction repeats on a new scan, with the settings the training data's manifest records."""

from __future__ import annotations

import dataclasses

import numpy as np

from unet_jax.data.medical_io import MAX_VOXELS, Volume, read_volume, resample
from unet_jax.errors import DataError
from unet_jax.preprocess import intensity
from unet_jax.preprocess.layouts import Case

LABEL_TOLERANCE = 1e-3  # a float-stored label this close to an integer counts as that integer


def parse_label_map(text: str) -> dict[int, int]:
    """'1,2,3,4->1' or '2->1;1,3->2;4->3' as {source: target}; unnamed labels keep their value."""
    mapping: dict[int, int] = {}
    for rule in filter(None, (r.strip() for r in text.replace(" ", ";").split(";"))):
        sources, arrow, target = rule.partition("->")
        try:
            if not arrow:
                raise ValueError
            for s in sources.split(","):
                mapping[int(s)] = int(target)
        except ValueError:
            raise DataError(f"--label_map={text!r}: write rules like '1,2,3,4->1' or '2->1;4->3'") from None
    if any(v < 0 or v > 255 for v in mapping.values()):
        raise DataError(f"--label_map={text!r}: target labels must lie in 0..255")
    return mapping


def check_finite(volume: Volume, path: str) -> None:
    """Refuses (DataError naming `path`) a float volume with NaN or infinite voxels."""
    bad = ~np.isfinite(volume.array) if volume.array.dtype.kind == "f" else None
    if bad is not None and bad.any():
        raise DataError(f"{path}: {int(bad.sum())} NaN or infinite voxels; fix or remove the volume, "
                        "or pass --skip_bad")


def check_same_grid(volume: Volume, path: str, reference: Volume, reference_path: str) -> None:
    """Refuses (DataError naming both files) a volume that is not on the grid of `reference`."""
    g, r = volume.geometry, reference.geometry
    if volume.array.shape != reference.array.shape or not g.same_grid(r):
        raise DataError(f"{path}: grid {volume.array.shape} at spacing {np.round(g.spacing, 3).tolist()}, origin "
                        f"{np.round(g.origin, 2).tolist()} differs from {reference_path}'s {reference.array.shape} at "
                        f"{np.round(r.spacing, 3).tolist()}, {np.round(r.origin, 2).tolist()}; resample one onto the "
                        "other or pass --skip_bad")


def load_label(path: str, grid: Volume, grid_path: str, label_map: dict[int, int], *,
               max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """The label volume as uint8 labels on the grid of `grid`; float-stored
    integral labels are accepted, anything else refused."""
    volume = read_volume(path, max_voxels=max_voxels)
    check_same_grid(volume, path, grid, grid_path)
    labels = volume.array
    if labels.dtype.kind == "f":
        check_finite(volume, path)
        rounded = np.round(labels)
        if np.abs(labels - rounded).max(initial=0) > LABEL_TOLERANCE:
            raise DataError(f"{path}: label values like {labels[np.abs(labels - rounded) > LABEL_TOLERANCE][0]:.3f} "
                            "are not integers; is this an image rather than a label?")
        labels = rounded
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()}; need 0..255")
    labels = labels.astype(np.uint8)
    if label_map:
        lookup = np.arange(256, dtype=np.uint8)
        for source, target in label_map.items():
            if 0 <= source < 256:
                lookup[source] = target
        labels = lookup[labels]
    return labels


def load_target(path: str, grid: Volume, grid_path: str, *, max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """A regression target (e.g. the post-contrast scan) as float32 on the grid of `grid`."""
    volume = read_volume(path, max_voxels=max_voxels)
    if volume.array.ndim != 3:
        raise DataError(f"{path}: a {volume.array.ndim}-D target of shape {volume.array.shape}; give one 3-D volume")
    check_same_grid(volume, path, grid, grid_path)
    check_finite(volume, path)
    return volume.array.astype(np.float32)


def read_case(case: Case, label_map: dict[int, int], target: bool = False, *, max_voxels: int = MAX_VOXELS
              ) -> tuple[list[Volume], np.ndarray | None, np.ndarray | None]:
    """Reads and checks one case's files: the channel volumes (3-D, finite, on
    one grid), its labels (uint8 on that grid, remapped; with `target` the
    label file is a regression target, float32) or None, and its foreground
    mask or None. A file whose header promises more than `max_voxels` voxels
    is refused before it is decoded."""
    channels = []
    for path in case.channels:
        volume = read_volume(path, max_voxels=max_voxels)
        if volume.array.ndim != 3:
            raise DataError(f"{path}: a {volume.array.ndim}-D volume of shape {volume.array.shape}; each channel "
                            "must be one 3-D file (split 4-D series into one file per channel)")
        check_finite(volume, path)
        if channels:
            check_same_grid(volume, path, channels[0], case.channels[0])
        channels.append(volume)
    if case.label is None:
        labels = None
    elif target:
        labels = load_target(case.label, channels[0], case.channels[0], max_voxels=max_voxels)
    else:
        labels = load_label(case.label, channels[0], case.channels[0], label_map, max_voxels=max_voxels)
    foreground = None
    if case.mask is not None:
        mask_volume = read_volume(case.mask, max_voxels=max_voxels)
        check_same_grid(mask_volume, case.mask, channels[0], case.channels[0])
        foreground = mask_volume.array > 0
    return channels, labels, foreground


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every case is turned into records (all of it goes into the manifest)."""

    intensity: tuple[str, ...]  # one per channel
    ct_window: tuple[float, float]
    label_map: dict[int, int]
    spacing: tuple[float, ...] | None
    crop: bool
    slices: str | None
    slice_size: tuple[int, int] | None
    # Regression (--target): how the float target is scaled; None: labels, not a target.
    target: str | None = None


def settings_from_manifest(manifest: dict) -> Settings:
    """The `Settings` a prepared folder was made with, from its manifest (to
    prepare new scans as the run's training data was)."""
    pre = manifest["preprocessing"]
    window = next((tuple(i["window"]) for i in pre["intensity"] if "window" in i), intensity.CT_WINDOWS["lung_wide"])
    return Settings(tuple(i["method"] for i in pre["intensity"]), window,
                    {int(k): int(v) for k, v in pre["label_map"].items()},
                    tuple(pre["spacing"]) if pre["spacing"] else None, bool(pre["crop"]), pre["slices"],
                    tuple(pre["slice_size"]) if pre["slice_size"] else None,
                    manifest["target"]["method"] if manifest.get("task") == "regression" else None)


def preprocess(channels: list[Volume], labels: np.ndarray | None, foreground: np.ndarray | None,
               settings: Settings, name: str, *, max_voxels: int = MAX_VOXELS
               ) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Channels on one grid -> the record's image float32 [*spatial, C], labels
    uint8 (zeros without `labels`; a regression's float32 target, scaled as
    `settings.target` says), geometry and per-channel statistics (with the
    target's scale): resampled to `settings.spacing`, cropped to the
    foreground's bounding box, intensities normalised. Prediction calls it
    too, so new scans get exactly the training preprocessing; `name` (a file)
    heads its errors. A resampled grid over `max_voxels` is refused before it
    is allocated."""
    first = channels[0]
    regression = settings.target is not None
    if labels is None:
        labels = np.zeros(first.array.shape, np.float32 if regression else np.uint8)
    source = first.geometry
    geometry = {"source": {**source.to_dict(), "shape": list(first.array.shape)}}
    if settings.spacing is not None:
        if len(settings.spacing) != source.ndim:
            raise DataError(f"--spacing={settings.spacing}: give {source.ndim} values for {name}")
        try:
            channels = [resample(v, settings.spacing, label=False, max_voxels=max_voxels) for v in channels]
        except DataError as e:  # a grid too large: resample knows no file name
            raise DataError(f"{name}: {e}") from None
        labels = resample(Volume(labels, source), settings.spacing, label=not regression, max_voxels=max_voxels).array
        if foreground is not None:
            foreground = resample(Volume(foreground.astype(np.uint8), source), settings.spacing, label=True,
                                  max_voxels=max_voxels).array > 0
    spacing = tuple(channels[0].geometry.spacing)
    image = np.stack([v.array for v in channels], axis=-1).astype(np.float32)
    geometry["resampled_shape"] = list(image.shape[:-1])
    if foreground is None:
        foreground = np.any(image != 0, axis=-1)
    if settings.crop and foreground.any():
        box = [(int(i.min()), int(i.max()) + 1) for i in np.nonzero(foreground)]
    else:
        box = [(0, n) for n in image.shape[:-1]]
    crop = tuple(slice(lo, hi) for lo, hi in box)
    image, labels, foreground = image[crop], labels[crop], foreground[crop]
    geometry["crop"] = [list(b) for b in box]
    extra = {}
    if settings.target == "input_percentile":
        scale = intensity.target_scale(image[..., 0], foreground)
        labels = np.maximum(labels, 0) / np.float32(scale)
        extra["target"] = {"scale": round(scale, 6)}
    stats = []
    for c, method in enumerate(settings.intensity):
        image[..., c], s = intensity.normalize_channel(image[..., c], method, foreground, settings.ct_window)
        stats.append(s)
    return image, labels, {"spacing": list(spacing), **geometry}, {"channels": stats, **extra}
