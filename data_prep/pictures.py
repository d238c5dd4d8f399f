"""Convert folders of 2-D pictures (PNG, TIFF, JPEG, BMP) to patient-split TFRecord shards.

Two tasks, chosen by --task:
  segmentation  images/<n>.png with masks/<n>.png (--images, --masks name the folders).
                A mask pixel is foreground where its value > --mask_threshold (127: the
                anti-aliased 0..255 masks of LungSegDB); a mask holding only 0 and 1 is
                taken as it is. --lung_sides labels the two largest connected components
                1 (the one on the picture's left) and 2 (right), dropping the rest, for a
                3-class softmax (common.split_left_right).
  regression    inputs/<n>.png with targets/<n>.png (--inputs, --targets), e.g. structural
                MRI -> grey-level contrast map (source document 000). The target is stored
                as float32 in [0, 1]: 8-bit pictures divided by 255, 16-bit by 65535; the
                manifest records the divisor, so outputs can be multiplied back to the
                picture's units. A target's identical channels become one; different
                channels are refused.

Pairs are matched by file stem (`<n>`), in any of the picture formats. Every pair
must have one height and width, and every pair the same as the others unless
--size=H,W resizes them (image and regression target bilinear, mask nearest).
Only 8-bit inputs are stored (uint8; the pipeline's normalization="scale"
divides by 255); a 16-bit or float input picture is refused with one line. An
RGB picture with three identical channels is grey: --channels=auto stores one
channel when every picture is grey, else three (grey pictures repeated);
--channels=1 turns colour pictures to grey (ITU-R 601 luma, as Pillow does).

Each pair is its own patient, named by its stem, unless --patient_regex groups
pairs: its named group `patient`, else its first group, else the whole match of
the stem is the patient (e.g. '^(\\w+?)_\\d+$': `p07_12` belongs to `p07`). The
split is by patient (--val_fraction, --test_fraction, --seed, --num_folds and
--fold, or --val_cases/--test_cases naming patients). Pictures are read twice:
once to check every pair and settle the channels, size and target divisor,
then to write.

--double (document 000's dataset doubling): every TRAINING pair also gets one
copy warped by a random affine (rotation within +-15 degrees, zoom within
+-10%, shift within +-5% of the size; bilinear for the image and a regression
target, nearest for mask labels; drawn from --seed and the pair's name, so the
same every run), written as a further record of the same patient (slice
numbers continue after the originals). Never for val or test: a held-out
split must hold each held-out picture once, as it is; a warped copy is the same
case again (scores would count it twice), and were a copy ever to land in
another split than its original, the picture would leak across the split.

Each record is one tf.train.Example, as data_prep.lgg writes them:
  image         raw uint8 bytes, [H, W, C]
  mask          segmentation: raw uint8 bytes, [H, W] labels (0/1; 0/1/2 with --lung_sides);
                regression: raw float32 bytes, [H, W], the target in [0, 1]
  mask_dtype    "float32", regression only
  shape         int64 [H, W, C]
  patient_id, patient_index (position in the split's sorted patient list)
  slice         the running number of the record within its patient (from 0; copies follow)
  picture       the pair's stem
  copy_of       --double copies only: the slice number of the original
  channel_mean, channel_std  the patient's per-channel statistics over the pixels
                where any channel is non-zero (for normalization=patient_zscore)
  tumor_pixels, foreground_voxels  pixels with label > 0 (or target > 0)

Usage:
  python -m data_prep.pictures --data_dir=../shared/data/lung_ct_lungsegdb --out_dir=data/lung_png \\
      --task=segmentation --skip_bad --val_fraction=0.25 --test_fraction=0
  python -m data_prep.pictures --data_dir=../shared/data/lung_ct_lungsegdb --out_dir=data/lung_sides \\
      --task=segmentation --skip_bad --lung_sides --size=256,256
  python -m data_prep.pictures --data_dir=PAIRS --out_dir=data/contrast --task=regression --double \\
      --patient_regex='^(\\w+?)_\\d+$'
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import sys
import zlib

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_prep import common
from unet_jax.data.medical_io import MAX_VOXELS, is_image_path, read_image
from unet_jax.data.tfrecord import encode_example
from unet_jax.errors import DataError
from unet_jax.preprocess import intensity
from unet_jax.preprocess.pictures import TARGET_DIVISORS, is_grey
from unet_jax.preprocess.problems import Problem

TASKS = ("segmentation", "regression")
CHANNELS = ("auto", "1", "3")
# --double's random affine: rotation (degrees), zoom and shift (fractions of the size), each +- this.
DOUBLE_ROTATION_DEG = 15.0
DOUBLE_ZOOM = 0.10
DOUBLE_SHIFT = 0.05
_FLAGS = {"segmentation": ("--images", "--masks"), "regression": ("--inputs", "--targets")}
_WORDS = {"segmentation": ("image", "mask"), "regression": ("input", "target")}


@dataclasses.dataclass(frozen=True)
class Pair:
    """One picture and its mask or target, by file stem."""

    name: str
    patient: str
    image: str
    target: str


@dataclasses.dataclass(frozen=True)
class Settings:
    """How every pair becomes a record (all of it goes into the manifest)."""

    task: str
    channels: int  # 1 or 3, as stored
    mask_threshold: int
    lung_sides: bool
    size: tuple[int, int] | None
    divisor: float | None  # regression targets


def natural_key(name: str) -> list:
    """'img2' before 'img10': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# --- finding pairs -------------------------------------------------------------------

