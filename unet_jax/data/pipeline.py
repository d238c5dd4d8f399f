"""grain pipelines over prepared TFRecord shards: train, and evaluation that sees
every example exactly once.

An element is a dict of NumPy arrays:
  image          float32 [H, W, C], normalised (then augmented, in training)
  mask           float32 [H, W, 1], labels (0/1 for LGG), or a regression's
                 float target (records with mask_dtype "float32")
  patient_index  int32, the patient's position in its split (-1 for padding)
  slice          int32, slice number (-1 for padding)
  valid          bool, False for the padding that fills the last eval batch
Volume records (data_prep --volume_depth) give image [H, W, D, C], mask
[H, W, D, 1], `slice` the first slice number and `slices` int32 [D], the
slice numbers along depth (-1 for padding slices).
Batches stack these along a new leading axis. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import grain
from absl import flags
import numpy as np

from unet_jax.data import MANIFEST, SPLITS_FILE
from unet_jax.data.augment import AugmentOptions, augment_slice, sample_patch
from unet_jax.data.pathology import PathologyOptions, simulate_pathology
from unet_jax.data.tfrecord import TFRecordSource, decode_example
from unet_jax.errors import DataError

# "patient_zscore": per patient and channel, over the voxels where any channel is
# non-zero (the head), with statistics that data_prep stores in each record;
# "zscore": per image (or volume) and channel, over all voxels; "scale": the
# uint8 range to [0, 1]; "none": as stored (data_prep.volumes normalises
# intensities itself, per channel, and records how in the manifest).
NORMALIZATIONS = ("patient_zscore", "zscore", "scale", "none")


def read_manifest(data_dir: str, name: str = MANIFEST, fold: int | None = None) -> dict:
    """Loads a prepared folder's manifest.json (or the copy `name` a workdir
    keeps), with a one-line error if it is absent or unreadable; with `fold`,
    as that cross-validation fold sees it (`fold_view`)."""
    path = os.path.join(data_dir, name)
    if not os.path.exists(path):
        raise DataError(f"{path}: no prepared data here; make it with "
                        f"python -m data_prep.lgg --data_dir=PATH/TO/kaggle_3m --out_dir={data_dir}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); rerun data_prep with --overwrite") from None
    if any("num_examples" not in s for s in manifest.get("splits", {}).values()):
        raise DataError(f"{path}: written by an older data_prep (no per-split num_examples); "
                        "rerun data_prep with --overwrite")
    return manifest if fold is None else fold_view(data_dir, manifest, fold)


def read_splits(data_dir: str) -> dict:
    """A prepared folder's splits.json (cross-validation folds), with a one-line error if absent or unreadable."""
    path = os.path.join(data_dir, SPLITS_FILE)
    if not os.path.exists(path):
        raise DataError(f"{path}: no cross-validation folds here; prepare the data with python -m data_prep.volumes "
                        "--cv_folds=5, or unset config.data.fold")
    try:
        with open(path) as f:
            splits = json.load(f)
        if not all(set(f) == {"train", "val"} for f in splits["folds"]):
            raise KeyError("folds")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a splits file of data_prep.volumes ({e}); prepare the data again with "
                        "--cv_folds and --overwrite") from None
    return splits


def fold_view(data_dir: str, manifest: dict, fold: int) -> dict:
    """The manifest as cross-validation fold `fold` of splits.json sees it: its
    `train` and `val` splits are the fold's cases of the stored `train` split
    (every non-test case, written by data_prep.volumes --cv_folds), each
    listing the `records` it reads and the stored `patient_index` of its
    cases; `test` is unchanged. Cases keep the stored order."""
    folds = read_splits(data_dir)["folds"]
    if not 0 <= fold < len(folds):
        raise DataError(f"config.data.fold={fold}: {os.path.join(data_dir, SPLITS_FILE)} has {len(folds)} folds; "
                        f"choose 0..{len(folds) - 1}")
    stored = manifest["splits"]["train"]
    position = {p["patient"]: i for i, p in enumerate(stored["patients"])}
    counts = [p.get("records", 1) for p in stored["patients"]]  # one record per case before per-case counts
    first = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()

    def subset(names: list[str]) -> dict:
        unknown = [n for n in names if n not in position]
        if unknown:
            raise DataError(f"{os.path.join(data_dir, SPLITS_FILE)}: fold {fold} names case {unknown[0]!r}, which "
                            "the stored train split lacks; prepare the data again with --cv_folds and --overwrite")
        index = sorted(position[n] for n in names)
        records = [r for i in index for r in range(first[i], first[i + 1])]
        return {"num_patients": len(index), "num_examples": len(records), "num_slices": len(records),
                "patients": [stored["patients"][i] for i in index], "shards": stored["shards"],
                "records": records, "patient_index": index}

    return {**manifest, "fold": fold, "num_folds": len(folds),
            "splits": {**manifest["splits"], **{k: subset(v) for k, v in folds[fold].items()}}}


