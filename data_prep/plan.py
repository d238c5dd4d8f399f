"""Plan a 3-D U-Net experiment from a folder of raw volumes: a dataset
fingerprint, then nnU-Net's rules (Isensee et al., Nature Methods 2021), in our
own code, for our own U-Net (unet_jax/models/unet.py).

  python -m data_prep.plan --data_dir=Task04_Hippocampus --out=plans/hippocampus.json
  python -m data_prep.plan --data_dir=../shared/data/ms_lesions_ljubljana --out=plans/ms.json \\
      --channels='FLAIR*' --label='GOLD_STANDARD*'

The cases are found and read exactly as `python -m data_prep.volumes` finds and
reads them (same layouts, same --channels/--label/--mask, same checks), and
`data_prep.volumes --plans=plans.json` then prepares them at the planned spacing
with the planned normalisation; configs/auto_3d.py takes the patch, batch and
network from the same file.

Fingerprint (per case, at its own spacing, cropped to the bounding box of its
--mask or else of its non-zero voxels, as data_prep.volumes crops): voxel
spacing, cropped shape, the labels present and their voxel counts, and up to
10,000 foreground (label > 0) voxels per channel, drawn with a fixed seed, for
the intensity statistics (nnU-Net samples the foreground: it is what the
network must see well, and the background of MRI is arbitrary). Modalities
come from --modality, else dataset.json ("modality" or "channel_names"), else a
guess: CT when the channel's 1st percentile over whole images lies below -500
(Hounsfield air), else MR.

Rules, and why:
  target spacing   the per-axis median spacing: most cases are resampled little.
                   If the median spacings are anisotropic (largest > 3x the
                   smallest), the coarse axis takes the 10th percentile of its
                   spacings instead (nnU-Net), so fewer cases need slices
                   invented by interpolation, but never finer than the other
                   axes, so it stays the coarse axis.
  normalisation    MR: "zscore" per case over the foreground (MR intensities have
                   no physical unit; each scan is put on its own scale). CT:
                   "ct", one global window [p00_5, p99_5] of the foreground
                   intensities, clipped and scaled to [0, 1] (Hounsfield units
                   mean the same in every scan, so one window serves all and
                   keeps their meaning).
  topology         nnU-Net's get_pool_and_conv_props idea: from the patch, level
                   by level, an axis is pooled (stride 2) while its feature map is
                   at least 8 voxels there (the bottleneck map stays >= 4, enough
                   for a 3x3x3 kernel to see context), while its current spacing
                   is <= 2x the smallest current spacing (pooling a coarse axis as
                   fast as a fine one would make coarse voxels ever more
                   elongated) and while it has been pooled fewer than 5 times
                   (deeper adds parameters, not receptive field that matters).
                   Pooling an axis doubles its spacing. The kernel is 3 on an axis
                   whose current spacing is <= 2x the level's smallest, else 1:
                   a coarse slice axis gets 3x3x1 kernels (no mixing of distant
                   slices) until pooling has made the in-plane spacing comparable.
                   The bottleneck's kernel follows the same rule at its spacing.
  patch size       the median cropped shape at the target spacing (a patch larger
                   than most cases is padding), capped at 256^3 voxels of a box
                   isotropic in mm (nnU-Net v2's start), at least 8 voxels per
                   axis (one pooling to a 4-voxel bottleneck), then rounded to a
                   multiple of each axis' total pooling factor: up when the
                   estimate at batch 2 fits the budget, else down. While batch 2
                   does not fit, the axis largest relative to the median shape
                   shrinks by one pooling-factor step (never below 8 voxels) and
                   the topology is recomputed (nnU-Net's loop: context along
                   every axis is kept balanced). If nothing can shrink any more,
                   DataError names --memory_gb and the fix.
  batch size       the largest that fits the budget, at least 2 (batch norm
                   statistics and gradient noise need two samples), at most 5% of
                   the dataset's voxels per batch (nnU-Net: on small datasets a
                   large batch sees the same voxels over and over within a step)
                   and at most 64.
  deep supervision depth - 2 auxiliary heads, at least 0: nnU-Net supervises every
                   decoder output but the two coarsest (too coarse to carry a
                   useful segmentation).
  memory estimate  analytic, for our U-Net with batch norm and plain blocks, widths
                   features * 2**level (no cap), float32 throughout (bf16 mixed
                   precision only lowers the real use):
                     activations kept for the backward pass, per sample:
                       every conv block (encoder, bottleneck, decoder):
                         ACTIVATIONS_PER_BLOCK (6) maps of its level's size and
                         width (two convolutions, each: conv out, norm out, ReLU);
                       every decoder level in addition: DECODER_EXTRA (3) maps: the
                         up-convolution's output and the skip concatenation (2x);
                       every output (main head and deep-supervision heads):
                         LOGIT_MAPS (4) full-resolution maps of the classes (logits,
                         softmax, the loss' gradient, the one-hot target);
                     times the batch, plus parameters x PARAMETER_COPIES (4: the
                     weights, their gradient, Adam's two moments), plus
                     RESERVED_GB (0.5) of convolution workspace and allocator
                     slack. It need not match XLA exactly: it is a consistent,
                     documented budget.

plans.json ("version": 1) holds "source", "command", the "fingerprint" and the
"plan" (target_spacing, shape_at_target, normalization, ct_window, patch_size,
depth, pool_strides, kernel_size, features, batch_size, memory_gb,
estimated_memory_gb, deep_supervision, and a "rationale" sentence per key).
Imports neither JAX nor TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
from tqdm import tqdm

from data_prep import common
from unet_jax.data.medical_io import MAX_VOXELS
from unet_jax.errors import DataError
from unet_jax.files import write_json
from unet_jax.preprocess import layouts, volumes
from unet_jax.preprocess.plans import VERSION

MODALITIES = ("MR", "CT")

# Fingerprint.
SAMPLES_PER_CASE = 10_000     # foreground voxels drawn per case for the intensity statistics
IMAGE_SAMPLES_PER_CASE = 2_000  # voxels drawn per case over the whole image, for the CT guess
SEED = 1234
CT_AIR_HU = -500.0            # a channel whose 1st percentile lies below this is CT (air is -1000 HU)

# Target spacing.
ANISOTROPY_RATIO = 3.0        # largest / smallest median spacing beyond which the coarse axis is special
COARSE_AXIS_PERCENTILE = 10   # ... and takes this percentile of its spacings

# Topology.
SPACING_RATIO = 2.0           # pool, and use kernel 3, on axes within this factor of the finest spacing
MIN_FEATURE_MAP = 4           # smallest map an axis is pooled to (so it is pooled while >= 8)
MAX_POOLS_PER_AXIS = 5
MIN_PATCH = 2 * MIN_FEATURE_MAP  # smallest patch per axis: one pooling to a 4-voxel bottleneck
MAX_PATCH_VOXELS = 256 ** 3   # cap of the starting patch (isotropic in mm)

# Batch.
MIN_BATCH = 2
MAX_BATCH = 64
MAX_DATASET_FRACTION = 0.05   # one batch covers at most this fraction of the dataset's voxels

# Memory estimate (float32 bytes; see the module docstring).
BYTES_PER_VALUE = 4
ACTIVATIONS_PER_BLOCK = 6     # two convolutions x (conv out, norm out, ReLU)
DECODER_EXTRA = 3             # up-convolution output (1) + skip concatenation (2)
LOGIT_MAPS = 4                # per output head at full resolution, x classes
PARAMETER_COPIES = 4          # weights, gradients, Adam's first and second moments
RESERVED_GB = 0.5             # convolution workspace, allocator slack
GB = 1024 ** 3


# --- fingerprint ------------------------------------------------------------------

def _check_spacing(spacing, path: str) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3:
        raise DataError(f"{path}: a {len(spacing)}-D volume; the planner takes 3-D volumes only")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError(f"{path}: voxel spacing {list(spacing)} is not positive and finite; fix the file's header "
                        "(pixdim in NIfTI) or remove the case")
    return spacing


def _sample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` rows of `values` [N, C] drawn without replacement (all when N <= count)."""
    if len(values) <= count:
        return values
    return values[np.sort(rng.choice(len(values), count, replace=False))]