def _pictures(folder: str) -> tuple[dict[str, str], list[Problem]]:
    """The pictures in `folder` by stem (other files and hidden ones are
    ignored), and a problem for each second picture of one stem."""
    by_stem: dict[str, str] = {}
    problems = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not is_image_path(name) or not os.path.isfile(path):
            continue
        stem = os.path.splitext(name)[0]
        if stem in by_stem:
            problems.append(Problem(path, f"a second picture named {stem} beside "
                                          f"{os.path.basename(by_stem[stem])}; remove one, or pass "
                                          "--skip_bad to skip this one"))
            continue
        by_stem[stem] = path
    return by_stem, problems


def patient_of(stem: str, regex: re.Pattern | None) -> str | None:
    """The patient a pair belongs to: its stem, or what `regex` picks from it
    (group `patient`, else group 1, else the whole match); None if no match."""
    if regex is None:
        return stem
    m = regex.search(stem)
    if m is None:
        return None
    return m.group("patient") if "patient" in regex.groupindex else m.group(1) if regex.groups else m.group(0)


def scan(data_dir: str, image_dir: str, target_dir: str, *, task: str = "segmentation",
         patient_regex: str = "") -> tuple[list[Pair], list[Problem]]:
    """Pairs `data_dir/image_dir/<n>.*` with `data_dir/target_dir/<n>.*`, in
    natural order of the stems; returns the pairs and the files that could
    not be paired (or whose name --patient_regex does not match)."""
    image_flag, target_flag = _FLAGS[task]
    image_word, target_word = _WORDS[task]
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder; point --data_dir at the folder holding {image_dir}/ and "
                        f"{target_dir}/")
    folders = os.path.join(data_dir, image_dir), os.path.join(data_dir, target_dir)
    for folder, flag, default in zip(folders, (image_flag, target_flag), (image_dir, target_dir)):
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such folder; --task={task} reads {image_dir}/<n>.png with "
                            f"{target_dir}/<n>.png under --data_dir (name other folders with {flag}=...)")
    regex = None
    if patient_regex:
        try:
            regex = re.compile(patient_regex)
        except re.error as e:
            raise DataError(f"--patient_regex={patient_regex!r}: not a regular expression ({e})") from None
    images, problems = _pictures(folders[0])
    targets, more = _pictures(folders[1])
    problems += more
    if not images and not targets:
        raise DataError(f"{data_dir}: no pictures (PNG, TIFF, JPEG, BMP) in {image_dir}/ or {target_dir}/; "
                        "check --data_dir and the folder names")
    for stem in sorted(images.keys() - targets.keys(), key=natural_key):
        problems.append(Problem(images[stem], f"{image_word} without a {target_word} (no "
                                              f"{target_dir}/{stem}.*); add it, or pass --skip_bad to "
                                              f"skip the {image_word}"))
    for stem in sorted(targets.keys() - images.keys(), key=natural_key):
        problems.append(Problem(targets[stem], f"{target_word} without an {image_word} (no "
                                               f"{image_dir}/{stem}.*); add the {image_word}, or pass "
                                               f"--skip_bad to skip the {target_word}"))
    pairs = []
    for stem in sorted(images.keys() & targets.keys(), key=natural_key):
        patient = patient_of(stem, regex)
        if not patient:
            problems.append(Problem(images[stem], f"name {stem!r} gives no patient with --patient_regex="
                                                  f"{patient_regex!r}; fix the regex, or pass --skip_bad "
                                                  "to skip the pair"))
            continue
        pairs.append(Pair(stem, patient, images[stem], targets[stem]))
    return pairs, problems