def num_channels(manifest: dict) -> int:
    """Input channels of a prepared folder (volumes of several sizes have no one image_shape)."""
    return manifest.get("num_channels") or manifest["image_shape"][-1]


def spatial_dims(manifest: dict) -> int:
    """2 for slices, 3 for volumes."""
    if manifest.get("image_shape"):
        return len(manifest["image_shape"]) - 1
    return len(next(p["shape"] for s in manifest["splits"].values() for p in s["patients"]))


class RecordSubset:
    """The records of a source at `indices`, in that order (a fold's cases)."""

    def __init__(self, source: TFRecordSource, indices: list[int]):
        self._source, self._indices = source, list(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> bytes:
        return self._source[self._indices[index]]


def split_source(data_dir: str, split: str, fold: int | None = None) -> TFRecordSource | RecordSubset:
    """Random-access source over the shards of one split, as the manifest lists
    them; with `fold`, over that cross-validation fold's records."""
    splits = read_manifest(data_dir, fold=fold)["splits"]
    if split not in splits:
        raise DataError(f"{data_dir}: no split {split!r}; the manifest has {sorted(splits)}")
    paths = [os.path.join(data_dir, s["file"]) for s in splits[split]["shards"]]
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"{p}: shard listed in the manifest is missing; rerun data_prep with --overwrite")
    source = TFRecordSource(paths)
    return RecordSubset(source, splits[split]["records"]) if "records" in splits[split] else source


def split_decoder(data_dir: str, split: str, fold: int | None = None):
    """`decode` for the records of a split: with `fold`, patient_index is
    renumbered from the stored split's order to the fold split's, so it
    indexes the fold's case list as it does an ordinary split's."""
    if fold is None:
        return decode
    stored = read_manifest(data_dir, fold=fold)["splits"][split].get("patient_index")
    if stored is None:  # the test split: stored as it is
        return decode
    return functools.partial(_decode_renumbered, numbers={s: i for i, s in enumerate(stored)})


def _decode_renumbered(record: bytes, numbers: dict[int, int]) -> dict[str, np.ndarray]:
    element = decode(record)
    element["patient_index"] = np.int32(numbers[int(element["patient_index"])])
    return element


def decode(record: bytes) -> dict[str, np.ndarray]:
    """Example bytes -> float32 image [*spatial, C] and mask [*spatial, 1], ids,
    the patient's intensity statistics and the voxel spacing where data_prep
    stored them."""
    ex = decode_example(record)
    shape = tuple(int(d) for d in ex["shape"])
    dtype = np.dtype(ex.get("image_dtype", b"uint8").decode())  # data_prep.volumes stores float32
    mask_dtype = np.dtype(ex.get("mask_dtype", b"uint8").decode())  # float32: a regression target
    element = {
        "image": np.frombuffer(ex["image"], dtype).reshape(shape).astype(np.float32),
        "mask": np.frombuffer(ex["mask"], mask_dtype).reshape(*shape[:-1], 1).astype(np.float32),
        "patient_index": np.int32(ex["patient_index"][0]),
        "slice": np.int32(ex["slice"][0]),
        "valid": np.bool_(True),
    }
    if "slices" in ex:
        element["slices"] = ex["slices"].astype(np.int32)
    for key in ("channel_mean", "channel_std", "spacing"):
        if key in ex:
            element[key] = ex[key]
    return element


def continuous_targets(manifest: dict) -> bool:
    """Whether a prepared folder's masks are a regression's float targets."""
    return manifest.get("task") == "regression"


def augment(element: dict, rng: np.random.Generator, opts: AugmentOptions, continuous: bool = False) -> dict:
    image, mask = augment_slice(element["image"], element["mask"][..., 0], rng, opts, continuous)
    return {**element, "image": image, "mask": mask[..., None]}