def _stats(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64)
    p00_5, median, p99_5 = np.percentile(values, [0.5, 50, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(median),
            "p00_5": float(p00_5), "p99_5": float(p99_5), "min": float(values.min()), "max": float(values.max())}


def parse_modalities(text: str | list[str] | None, num_channels: int) -> list[str] | None:
    """--modality as one modality per channel ('MR', 'CT', 'MR,CT'; one value
    serves every channel); None for 'auto' or empty."""
    if text is None:
        return None
    names = common.comma_list(text) if isinstance(text, str) else list(text)
    if not names or names == ["auto"]:
        return None
    names = [n.upper() for n in names]
    if len(names) == 1:
        names = names * num_channels
    if len(names) != num_channels or any(n not in MODALITIES for n in names):
        raise DataError(f"--modality={','.join(names)}: give auto, or one of {', '.join(MODALITIES)} for all "
                        f"channels, or one per channel ({num_channels} here)")
    return names


def fingerprint(cases: list[layouts.Case], modalities: list[str] | None = None, progress: bool = False,
                declared_labels: set[int] | None = None, max_voxels: int = MAX_VOXELS) -> dict:
    """The dataset's fingerprint (see the module docstring): spacings, shapes
    cropped as data_prep.volumes crops, labels and their voxel fractions, and
    per-channel foreground intensity statistics. `modalities` ('MR'/'CT' per
    channel) is guessed from the intensities when None. Raises DataError
    naming the case or file, as unet_jax.preprocess.volumes.read_case does,
    and for a label outside `declared_labels` (dataset.json's, when it names
    them)."""
    if not cases:
        raise DataError("no cases to fingerprint; check --data_dir, --channels and --label")
    num_channels = len(cases[0].channels)
    for case in cases:
        if len(case.channels) != num_channels:
            raise DataError(f"{case.name}: {len(case.channels)} channel(s), but {cases[0].name} has {num_channels}; "
                            "give every case the same channels")
        if case.label is None:
            raise DataError(f"{case.name}: no label; the planner needs labelled cases (drop --unlabelled)")
    if modalities is not None:
        modalities = parse_modalities(list(modalities), num_channels)
    spacings, shapes, foreground, whole, counts, present = [], [], [], [], {}, {}
    total_voxels = 0
    for index, case in enumerate(tqdm(cases, desc="fingerprint", unit="case", disable=not progress)):
        channels, labels, mask = volumes.read_case(case, {}, max_voxels=max_voxels)
        spacings.append(_check_spacing(channels[0].geometry.spacing, case.channels[0]))
        image = np.stack([v.array for v in channels], axis=-1)
        rng = np.random.default_rng([SEED, index])
        whole.append(_sample(image.reshape(-1, num_channels), IMAGE_SAMPLES_PER_CASE, rng))
        if mask is None:
            mask = np.any(image != 0, axis=-1)
        if mask.any():  # as unet_jax.preprocess.volumes.preprocess crops
            crop = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
            image, labels = image[crop], labels[crop]
        shapes.append(labels.shape)
        total_voxels += labels.size
        values = np.bincount(labels.ravel())
        if declared_labels is not None and (stray := sorted(set(np.flatnonzero(values).tolist()) - declared_labels)):
            raise DataError(f"{case.label}: label {stray[0]} is not among the labels dataset.json declares "
                            f"({', '.join(map(str, sorted(declared_labels)))}); fix the label file or dataset.json")
        for value, count in enumerate(values):
            if count:
                counts[value] = counts.get(value, 0) + int(count)
                present[value] = present.get(value, 0) + 1
        foreground.append(_sample(image[labels > 0], SAMPLES_PER_CASE, rng))
    foreground = np.concatenate(foreground)
    if not len(foreground):
        raise DataError(f"{cases[0].label} and every other label file: no voxel is labelled (> 0); "
                        "check --label, the planner needs foreground to plan for")
    whole = np.concatenate(whole)
    image_p01 = [float(np.percentile(whole[:, c], 1)) for c in range(num_channels)]
    source = "given"
    if modalities is None:
        modalities = ["CT" if p < CT_AIR_HU else "MR" for p in image_p01]
        source = "guessed"
    spacings, shapes = np.array(spacings), np.array(shapes)
    foreground_labels = sorted(v for v in counts if v > 0)
    return {
        "num_cases": len(cases),
        "num_channels": num_channels,
        "modalities": modalities,
        "modality_source": source,
        "labels": sorted({0, *counts}),
        "label_names": {},
        "spacings": {"median": np.median(spacings, axis=0).tolist(), "min": spacings.min(axis=0).tolist(),
                     "max": spacings.max(axis=0).tolist(),
                     "p10": np.percentile(spacings, COARSE_AXIS_PERCENTILE, axis=0).tolist()},
        "shapes": {"median": [int(round(v)) for v in np.median(shapes, axis=0)],
                   "min": shapes.min(axis=0).tolist(), "max": shapes.max(axis=0).tolist()},
        "intensity": [_stats(foreground[:, c]) for c in range(num_channels)],
        "image_p01": image_p01,
        "class_voxel_fraction": {str(v): counts[v] / total_voxels for v in foreground_labels},
        "cases_with_class": {str(v): present[v] for v in foreground_labels},
        "case_names": [c.name for c in cases],
    }


# --- topology and memory ----------------------------------------------------------

def pool_and_kernels(spacing, patch) -> tuple[list[list[int]], list[list[int]]]:
    """Pooling strides per level and kernels per level (encoder levels, then
    the bottleneck) for a patch at a spacing, by the rules of the module
    docstring."""
    spacing = [float(s) for s in spacing]
    size = [float(p) for p in patch]
    pools = [0] * len(spacing)
    strides, kernels = [], []

    def near(s: list[float]) -> list[bool]:
        return [v <= SPACING_RATIO * min(s) * (1 + 1e-6) for v in s]

    while True:
        close = near(spacing)
        stride = [2 if close[i] and size[i] >= 2 * MIN_FEATURE_MAP and pools[i] < MAX_POOLS_PER_AXIS else 1
                  for i in range(len(spacing))]
        if all(s == 1 for s in stride):
            break
        strides.append(stride)
        kernels.append([3 if c else 1 for c in close])
        for i, s in enumerate(stride):
            if s == 2:
                spacing[i] *= 2
                size[i] /= 2
                pools[i] += 1
    kernels.append([3 if c else 1 for c in near(spacing)])
    return strides, kernels


def pooling_factor(strides: list[list[int]], ndim: int = 3) -> list[int]:
    """The total pooling factor per axis (what the patch must be a multiple of)."""
    return [int(np.prod([s[i] for s in strides])) for i in range(ndim)] if strides else [1] * ndim


def count_parameters(strides: list[list[int]], kernels: list[list[int]], features: int, in_channels: int,
                     num_classes: int, deep_supervision: int = 0) -> int:
    """Trainable parameters of unet_jax.models.unet.UNet with plain blocks and
    batch norm (convolutions without bias, scale and bias per norm), the
    transposed up-convolution and 1x1 heads."""
    depth = len(strides)
    width = [features * 2 ** level for level in range(depth + 1)]
    total = 0
    previous = in_channels
    for level in range(depth + 1):  # encoder levels, then the bottleneck
        k = int(np.prod(kernels[level]))
        total += k * previous * width[level] + 2 * width[level] + k * width[level] ** 2 + 2 * width[level]
        previous = width[level]
    for level in range(depth):  # decoder: up-conv, then two convs on the concatenation
        k = int(np.prod(kernels[level]))
        total += int(np.prod(strides[level])) * width[level + 1] * width[level] + width[level]
        total += k * 2 * width[level] * width[level] + 2 * width[level] + k * width[level] ** 2 + 2 * width[level]
    for level in range(deep_supervision + 1):  # main head, then the auxiliary ones
        total += width[level] * num_classes + num_classes
    return total


def activation_values(patch, strides: list[list[int]], features: int, in_channels: int, num_classes: int,
                      deep_supervision: int = 0) -> int:
    """Float values one sample keeps for the backward pass (module docstring)."""
    depth = len(strides)
    size = np.array(patch, np.float64)
    voxels = []
    for level in range(depth + 1):
        voxels.append(float(np.prod(size)))
        if level < depth:
            size = size / np.array(strides[level])
    total = voxels[0] * in_channels
    for level in range(depth + 1):
        width = features * 2 ** level
        blocks = ACTIVATIONS_PER_BLOCK * (2 if level < depth else 1)  # encoder + decoder, or the bottleneck
        total += (blocks + (DECODER_EXTRA if level < depth else 0)) * voxels[level] * width
    total += LOGIT_MAPS * (1 + deep_supervision) * voxels[0] * num_classes
    return int(total)


def estimate_memory_gb(patch, strides, kernels, features: int, in_channels: int, num_classes: int, batch: int,
                       deep_supervision: int = 0) -> float:
    """Training memory of one step in GB (2**30 bytes), by the module docstring's budget."""
    params = count_parameters(strides, kernels, features, in_channels, num_classes, deep_supervision)
    acts = activation_values(patch, strides, features, in_channels, num_classes, deep_supervision)
    return (batch * acts + PARAMETER_COPIES * params) * BYTES_PER_VALUE / GB + RESERVED_GB


# --- the plan -----------------------------------------------------------------------

def _x(values) -> str:
    return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def target_spacing(fp: dict) -> tuple[list[float], str]:
    median = [float(v) for v in fp["spacings"]["median"]]
    coarse = int(np.argmax(median))
    if max(median) <= ANISOTROPY_RATIO * min(median):
        return median, (f"The median spacing {_x(median)} mm: most cases are resampled little (no axis is more "
                        f"than {ANISOTROPY_RATIO:g}x coarser than another).")
    p10 = fp["spacings"].get("p10")
    low = float(p10[coarse]) if p10 else median[coarse]
    others = max(v for i, v in enumerate(median) if i != coarse)
    spacing = list(median)
    spacing[coarse] = max(low, others)
    return spacing, (f"Anisotropic median spacing {_x(median)} mm (axis {coarse} over {ANISOTROPY_RATIO:g}x the "
                     f"finest): that axis takes the {COARSE_AXIS_PERCENTILE}th percentile of its spacings, "
                     f"{low:g} mm (not below the other axes), so fewer cases get interpolated slices; the others "
                     "keep their median.")


def make_plan(fp: dict, memory_gb: float = 8.0, features: int = 32) -> dict:
    """The plan for a fingerprint (see the module docstring for every rule).
    Raises DataError, naming --memory_gb, when even the smallest patch does not
    fit the budget at batch 2."""
    if not memory_gb > 0:
        raise DataError(f"--memory_gb={memory_gb}: give the GPU memory to plan for, in GB (e.g. 8)")
    if features < 1:
        raise DataError(f"--features={features}: must be at least 1")
    spacing, why_spacing = target_spacing(fp)
    median_spacing = np.array(fp["spacings"]["median"], np.float64)
    shape = np.maximum(np.round(np.array(fp["shapes"]["median"]) * median_spacing / np.array(spacing)), 1)
    shape = [int(v) for v in shape]
    in_channels = int(fp["num_channels"])
    num_classes = max(2, max(int(v) for v in fp["labels"]) + 1)

    inverse = 1.0 / np.array(spacing)
    cap = inverse * (MAX_PATCH_VOXELS / np.prod(inverse)) ** (1 / 3)
    start = [int(max(MIN_PATCH, min(round(c), s))) for c, s in zip(cap, shape)]

    def memory(patch, strides, kernels, batch):
        return estimate_memory_gb(patch, strides, kernels, features, in_channels, num_classes, batch,
                                  max(0, len(strides) - 2))

    strides, kernels = pool_and_kernels(spacing, start)
    factor = start_factor = pooling_factor(strides)
    up = [math.ceil(p / f) * f for p, f in zip(start, factor)]
    down = [max(f, p // f * f) for p, f in zip(start, factor)]
    rounded = "up"
    patch = up
    if memory(up, strides, kernels, MIN_BATCH) > memory_gb:
        patch, rounded = down, "down"
    shrunk = 0
    while memory(patch, strides, kernels, MIN_BATCH) > memory_gb:
        movable = [i for i in range(3) if patch[i] - factor[i] >= MIN_PATCH]
        if not movable:
            need = memory(patch, strides, kernels, MIN_BATCH)
            raise DataError(f"--memory_gb={memory_gb:g}: even the smallest patch {_x(patch)} at batch {MIN_BATCH} "
                            f"needs about {need:.2f} GB; raise --memory_gb, or lower --features={features}")
        axis = max(movable, key=lambda i: patch[i] / shape[i])
        smaller = list(patch)
        smaller[axis] -= factor[axis]
        strides, kernels = pool_and_kernels(spacing, smaller)
        factor = pooling_factor(strides)
        patch = [max(f, p // f * f) for p, f in zip(smaller, factor)]
        shrunk += 1
    depth = len(strides)
    deep_supervision = max(0, depth - 2)
    per_sample = memory(patch, strides, kernels, 1) - memory(patch, strides, kernels, 0)
    fixed = memory(patch, strides, kernels, 0)
    fits = int((memory_gb - fixed) // per_sample)
    dataset_cap = round(MAX_DATASET_FRACTION * float(np.prod(shape)) * fp.get("cases_found", fp["num_cases"])
                        / float(np.prod(patch)))
    batch = max(MIN_BATCH, min(fits, dataset_cap, MAX_BATCH))
    limit = ("the memory budget" if batch == fits else
             f"{MAX_DATASET_FRACTION:.0%} of the dataset's voxels" if batch == dataset_cap else
             f"the cap of {MAX_BATCH}" if batch == MAX_BATCH else f"the minimum of {MIN_BATCH}")
    estimated = memory(patch, strides, kernels, batch)

    modalities = fp["modalities"]
    normalization = ["ct" if m == "CT" else "zscore" for m in modalities]
    first_ct = next((c for c, m in enumerate(modalities) if m == "CT"), None)
    ct_window = None if first_ct is None else [fp["intensity"][first_ct]["p00_5"], fp["intensity"][first_ct]["p99_5"]]
    pooled = [sum(1 for s in strides if s[i] == 2) for i in range(3)]
    flat = [i for i, k in enumerate(kernels) if k != [3, 3, 3]]

    plan = {
        "target_spacing": spacing,
        "shape_at_target": shape,
        "normalization": normalization,
        "ct_window": ct_window,
        "patch_size": patch,
        "depth": depth,
        "pool_strides": strides,
        "kernel_size": kernels,
        "features": features,
        "batch_size": batch,
        "memory_gb": float(memory_gb),
        "estimated_memory_gb": round(estimated, 3),
        "deep_supervision": deep_supervision,
    }
    plan["rationale"] = {
        "target_spacing": why_spacing,
        "shape_at_target": (f"The median cropped shape {_x(fp['shapes']['median'])} at the median spacing, "
                            f"resampled to the target spacing: {_x(shape)} voxels."),
        "normalization": "; ".join(f"channel {c} ({m}): " + (
            "z-score per case over its foreground (MR intensities have no fixed unit)" if m == "MR" else
            "one global window of foreground Hounsfield units, scaled to [0, 1] (CT units are absolute)")
            for c, m in enumerate(modalities)) + f" (modality {fp.get('modality_source', 'given')}).",
        "ct_window": ("No CT channel." if ct_window is None else
                      f"The 0.5th and 99.5th percentiles of channel {first_ct}'s foreground intensities, "
                      f"{ct_window[0]:.1f} to {ct_window[1]:.1f}: clips outliers (metal, air) but keeps tissue."),
        "patch_size": (f"Starts at the median shape {_x(shape)} (capped at {round(MAX_PATCH_VOXELS ** (1 / 3))}^3 "
                       f"voxels isotropic in mm, at least {MIN_PATCH}), rounded {rounded} to a multiple of its "
                       f"pooling factor {_x(start_factor)}" + (
                           f", then shrunk {shrunk} pooling-factor step(s), each along the axis largest relative to "
                           f"the median shape with the topology recomputed, to fit {memory_gb:g} GB at batch "
                           f"{MIN_BATCH} (final pooling factor {_x(factor)})" if shrunk else "") + "."),
        "depth": (f"{depth} poolings: axes are pooled while their map stays >= {2 * MIN_FEATURE_MAP} voxels, their "
                  f"spacing within {SPACING_RATIO:g}x of the finest and at most {MAX_POOLS_PER_AXIS} times "
                  f"(poolings per axis {_x(pooled)}); bottleneck map {_x([p // f for p, f in zip(patch, factor)])}."),
        "pool_strides": ("Stride 2 on the axes pooled at each level, 1 on an axis still too coarse or too small; "
                         "pooling doubles an axis' spacing."),
        "kernel_size": ("3 on every axis within 2x of the level's finest spacing, 1 on a coarser one (encoder levels, "
                        "then the bottleneck; decoder levels reuse their encoder's)" +
                        (f"; levels {', '.join(map(str, flat))} are not 3x3x3 because of anisotropy." if flat
                         else "; the spacing is close to isotropic, so 3x3x3 throughout.")),
        "features": f"{features} channels at full resolution, doubling per level (--features).",
        "batch_size": (f"{batch}: at most {fits} fit {memory_gb:g} GB, the dataset cap is {dataset_cap} "
                       f"({MAX_DATASET_FRACTION:.0%} of its voxels per batch), at least {MIN_BATCH}, at most "
                       f"{MAX_BATCH}; set by {limit}."),
        "memory_gb": f"The budget planned for (--memory_gb={memory_gb:g}).",
        "estimated_memory_gb": (f"Analytic: {per_sample:.3f} GB of float32 activations per sample x {batch}, plus "
                                f"parameters x {PARAMETER_COPIES} and {RESERVED_GB} GB reserved = {estimated:.2f} GB."),
        "deep_supervision": (f"depth - 2 = {deep_supervision} auxiliary heads: every decoder output but the two "
                             "coarsest (nnU-Net)."),
    }
    return plan


# --- reading the raw folder --------------------------------------------------------

def find_cases(data_dir: str, layout: str = "auto", channels: str = "", label: str = "",
               mask: str = "") -> tuple[str, list[layouts.Case]]:
    """The layout and the cases that `python -m data_prep.volumes` would prepare
    (DataError on the first problem, as it raises without --skip_bad)."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder; point --data_dir at a folder of cases")
    if layout == "auto":
        layout = "decathlon" if os.path.isdir(os.path.join(data_dir, "imagesTr")) else "folders"
    if layout == "decathlon":
        cases, problems = layouts.scan_decathlon(data_dir, unlabelled=False)
    elif layout == "folders":
        patterns = common.comma_list(channels)
        if not patterns or not label:
            raise DataError(f"{data_dir}: the per-case layout needs --channels='FLAIR*,...' and --label='...'")
        cases, problems = layouts.scan_folders(data_dir, patterns, label, mask or None, unlabelled=False)
    else:
        raise DataError(f"--layout={layout!r}: choose auto, decathlon or folders")
    if not cases:
        raise DataError(f"{data_dir}: no cases found" + (f" ({problems[0]})" if problems else
                                                         "; check --channels/--label or the folder"))
    if problems:
        raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    return layout, cases


def read_dataset_json(data_dir: str, num_channels: int) -> tuple[list[str] | None, dict[str, str]]:
    """Modalities and foreground label names from a Decathlon dataset.json
    ("modality" {"0": "MRI"} or nnU-Net v2's "channel_names"; "labels" as
    {"1": "name"} or {"name": 1}); (None, {}) without the file. A channel
    named CT is CT, any other name (MRI, T2, FLAIR, ADC...) MR."""
    path = os.path.join(data_dir, "dataset.json")
    if not os.path.isfile(path):
        return None, {}
    try:
        with open(path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({str(e).splitlines()[0]}); fix the JSON or remove the file") from None
    modalities = None
    names = meta.get("modality") or meta.get("channel_names")
    if isinstance(names, dict) and names:
        try:
            ordered = [str(names[k]) for k in sorted(names, key=int)]
        except ValueError:
            raise DataError(f"{path}: modality keys {list(names)} are not channel numbers") from None
        if len(ordered) != num_channels:
            raise DataError(f"{path}: names {len(ordered)} modalities but the cases have {num_channels} channel(s); "
                            "fix the file, or pass --modality")
        modalities = ["CT" if n.strip().upper() == "CT" else "MR" for n in ordered]
    label_names = {}
    for key, value in (meta.get("labels") or {}).items():
        number, name = (key, value) if str(key).lstrip("-").isdigit() else (value, key)
        if isinstance(number, (int, str)) and str(number).isdigit() and int(number) > 0:
            label_names[str(int(number))] = str(name)
    return modalities, dict(sorted(label_names.items(), key=lambda kv: int(kv[0])))


def plan_dataset(data_dir, out, *, layout: str = "auto", channels: str = "", label: str = "", mask: str = "",
                 modality: str = "auto", memory_gb: float = 8.0, features: int = 32, progress: bool = True,
                 max_cases: int = 0, max_voxels: int = MAX_VOXELS, command: str | None = None) -> dict:
    """Fingerprints the cases under `data_dir` (found as data_prep.volumes finds
    them; with `max_cases`, that many spread evenly over them), plans, and
    writes `out` atomically (a temporary name in the same folder, then
    os.replace); returns the plans dict. String arguments are the CLI's."""
    data_dir = os.path.abspath(os.fspath(data_dir))
    layout, cases = find_cases(data_dir, layout, channels, label, mask)
    found = len(cases)
    if max_cases < 0:
        raise DataError(f"--max_cases={max_cases}: give 0 (all cases) or a positive count")
    if 0 < max_cases < found:
        cases = [cases[i] for i in sorted(set(np.linspace(0, found - 1, max_cases).round().astype(int)))]
    num_channels = len(cases[0].channels)
    given = parse_modalities(modality, num_channels)
    from_json, label_names = read_dataset_json(data_dir, num_channels)
    declared = {0, *(int(k) for k in label_names)} if label_names else None
    fp = fingerprint(cases, given or from_json, progress=progress, declared_labels=declared, max_voxels=max_voxels)
    if given is None and from_json is not None:
        fp["modality_source"] = "dataset.json"
    fp["label_names"] = label_names
    if found != len(cases):
        fp["cases_found"] = found
    plans = {"version": VERSION, "source": data_dir, "command": command or common.command_line(),
             "layout": layout, "fingerprint": fp, "plan": make_plan(fp, memory_gb, features)}
    write_json(os.fspath(out), plans)
    return plans


def summary(plans: dict) -> str:
    """One line: cases, target spacing, patch, batch, depth, kernels and memory."""
    p, fp = plans["plan"], plans["fingerprint"]
    kernels = ",".join(_x(k) for k in p["kernel_size"])
    return (f"{fp['num_cases']} cases ({'/'.join(fp['modalities'])}): target spacing {_x(p['target_spacing'])} mm, "
            f"patch {_x(p['patch_size'])}, batch {p['batch_size']}, depth {p['depth']} "
            f"(strides {' '.join(_x(s) for s in p['pool_strides'])}), kernels {kernels}, normalization "
            f"{','.join(p['normalization'])}, ~{p['estimated_memory_gb']:.2f} of {p['memory_gb']:g} GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.plan", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="a folder of raw cases, as data_prep.volumes reads")
    parser.add_argument("--out", required=True, help="the plans file to write, e.g. plans.json")
    parser.add_argument("--memory_gb", type=float, default=8.0, help="GPU memory to plan one training step for")
    parser.add_argument("--layout", default="auto", choices=("auto", "decathlon", "folders"),
                        help="auto: decathlon when data_dir holds imagesTr/, else folders")
    parser.add_argument("--channels", default="", help="folders layout: one glob per channel, comma-separated")
    parser.add_argument("--label", default="", help="folders layout: glob of the label file")
    parser.add_argument("--mask", default="", help="folders layout: glob of a foreground mask (cropping, z-score)")
    parser.add_argument("--modality", default="auto",
                        help="auto (dataset.json, else CT when values reach below -500), or MR/CT, one for all "
                             "channels or comma-separated per channel")
    parser.add_argument("--features", type=int, default=32, help="channels at full resolution, doubling per level")
    parser.add_argument("--max_cases", type=int, default=0,
                        help="fingerprint this many cases, spread evenly (0: all)")
    common.add_max_voxels_flag(parser, "a volume of more voxels")
    args = parser.parse_args(argv)
    return common.run_cli(plan_dataset, args, args.out, summary)


if __name__ == "__main__":
    sys.exit(main())