# --- reading and converting one pair ------------------------------------------------------

def read_pair(pair: Pair, task: str, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, np.ndarray]:
    """Reads and checks one pair: the image as uint8 [H, W, 1 or 3] and the
    mask or target as one channel [H, W] in its own dtype; a picture over
    `max_voxels` pixels times channels is refused before it is decoded."""
    image_word, target_word = _WORDS[task]
    image = read_image(pair.image, max_voxels=max_voxels)
    if image.dtype != np.uint8:
        raise DataError(f"{pair.image}: a {image.dtype} picture; only 8-bit {image_word}s are stored (the "
                        "pipeline's normalization=scale divides by 255): convert it to 8 bits, or pass --skip_bad")
    if image.shape[-1] not in (1, 3):
        raise DataError(f"{pair.image}: {image.shape[-1]} channels (transparency?); save it as grey or RGB, "
                        "or pass --skip_bad")
    target = read_image(pair.target, max_voxels=max_voxels)
    if target.shape[:2] != image.shape[:2]:
        raise DataError(f"{pair.target}: {target_word} of {target.shape[0]}x{target.shape[1]} pixels, but its "
                        f"{image_word} {pair.image} has {image.shape[0]}x{image.shape[1]}; make them the same "
                        "size, or pass --skip_bad")
    if any(not np.array_equal(target[..., 0], target[..., c]) for c in range(1, target.shape[-1])):
        raise DataError(f"{pair.target}: a {target_word} with {target.shape[-1]} different channels; save it as "
                        "one grey channel, or pass --skip_bad")
    target = target[..., 0]
    if task == "segmentation" and target.dtype.kind not in "ub":
        raise DataError(f"{pair.target}: a {target.dtype} mask; masks are integer pictures (0..255), convert it "
                        "or pass --skip_bad")
    if task == "regression" and target.dtype not in TARGET_DIVISORS:
        raise DataError(f"{pair.target}: a {target.dtype} target; targets are 8-bit or 16-bit pictures (scaled "
                        "by 255 or 65535): convert it, or pass --skip_bad")
    return image, target


def binarize(mask: np.ndarray, threshold: int) -> np.ndarray:
    """uint8 0/1: value > threshold, or the mask as it is when it holds only 0 and 1."""
    if mask.max(initial=0) <= 1:
        return mask.astype(np.uint8)
    return (mask > threshold).astype(np.uint8)


def resize(array: np.ndarray, size: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """A uint8 [H, W, C] image, uint8 [H, W] labels or a float32 [H, W]
    target resized to `size` (H, W) by Pillow: bilinear (averaging when
    shrinking) in float32, an image then rounded back to uint8 (Pillow's own
    8-bit path is off by up to one grey level); nearest for labels."""
    if array.shape[:2] == tuple(size):
        return array
    if nearest:
        return np.asarray(Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.NEAREST))
    if array.ndim == 3:
        out = np.stack([resize(array[..., c].astype(np.float32), size) for c in range(array.shape[-1])], axis=-1)
        return np.clip(np.round(out), 0, 255).astype(array.dtype)
    picture = Image.fromarray(array.astype(np.float32))  # mode F
    return np.asarray(picture.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32)