def add_pathology(element: dict, rng: np.random.Generator, opts: PathologyOptions) -> dict:
    """`simulate_pathology` on the element's image; the label stays the lung."""
    image, _ = simulate_pathology(element["image"], element["mask"][..., 0], rng, opts)
    return {**element, "image": image}


def normalize(element: dict, method: str) -> dict:
    """Normalises the image by `method` (see NORMALIZATIONS) and drops the
    statistics it used.

    'patient_zscore' maps each channel to zero mean and unit variance over the
    patient's head (voxels where any channel is non-zero) and leaves the rest
    at 0, as nnU-Net does for MRI, so a patient whose FLAIR is three times
    darker gets the same input; 'zscore' does it per image (or volume) over all
    voxels; a constant channel becomes 0.
    """
    element = dict(element)
    mean, std = element.pop("channel_mean", None), element.pop("channel_std", None)
    image = element["image"]
    if method == "none":
        pass
    elif method == "scale":
        image = image / 255.0
    elif method == "zscore":
        spatial = tuple(range(image.ndim - 1))
        image = (image - image.mean(axis=spatial, keepdims=True)) / np.maximum(
            image.std(axis=spatial, keepdims=True), 1e-6)
    elif method == "patient_zscore":
        head = np.any(image != 0, axis=-1, keepdims=True)
        image = np.where(head, (image - mean) / np.maximum(std, 1e-6), 0.0)
    else:
        raise ValueError(f"normalization={method!r}: choose one of {NORMALIZATIONS}")
    element["image"] = image.astype(np.float32)
    return element


def _check(data_dir: str, batch_size: int, shard_index: int, shard_count: int, normalization: str) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must lie in [0, shard_count={shard_count})")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}: choose one of {NORMALIZATIONS}")
    check_normalization(data_dir, read_manifest(data_dir), normalization)


def check_normalization(data_dir: str, manifest: dict, normalization: str) -> None:
    """DataError unless the prepared data carries what `normalization` needs."""
    path = os.path.join(data_dir, MANIFEST)
    methods = [m["method"] for m in manifest.get("preprocessing", {}).get("intensity", [])]
    if any(m != "none" for m in methods) and normalization != "none":
        raise DataError(f"{path}: data_prep.volumes normalised these intensities already (see the manifest's "
                        f"preprocessing); set config.data.normalization=none, not {normalization}")
    if normalization == "patient_zscore" and not manifest.get("intensity_stats"):
        raise DataError(f"{path}: prepared without per-patient intensity statistics; "
                        "rerun data_prep with --overwrite, or set config.data.normalization=scale")


def patch(element: dict, rng: np.random.Generator, patch_size: tuple[int, ...], foreground_prob: float,
          opts: AugmentOptions | None, continuous: bool = False) -> dict:
    """A random (augmented) patch of a whole-volume element, with its ids."""
    image, mask = sample_patch(element["image"], element["mask"][..., 0], patch_size, rng, opts, foreground_prob,
                               continuous)
    return {"image": image, "mask": mask[..., None],
            **{k: element[k] for k in ("patient_index", "slice", "valid")}}


@dataclasses.dataclass(frozen=True)
class PatchOptions:
    """Patch training: each epoch draws `per_volume` patches of `size` from every
    training volume, a `foreground_prob` share of them centred on a labelled
    voxel (nnU-Net forces a third)."""

    size: tuple[int, ...]
    foreground_prob: float = 1 / 3
    per_volume: int = 1