def convert(image: np.ndarray, target: np.ndarray, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """`read_pair`'s arrays -> the record's image uint8 [H, W, C] and mask
    (uint8 labels) or target (float32 in [0, 1]) [H, W]."""
    if settings.channels == 1 and image.shape[-1] == 3:
        image = image[..., :1] if is_grey(image) else np.asarray(Image.fromarray(image).convert("L"))[..., None]
    elif settings.channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if settings.size:
        image = resize(image, settings.size)
    if settings.task == "regression":
        target = target.astype(np.float32) / np.float32(settings.divisor)
        if settings.size:
            target = np.clip(resize(target, settings.size), 0.0, 1.0).astype(np.float32)
        return np.ascontiguousarray(image), np.ascontiguousarray(target)
    labels = binarize(target, settings.mask_threshold)
    if settings.size:
        labels = resize(labels, settings.size, nearest=True)
    if settings.lung_sides:
        labels = common.split_left_right(labels, axis=1)
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def random_affine(image: np.ndarray, target: np.ndarray, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """--double's copy: image and target warped by one random affine about the
    picture's centre (rotation, zoom, shift; see the DOUBLE_* limits), zeros
    brought in from outside. The image and a float target are interpolated
    bilinearly, integer labels by nearest neighbour."""
    from scipy import ndimage

    h, w = target.shape
    angle = rng.uniform(-DOUBLE_ROTATION_DEG, DOUBLE_ROTATION_DEG)
    zoom = rng.uniform(1 - DOUBLE_ZOOM, 1 + DOUBLE_ZOOM)
    shift = rng.uniform(-DOUBLE_SHIFT, DOUBLE_SHIFT, 2) * (h, w)
    a = np.deg2rad(angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = (np.array([h, w], np.float64) - 1) / 2
    # Output pixel o shows input pixel i = M o + offset, the inverse of
    # o = zoom * R (i - centre) + centre + shift.
    matrix = rotation.T / zoom
    offset = centre - matrix @ (centre + shift)

    def warp(x: np.ndarray, order: int) -> np.ndarray:
        return ndimage.affine_transform(x, matrix, offset, order=order, mode="constant", cval=0.0)

    warped = np.stack([warp(image[..., c].astype(np.float32), 1) for c in range(image.shape[-1])], axis=-1)
    image = np.clip(np.round(warped), 0, 255).astype(np.uint8)
    if target.dtype == np.float32:
        target = np.clip(warp(target, 1), 0.0, 1.0).astype(np.float32)
    else:
        target = warp(target, 0).astype(target.dtype)
    return image, target


def pair_rng(seed: int, pair: Pair) -> np.random.Generator:
    """--double's generator for one pair: from --seed and the pair's name, so
    a copy does not change when other pairs are added or skipped."""
    return np.random.default_rng([seed, zlib.crc32(pair.name.encode())])


# --- the converter -------------------------------------------------------------------

def _size(text: str) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise DataError(f"--size={text!r}: give the height and width in pixels, e.g. --size=256,256")
    return values


def _odd_ones(values: dict[Pair, object], describe) -> tuple[object, list[Problem]]:
    """The most common of the pairs' `values`, and a problem for each pair
    with another value (`describe(pair, value, common value)` says why)."""
    usual = collections.Counter(values.values()).most_common(1)[0][0]
    return usual, [Problem(*describe(pair, v, usual)) for pair, v in values.items() if v != usual]


def _raise_first(problems: list[Problem]) -> None:
    raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))


def prepare(data_dir: str, out_dir: str, *, task: str = "segmentation", images: str = "images",
            masks: str = "masks", inputs: str = "inputs", targets: str = "targets", channels: str = "auto",
            mask_threshold: int = 127, lung_sides: bool = False, size: str = "", double: bool = False,
            patient_regex: str = "", val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
            num_folds: int = 0, fold: int = 0, val_cases: str = "", test_cases: str = "",
            records_per_shard: int = 256, skip_bad: bool = False, overwrite: bool = False,
            anonymise: bool = False, anonymise_map: str = "", max_voxels: int = MAX_VOXELS,
            progress: bool = True, command: str | None = None) -> dict:
    """Checks the picture pairs under `data_dir`, splits them by patient and
    writes shards plus manifest.json to `out_dir`; returns the manifest.
    Raises DataError on the first bad file unless `skip_bad`, in which case
    bad pairs are left out and listed in the manifest's `skipped`. With
    `anonymise`, patients and pictures are written under pseudonyms
    (common.Pseudonyms). A picture over `max_voxels` is refused before it is
    decoded. String arguments are the CLI's."""
    data_dir = os.path.abspath(data_dir)
    common.check_output_dir(out_dir, overwrite, data_dir=data_dir)
    ids = common.pseudonyms(anonymise, anonymise_map, data_dir, out_dir)
    if task not in TASKS:
        raise DataError(f"--task={task!r}: choose one of {', '.join(TASKS)}")
    if channels not in CHANNELS:
        raise DataError(f"--channels={channels!r}: choose one of {', '.join(CHANNELS)}")
    if task == "regression" and lung_sides:
        raise DataError("--lung_sides labels the two lungs of segmentation masks; drop it for --task=regression")
    if mask_threshold < 0:
        raise DataError(f"--mask_threshold={mask_threshold}: must be 0 or more (foreground is value > threshold)")
    if records_per_shard < 1:
        raise DataError(f"--records_per_shard={records_per_shard}: must be at least 1")
    resize_to = _size(size)
    image_dir, target_dir = (images, masks) if task == "segmentation" else (inputs, targets)
    image_word, target_word = _WORDS[task]
    pairs, problems = scan(data_dir, image_dir, target_dir, task=task, patient_regex=patient_regex)
    if problems and not skip_bad:
        _raise_first(problems)
    all_files = [f for p in pairs for f in (p.image, p.target)] + [p.file for p in problems]

    # Pass 1: check every pair; settle the channels, the size and the target divisor.
    shapes, grey, divisors = {}, {}, {}
    for pair in tqdm(pairs, desc="checking", unit="pair", disable=not progress):
        try:
            image, target = read_pair(pair, task, max_voxels)
        except DataError as e:
            if not skip_bad:
                raise
            problems.append(Problem(*str(e).split(": ", 1)))
            continue
        shapes[pair], grey[pair] = image.shape[:2], is_grey(image)
        if task == "regression":
            divisors[pair] = TARGET_DIVISORS[target.dtype]
    if not shapes:
        raise DataError(f"{data_dir}: no usable picture pairs" + (f" ({problems[0]})" if problems else ""))
    source_shape, odd = _odd_ones(shapes, lambda p, s, usual: (
        p.image, f"{s[0]}x{s[1]} pixels, unlike the {usual[0]}x{usual[1]} of most pictures; pass --size=H,W to "
                 "resize every picture, or --skip_bad to skip this one"))
    divisor, odd_divisors = (_odd_ones(divisors, lambda p, d, usual: (
        p.target, f"{'16' if d > 255 else '8'}-bit target among {'16' if usual > 255 else '8'}-bit ones; "
                  "store every target at one bit depth, or pass --skip_bad to skip this one"))
        if task == "regression" else (None, []))
    if resize_to:
        odd = []
    bad = odd + odd_divisors
    if bad and not skip_bad:
        _raise_first(bad)
    problems += bad
    bad_files = {p.file for p in bad}
    good = [p for p in pairs if p in shapes and p.image not in bad_files and p.target not in bad_files]
    num_channels = int(channels) if channels != "auto" else 1 if all(grey[p] for p in good) else 3
    settings = Settings(task, num_channels, mask_threshold, lung_sides, resize_to, divisor)
    record_shape = [*(resize_to or source_shape), num_channels]

    by_patient: dict[str, list[Pair]] = collections.defaultdict(list)
    for pair in good:
        by_patient[pair.patient].append(pair)
    split = common.assign_split(sorted(by_patient), common.comma_list(val_cases), common.comma_list(test_cases),
                                "patient", val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                num_folds=num_folds, fold=fold)
    public = {p.name: p.name for p in good} | {p: p for p in by_patient}  # the names written
    if ids:
        public = {p.name: ids.name(p.name, [p.image, p.target]) for p in good}
        public |= {p: ids.name(p, [f for q in pairs for f in (q.image, q.target)]) for p, pairs in by_patient.items()}
        split, by_patient = ids.rename(split, public), {public[p]: m for p, m in by_patient.items()}

    # Pass 2: convert and write, patient by patient.
    splits: dict[str, dict] = {}
    with common.atomic_output_dir(out_dir, overwrite, data_dir=data_dir) as tmp, \
            tqdm(total=len(good), desc="writing", unit="pair", disable=not progress) as bar:
        for name in common.SPLITS:
            writer = common.ShardedWriter(tmp, name, records_per_shard)
            per_patient, examples, pictures, copies, foreground = [], 0, 0, 0, 0
            for patient_index, patient in enumerate(split[name]):
                members = by_patient[patient]
                converted = [convert(*read_pair(pair, task, max_voxels), settings) for pair in members]
                bar.update(len(members))
                mean, std = intensity.intensity_stats([image for image, _ in converted])
                records = [(number, pair, image, target, None)
                           for number, (pair, (image, target)) in enumerate(zip(members, converted))]
                if double and name == "train":
                    for number, pair, image, target, _ in list(records):
                        copy_image, copy_target = random_affine(image, target, pair_rng(seed, pair))
                        records.append((len(records), pair, copy_image, copy_target, number))
                for number, pair, image, target, copy_of in records:
                    count = int(np.count_nonzero(target))
                    writer.write(encode_example({
                        "image": image.tobytes(), "mask": target.tobytes(),
                        **({"mask_dtype": "float32"} if task == "regression" else {}),
                        "shape": image.shape, "patient_id": patient, "patient_index": patient_index,
                        "slice": number, "picture": public[pair.name],
                        **({"copy_of": copy_of} if copy_of is not None else {}),
                        "channel_mean": mean, "channel_std": std,
                        "tumor_pixels": count, "foreground_voxels": count}))
                with_foreground = sum(int(np.any(t)) for _, t in converted)
                per_patient.append({"patient": patient, "num_slices": len(records), "num_pictures": len(members),
                                    "num_foreground_slices": with_foreground,
                                    "pictures": [public[p.name] for p in members],
                                    "channel_mean": np.round(mean, 3).tolist(),
                                    "channel_std": np.round(std, 3).tolist()})
                examples += len(records)
                pictures += len(members)
                copies += len(records) - len(members)
                foreground += with_foreground
            splits[name] = {"num_patients": len(split[name]), "num_slices": examples, "num_examples": examples,
                            "num_pictures": pictures, "num_copies": copies, "num_foreground_slices": foreground,
                            "patients": per_patient, "shards": writer.close()}
        if task == "segmentation":
            labels = "0/1/2 (1: the component on the picture's left, 2: right)" if lung_sides else "0/1"
            kind = {"mask": f"uint8 labels {labels}, H*W", "num_classes": 3 if lung_sides else 2}
        else:
            kind = {"mask": "float32 target in [0, 1], H*W", "mask_dtype": "float32",
                    "target": {"method": "scale", "divisor": divisor, "channels": 1}}
        manifest = {
            "dataset": "pictures",
            "task": task,
            "command": common.OMITTED if ids else command or common.command_line(),
            "source": common.OMITTED if ids else data_dir,
            **({"anonymised": ids.manifest()} if ids else {}),
            "source_files": len(all_files),
            "source_checksum": common.file_list_checksum(data_dir, all_files),
            "image_shape": record_shape,
            "source_image_shape": [*source_shape, num_channels] if len({shapes[p] for p in good}) == 1 else None,
            "layout": "slices",
            "num_channels": num_channels,
            "image_dtype": "uint8",
            **kind,
            "intensity_stats": "per patient and channel, over the pixels where any channel is non-zero",
            "pictures": {"images": image_dir, "masks" if task == "segmentation" else "targets": target_dir,
                         "channels": channels, "mask_threshold": mask_threshold if task == "segmentation" else None,
                         "lung_sides": lung_sides, "size": list(resize_to) if resize_to else None,
                         "resize": {"image": "bilinear", target_word: "nearest" if task == "segmentation"
                                    else "bilinear"} if resize_to else None,
                         "double": {"rotation_deg": DOUBLE_ROTATION_DEG, "zoom": DOUBLE_ZOOM,
                                    "shift": DOUBLE_SHIFT, "seed": seed, "splits": ["train"]} if double else None},
            "split": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                      "num_folds": num_folds, "fold": fold,
                      "val_cases": [public[c] for c in common.comma_list(val_cases)],
                      "test_cases": [public[c] for c in common.comma_list(test_cases)],
                      "patient_regex": patient_regex or None},
            "splits": splits,
        }
        common.write_manifest(tmp, manifest, problems, ids)
    return manifest