def train_dataset(data_dir: str, *, batch_size: int, seed: int, normalization: str = "patient_zscore",
                  augment_options: AugmentOptions | None = AugmentOptions(), num_epochs: int | None = None,
                  patches: PatchOptions | None = None, pathology: PathologyOptions | None = None,
                  split: str = "train", fold: int | None = None, shard_index: int = 0,
                  shard_count: int = 1) -> grain.MapDataset:
    """Shuffled, augmented batches of this process's share of a split: whole
    records, or with `patches` random patches of them; with `pathology`,
    simulated lesions drawn into the augmented images (document 003).

    The global shuffle is seeded and differs every epoch; epochs run on into
    each other (`num_epochs=None`: forever) and the last incomplete batch of
    the stream is dropped. `batch_size` is per process: process i of n reads,
    decodes and augments only rows [i*b, (i+1)*b) of each global batch of n*b
    examples, so the global batches (and every augmentation) are those of one
    process with the whole batch. `fold` reads that cross-validation fold's
    cases of the split (`fold_view`). Every random choice comes from grain's
    per-element generator, so the same seed gives the same batches with any
    number of worker processes, and the iterator resumes exactly.
    """
    _check(data_dir, batch_size, shard_index, shard_count, normalization)
    continuous = continuous_targets(read_manifest(data_dir))
    ds = grain.MapDataset.source(split_source(data_dir, split, fold))
    if patches is not None:
        ds = ds.repeat(patches.per_volume)  # one epoch: every volume per_volume times
    if len(ds) < batch_size * shard_count:
        raise DataError(f"{data_dir}: split {split!r} has {len(ds)} examples, fewer than one batch of "
                        f"{batch_size * shard_count}; lower the batch size"
                        + (" or raise config.data.patches_per_volume" if patches else ""))
    ds = ds.seed(seed).shuffle().repeat(num_epochs).map(split_decoder(data_dir, split, fold))
    # Normalised first: the zeros that warps bring in from outside then match the
    # normalised background.
    ds = ds.map(functools.partial(normalize, method=normalization))
    if patches is not None:
        ds = ds.random_map(functools.partial(patch, patch_size=patches.size, foreground_prob=patches.foreground_prob,
                                             opts=augment_options, continuous=continuous))
    elif augment_options is not None:
        ds = ds.random_map(functools.partial(augment, opts=augment_options, continuous=continuous))
    if pathology is not None:
        ds = ds.random_map(functools.partial(add_pathology, opts=pathology))
    # Lazy: slicing whole batches after batching reads only this process's rows.
    return ds.batch(batch_size, drop_remainder=True)[shard_index::shard_count]


class PadToMultiple(grain.MapDataset):
    """Appends copies of a padding element (valid=False, ids -1, zero arrays)
    until the length is a multiple of `multiple`."""

    def __init__(self, parent: grain.MapDataset, multiple: int):
        super().__init__(parent)
        self._n = len(parent)
        self._length = -(-self._n // multiple) * multiple

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"PadToMultiple(length={self._length})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if index < self._n:
            return self._parent[index]
        return {k: np.full_like(v, -1) if k in ("patient_index", "slice", "slices") else np.zeros_like(v)
                for k, v in self._parent[0].items()}


def eval_dataset(data_dir: str, split: str, *, batch_size: int, normalization: str = "patient_zscore",
                 pathology: PathologyOptions | None = None, seed: int = 0, fold: int | None = None,
                 shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
    """Batches covering every example of a split once, in stored order (patient,
    then slice). The last batch is padded with `valid=False` entries, and every
    process gets the same number of batches. With `pathology`, each example
    gets the simulated lesions of `seed` and its index, the same every pass
    (document 003's robustness test on held-out slices). Process i of n
    reads rows [i*b, (i+1)*b) of each global batch, as `train_dataset` does;
    `fold` reads that cross-validation fold's cases of the split."""
    _check(data_dir, batch_size, shard_index, shard_count, normalization)
    ds = grain.MapDataset.source(split_source(data_dir, split, fold))
    if len(ds) == 0:
        raise DataError(f"{data_dir}: split {split!r} is empty; prepare the data with a non-zero fraction for it")
    ds = ds.map(split_decoder(data_dir, split, fold)).map(functools.partial(normalize, method=normalization))
    if pathology is not None:
        ds = ds.seed(seed).random_map(functools.partial(add_pathology, opts=pathology))
    return PadToMultiple(ds, batch_size * shard_count).batch(batch_size)[shard_index::shard_count]


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """How batches are produced: worker processes (0: in this process) and
    how many batches each keeps ready."""

    num_workers: int = 0
    prefetch_buffer_size: int = 2
    read_threads: int = 2


def make_iterator(ds: grain.MapDataset, opts: LoaderOptions = LoaderOptions()) -> grain.DatasetIterator:
    """A checkpointable iterator (`get_state`/`set_state`) over a dataset."""
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=opts.read_threads,
                                                 prefetch_buffer_size=opts.prefetch_buffer_size))
    if opts.num_workers > 0:
        # grain's workers read absl flags; outside an absl app (tests, notebooks)
        # nothing has parsed them, so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=opts.num_workers, per_worker_buffer_size=opts.prefetch_buffer_size))
    return iter(it_ds)