def _summary(m: dict) -> str:
    """What `main` reports after `wrote <out_dir>:`: patients, pictures and records per split, the image shape,
    classes or target scale, pairs skipped."""
    splits = ", ".join(f"{k} {v['num_patients']} patients/{v['num_pictures']} pictures/{v['num_examples']} "
                       "records" for k, v in m["splits"].items())
    kind = (f"targets scaled by 1/{m['target']['divisor']:g}" if m["task"] == "regression"
            else f"{m['num_classes']} classes")
    return f"{splits}; image {'x'.join(map(str, m['image_shape']))}; {kind}; skipped {len(m['skipped'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.pictures", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_flags(parser, source="the folder holding the picture folders",
                            too_large="a picture of more pixels times channels", unit="patient", bad="pairs",
                            pseudonyms="patients and pictures", records_per_shard=256,
                            seed="seed of the patient shuffle and of --double")
    parser.add_argument("--task", default="segmentation", choices=TASKS,
                        help="segmentation: images/ with masks/; regression: inputs/ with targets/")
    parser.add_argument("--images", default="images", help="segmentation: the folder of images")
    parser.add_argument("--masks", default="masks", help="segmentation: the folder of masks")
    parser.add_argument("--inputs", default="inputs", help="regression: the folder of input pictures")
    parser.add_argument("--targets", default="targets", help="regression: the folder of target pictures")
    parser.add_argument("--channels", default="auto", choices=CHANNELS,
                        help="channels stored: auto (1 when every picture is grey, else 3), 1 or 3")
    parser.add_argument("--mask_threshold", type=int, default=127,
                        help="mask foreground is value > this (masks holding only 0/1 are kept as they are)")
    parser.add_argument("--lung_sides", action="store_true",
                        help="label the two largest mask components 1 (picture's left) and 2 (right): 3 classes")
    parser.add_argument("--size", default="", help="resize every picture to 'H,W' (default: all must share a size)")
    parser.add_argument("--double", action="store_true",
                        help="add one randomly warped copy of every training pair (never val/test)")
    parser.add_argument("--patient_regex", default="",
                        help="regex on the stem whose group 1 (or group 'patient') names the patient "
                             "(default: every pair is its own patient)")
    parser.add_argument("--val_cases", default="", help="comma-separated patients for validation "
                                                        "(overrides the fractions)")
    parser.add_argument("--test_cases", default="", help="comma-separated patients for test")
    args = parser.parse_args(argv)
    return common.run_cli(prepare, args, args.out_dir, _summary)


if __name__ == "__main__":
    sys.exit(main())
