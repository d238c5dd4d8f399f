"""Deterministic phantom data of four kinds, the project's built-in demo and test data.

LGG-like patients (`generate_patient`, `write_phantoms`) in the Kaggle
`kaggle_3m` layout: laid out like the real download and with clearly
FLAIR-bright tumours, they let the whole LGG pipeline, training included, run
without the real dataset. Each patient is a head volume cut into axial slices:
a bright scalp shell, a dark CSF band, textured grey and white matter, two
lateral ventricles and, in most patients, one or two irregular tumours spanning
consecutive slices. Channels are (pre-contrast, FLAIR, post-contrast) as in the
real data.

White-matter-lesion heads (`generate_lesion_case`, `write_lesion_phantoms`) for
the 3-D WMH U-Net, as NIfTI volumes in the per-case folder layout that
`data_prep.volumes` reads (`--channels='FLAIR*,T1*' --label='lesions*'`):
skull-stripped like the real Ljubljana MS data (exactly 0 outside the head), a
thin CSF rim, a wavy cortex, white matter, two lateral ventricles and 3 to 12
small periventricular or deep white-matter lesions, bright on FLAIR and dark on
T1, in every case.

Chest CTs (`generate_chest_case`, `write_chest_phantoms`) for lung
segmentation and the simulated lung pathology: int16 volumes in Hounsfield
units with uint8 lung labels (both lungs 1, vessels inside them included),
`<case>/ct.nii.gz` and `<case>/lungs.nii.gz`, X to the patient's left, Y to
the back, Z up. Air outside an elliptical body of soft tissue in a
subcutaneous fat ring, with ribs; two kidney-shaped lungs (about -850 HU)
either side of the mediastinum, their size varying along Z, with a few tens
of branching vessels; the heart in the lower slices, the aorta, the airways
and the spine (cancellous bone in a cortical rim); noise of about 20 HU. The
slices at the bottom and top may show one lung or none.

Image pairs for contrast-map regression (`generate_pair`,
`write_pair_phantoms`), 8-bit grey PNGs in `inputs/` and `targets/` under the
same stems (the layout `data_prep.pictures --task=regression` reads): a
T1-like head slice in, its contrast-enhancement map out (vessels, the
choroid plexus and enhancing lesions bright on a low tissue background,
exactly 0 outside the head). Each structure that enhances shows faintly in
the input, so the map can be learnt, but not as a pointwise function of the
input's grey levels.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np
import tifffile
from scipy import ndimage
from tqdm import tqdm

from data_prep import lgg
from data_prep.common import atomic_output_dir
from unet_jax.data import MANIFEST
from unet_jax.errors import DataError

INSTITUTION = "PH"
# What each writer writes, relative to its out_dir: --overwrite replaces a folder holding only such files.
_LGG_FILES = re.compile(rf"(TCGA_{INSTITUTION}_\d{{4}}_\d{{8}})/\1_\d+(_mask)?\.tif")
_LESION_FILES = re.compile(r"case_\d{4}/(FLAIR|T1|lesions)\.nii\.gz")
_CHEST_FILES = re.compile(r"chest_\d{4}/(ct|lungs)\.nii\.gz")
_PAIR_FILES = re.compile(r"(inputs|targets)/p\d+\.png")
MAX_PATIENTS = 9999  # patient numbers are four digits, starting at 0001
TUMOUR_PROBABILITY = 0.85
SECOND_TUMOUR_PROBABILITY = 0.25

# Tissue labels and their mean grey levels per channel (pre, FLAIR, post).
_BACKGROUND, _SHELL, _CSF, _GREY, _WHITE, _VENTRICLE = range(6)
_TISSUE_LEVELS = np.array([
    [0, 0, 0],
    [175, 130, 170],
    [25, 15, 30],
    [85, 105, 90],
    [110, 88, 115],
    [40, 20, 45],
], np.float32)
_BRAIN_RADIUS, _CSF_RADIUS = 0.85, 0.89  # in units of the head ellipsoid's semi-axes


def generate_patient(index: int, *, num_slices: int = 20, size: int = 256,
                     seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """Returns (folder_name, images uint8 [S,H,W,3], masks uint8 [S,H,W] with values 0/255).

    Everything derives from `numpy.random.default_rng([seed, index])`, so a
    patient does not depend on how many others are generated.
    """
    if not 0 <= index < MAX_PATIENTS:
        raise ValueError(f"patient index {index} outside [0, {MAX_PATIENTS})")
    rng = np.random.default_rng([seed, index])
    date = f"{rng.integers(1995, 2006)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    name = f"TCGA_{INSTITUTION}_{index + 1:04d}_{date}"
    shape = (num_slices, size, size)
    px = size / 256  # smoothing scales below are in pixels of a 256-pixel image

    # Head-ellipsoid coordinates (u, v, z): the slices run from near the skull
    # base (z=-0.75) to near the vertex (z=0.9), so the head shrinks at both ends.
    line = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(line, line, indexing="ij")
    angle = rng.uniform(-0.15, 0.15)
    shift_x, shift_y = rng.uniform(-0.05, 0.05, 2).tolist()
    axis_u, axis_v = rng.uniform([0.68, 0.80], [0.78, 0.90]).tolist()
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / axis_u
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / axis_v
    z = np.linspace(-0.75, 0.9, num_slices, dtype=np.float32)[:, None, None]
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.015, 0.015) * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    r = np.sqrt((u**2 + v**2) * wobble**2 + z**2)

    # One fine noise field serves both the cortex and tumour heterogeneity:
    # they never overlap visibly, since tumours are painted over the brain.
    detail = _smooth_noise(rng, shape, (0.5, 3 * px, 3 * px))
    labels = np.full(shape, _BACKGROUND, np.uint8)
    labels[r < 1] = _SHELL
    labels[r < _CSF_RADIUS] = _CSF
    brain = r < _BRAIN_RADIUS
    labels[brain] = _WHITE
    # A cortex of wavy thickness (zero in places) gives gyrus-like patterns.
    labels[brain & (_BRAIN_RADIUS - r < 0.06 + 0.04 * detail)] = _GREY
    labels[brain & _ventricles(rng, u, v, z)] = _VENTRICLE

    image = _TISSUE_LEVELS[labels]
    image += (brain * (8 * _smooth_noise(rng, shape, (1, 5 * px, 5 * px))))[..., None]

    mask = np.zeros(shape, bool)
    if rng.random() < TUMOUR_PROBABILITY:
        for _ in range(1 + (rng.random() < SECOND_TUMOUR_PROBABILITY)):
            tumour = _tumour(rng, u, v, num_slices) & brain
            # Partial-volume edge: blend the tumour in over about a pixel.
            weight = ndimage.gaussian_filter(tumour.astype(np.float32), (0, px, px))[..., None]
            levels = rng.uniform([60, 175, 90], [90, 220, 170]).astype(np.float32)
            image += weight * (levels + 10 * detail[..., None] - image)
            mask |= tumour

    gains = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    tilt = rng.uniform(-0.08, 0.08, 3).tolist()
    bias = 1 + tilt[0] * x + tilt[1] * y + tilt[2] * (x**2 + y**2)
    image *= gains * bias[:, :, None]
    # Gaussian noise folded at zero, like a magnitude image's noise floor.
    image += rng.uniform(3, 7) * rng.standard_normal(image.shape, dtype=np.float32)
    images = np.clip(np.rint(np.abs(image)), 0, 255).astype(np.uint8)
    return name, images, mask.astype(np.uint8) * 255


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def _ventricles(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Two lateral ventricles: ellipsoids angled apart towards the front."""
    scale = rng.uniform(0.8, 1.3)
    inside = np.zeros(np.broadcast_shapes(u.shape, z.shape), bool)
    for side in (-1, 1):
        cos, sin = math.cos(side * 0.25), math.sin(side * 0.25)
        du, dv = u - side * 0.13 * scale, v + 0.05
        pu, pv = cos * du + sin * dv, -sin * du + cos * dv
        inside |= (pu / (0.09 * scale)) ** 2 + (pv / 0.30) ** 2 + ((z - 0.15) / 0.25) ** 2 < 1
    return inside


def _tumour(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, num_slices: int) -> np.ndarray:
    """An ellipsoid with a smooth random radial perturbation, as bool [S,H,W].

    The perturbation depends only on direction from the centre, so the blob is
    star-shaped: its slices form one contiguous run.
    """
    phi, rho = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.55)
    centre_z = rng.uniform(0.3, 0.7)  # fraction of the way through the slices
    semi_u, semi_v = rng.uniform(0.12, 0.30, 2).tolist()
    semi_z = rng.uniform(0.14, 0.32)
    a = rng.uniform(0, math.pi)
    cos, sin = math.cos(a), math.sin(a)
    du, dv = u - rho * math.cos(phi), v - rho * math.sin(phi)
    d = [(cos * du + sin * dv) / semi_u,
         (-sin * du + cos * dv) / semi_v,
         (np.linspace(0, 1, num_slices, dtype=np.float32)[:, None, None] - centre_z) / semi_z]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
    bump = np.zeros_like(dist)
    for _ in range(3):
        f = rng.normal(0, 2.0, 3).tolist()
        bump += rng.uniform(0.04, 0.1) * np.cos((f[0] * d[0] + f[1] * d[1] + f[2] * d[2]) / dist
                                                + rng.uniform(0, 2 * math.pi))
    return dist < 1 + bump


def write_phantoms(out_dir: str | os.PathLike, *, num_patients: int = 10, num_slices: int = 20,
                   size: int = 256, seed: int = 0, overwrite: bool = False,
                   progress: bool = True) -> list[str]:
    """Writes the patients under out_dir in kaggle_3m layout; returns the patient folder names (sorted).

    The folder appears complete or not at all: patients are written into a
    temporary sibling that replaces `out_dir` at the end. An existing
    non-empty `out_dir` raises DataError unless `overwrite` and it holds
    only phantoms.
    """
    names = []
    with atomic_output_dir(out_dir, overwrite, own_files=_LGG_FILES) as tmp:
        for index in tqdm(range(num_patients), desc="phantoms", unit="patient", disable=not progress):
            name, images, masks = generate_patient(index, num_slices=num_slices, size=size, seed=seed)
            os.makedirs(os.path.join(tmp, name))
            for n, (image, mask) in enumerate(zip(images, masks), start=1):
                stem = os.path.join(tmp, name, f"{name}_{n}")
                tifffile.imwrite(f"{stem}.tif", image, photometric="rgb", metadata=None)
                tifffile.imwrite(f"{stem}_mask.tif", mask, photometric="minisblack", metadata=None)
            names.append(name)
    return sorted(names)


# --- White-matter-lesion heads (3-D, NIfTI) -----------------------------------

MAX_CASES = 9999  # case numbers are four digits, starting at 0001
MIN_LESIONS, MAX_LESIONS = 3, 12
# Target lesion volume as a fraction of the brain's (drawn log-uniformly per
# case); clipping to white matter and overlaps leave the mask at about 0.4-2.5%.
LESION_LOAD = (0.008, 0.022)
PERIVENTRICULAR_PROBABILITY = 0.7
# Tissue labels of the lesion heads and their mean levels per channel (FLAIR, T1),
# on the scale of the real data (FLAIR within about [0, 300]).
_L_BACKGROUND, _L_CSF, _L_GREY, _L_WHITE, _L_VENTRICLE = range(5)
_LESION_TISSUE_LEVELS = np.array([
    [0, 0],
    [40, 45],
    [130, 105],
    [100, 150],
    [30, 35],
], np.float32)
_LESION_LEVELS_LOW, _LESION_LEVELS_HIGH = (195, 70), (245, 100)  # lesions ~220 on FLAIR, ~85 on T1
_L_BRAIN_RADIUS = 0.94  # inside it brain, outside (up to 1) the CSF rim; head semi-axes units
_L_CORTEX = (0.09, 0.035)  # cortical thickness: mean and amplitude of its wave, same units
_L_MAX_LESION_CENTRE_RADIUS = 0.70  # lesion centres stay this deep, well inside the cortex


def generate_lesion_case(index: int, *, shape=(64, 64, 24), spacing=(1.0, 1.0, 3.0),
                         seed: int = 0) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (case name `case_0001`..., FLAIR float32 [X,Y,Z], T1 float32 [X,Y,Z],
    lesion mask uint8 [X,Y,Z] of 0/1), in ITK index order with Z the slice axis.

    Everything derives from `numpy.random.default_rng([seed, index, 3])`, so a
    case does not depend on how many others are generated. The anatomy is
    defined in millimetres over the field of view (`shape` times `spacing`)
    and every random draw that shapes it comes before the grid-sized noise
    draws, so the same field of view at another spacing gives the same head
    and lesions at another resolution; only the texture and noise differ.

    The head is an ellipsoid filling most of the field of view, skull-stripped:
    exactly 0 outside it. Inside, a thin CSF rim, a cortex of wavy thickness,
    white matter and two lateral ventricles (dark on FLAIR), under a mild
    smooth bias field with texture and noise. Levels: FLAIR white matter ~100,
    grey ~130, CSF ~40, ventricles ~30, lesions ~220; T1 white matter ~150,
    grey ~105, CSF ~45, ventricles ~35, lesions ~85; times a per-case gain of
    0.9-1.1 and the bias field.

    Every case has lesions (training needs foreground): 3 to 12 irregular
    ellipsoids, 70% of them periventricular, the rest in deep white matter,
    clipped to white matter. Their sizes are relative to the head, for a lesion
    load of 0.8-2.2% of the brain's volume (the mask covers about 0.4-2.5% of
    the brain's voxels), so their radii are about 2-6 mm in the default
    64x64x72 mm field of view and proportionally larger (about 5-15 mm) in a
    life-size one such as 182x218x60 voxels of 1x1x3 mm. Should all
    lesions fall between the voxels of a coarse grid, the white-matter voxel
    nearest to the first lesion's centre is marked, so the mask is never empty.
    """
    name, flair, t1, mask, _ = _lesion_case(index, shape, spacing, seed)
    return name, flair, t1, mask


def _lesion_case(index: int, shape, spacing, seed: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`generate_lesion_case`, with the tissue labels (uint8 [X,Y,Z], `_L_*`) too."""
    if not 0 <= index < MAX_CASES:
        raise ValueError(f"case index {index} outside [0, {MAX_CASES})")
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape={shape}: need three positive sizes [X, Y, Z]")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing={spacing}: need three positive voxel sizes in mm")
    rng = np.random.default_rng([seed, index, 3])
    name = f"case_{index + 1:04d}"

    # --- Every grid-independent draw first: head, ventricles, cortex, lesions, bias.
    half = np.asarray(shape) * np.asarray(spacing) / 2  # half the field of view, mm
    semi = half * rng.uniform([0.80, 0.88, 0.84], [0.86, 0.94, 0.92])  # head semi-axes (X, Y, Z), mm
    shift = rng.uniform(-0.03, 0.03, 3) * half
    angle = rng.uniform(-0.12, 0.12)  # in-plane rotation of the head
    head = _HeadModel(rng, semi, shift, angle)
    radii, rotations = _lesion_shapes(rng, semi)
    centres = [head.lesion_centre(rng) for _ in range(len(radii))]
    bumps = [[(rng.normal(0, 2.0, 3), rng.uniform(0.05, 0.12), rng.uniform(0, 2 * math.pi)) for _ in range(3)]
             for _ in radii]
    levels = rng.uniform(_LESION_LEVELS_LOW, _LESION_LEVELS_HIGH, (len(radii), 2)).astype(np.float32)
    tilt = rng.uniform(-0.06, 0.06, 4).tolist()
    gains = rng.uniform(0.9, 1.1, 2).astype(np.float32)
    noise_sd = rng.uniform(2.0, 4.0)

    # --- The grid: head-frame coordinates of every voxel centre.
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x = axes[0][:, None, None] - np.float32(shift[0])
    y = axes[1][None, :, None] - np.float32(shift[1])
    z = axes[2][None, None, :] - np.float32(shift[2])
    a, b = head.rotate(x, y)  # mm in the head's frame, [X,Y,1]
    u, v, w = a / np.float32(semi[0]), b / np.float32(semi[1]), z / np.float32(semi[2])
    r = head.radius(u, v, w)

    labels = np.zeros(shape, np.uint8)
    inside = r < 1
    labels[inside] = _L_CSF
    brain = r < _L_BRAIN_RADIUS
    labels[brain] = _L_WHITE
    # Only the outer shell of the brain can be cortex: evaluate the wave there.
    shell = brain & (r > _L_BRAIN_RADIUS - _L_CORTEX[0] - 1.5 * _L_CORTEX[1])
    where = np.nonzero(shell)
    pts = [np.broadcast_to(c, shape)[where] for c in (u, v, w)]
    grey = _L_BRAIN_RADIUS - r[where] < head.cortex_thickness(*pts)
    labels[tuple(i[grey] for i in where)] = _L_GREY
    labels[brain & head.in_ventricles(u, v, w)] = _L_VENTRICLE
    white = labels == _L_WHITE

    image = _LESION_TISSUE_LEVELS[labels]  # [X,Y,Z,2]
    # Partial volume at tissue boundaries: about half a millimetre of blur.
    blur = [0.5 / s for s in spacing]
    for c in range(2):
        image[..., c] = ndimage.gaussian_filter(image[..., c], blur)

    # --- Lesions, painted over the white matter with a soft (partial-volume) edge.
    mask = np.zeros(shape, bool)
    weight = np.zeros(shape, np.float32)
    for radius, rotation, centre, bump, level in zip(radii, rotations, centres, bumps, levels):
        box, blob, soft = _lesion_blob(centre * semi, radius, rotation, bump, head, axes, shift)
        if box is None:
            continue
        wm = white[box]
        mask[box] |= blob & wm
        soft = soft * wm
        image[box] += soft[..., None] * (level - image[box])
        weight[box] = np.maximum(weight[box], soft)
    if not mask.any():  # every lesion fell between the voxels: mark the one nearest to the first
        pa, pb, pc = centres[0] * semi
        px, py = head.unrotate(pa, pb)
        candidates = np.argwhere(white)
        if not len(candidates):
            raise ValueError(f"shape={shape}, spacing={spacing}: too coarse a grid for any white matter")
        position = candidates * np.asarray(spacing) - (np.asarray(shape) - 1) / 2 * np.asarray(spacing) - shift
        nearest = tuple(candidates[np.argmin(((position - [px, py, pc]) ** 2).sum(axis=1))])
        mask[nearest] = True
        image[nearest] = levels[0]
        weight[nearest] = 1

    # --- Grid-sized draws last: texture, bias field and noise.
    detail = _smooth_noise(rng, shape, [1.5 / s for s in spacing])
    image[..., 0] += brain * (6 + 8 * weight) * detail
    image[..., 1] += brain * 5 * detail
    bias = 1 + tilt[0] * u + tilt[1] * v + tilt[2] * w + tilt[3] * (u ** 2 + v ** 2)
    image *= (gains * bias[..., None]).astype(np.float32)
    image += np.float32(noise_sd) * rng.standard_normal(image.shape, dtype=np.float32)
    # Magnitude images: noise folds at zero; skull-stripped: nothing outside the head.
    image = np.abs(image) * inside[..., None]
    flair, t1 = (np.ascontiguousarray(image[..., c], dtype=np.float32) for c in range(2))
    return name, flair, t1, mask.astype(np.uint8), labels


class _HeadModel:
    """The analytic head of one lesion case, in coordinates normalised by the
    head's semi-axes (u, v, w) or in millimetres in the head's frame (a, b, c);
    it answers for single points (placing lesions) and for whole grids."""

    def __init__(self, rng: np.random.Generator, semi: np.ndarray, shift: np.ndarray, angle: float):
        self.semi, self.shift = semi, shift
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        # A slightly irregular outline: in-plane harmonics of the radius.
        self.wobble = [(k, rng.uniform(-0.015, 0.015), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)]
        # The cortex's thickness waves with a few plane waves over the head: gyrus-like patterns.
        self.waves = [(rng.normal(0, 12.0, 3), rng.uniform(0, 2 * math.pi)) for _ in range(6)]
        # Two lateral ventricles: ellipsoids angled apart towards the front (-v: LPS y runs backwards).
        scale = rng.uniform(0.85, 1.3)
        self.ventricles = []
        for side in (-1, 1):
            c, s = math.cos(side * 0.25), math.sin(side * 0.25)
            centre = np.array([side * 0.14 * scale, 0.04 + rng.uniform(-0.03, 0.03), 0.12])
            self.ventricles.append((centre, np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]),
                                    np.array([0.10 * scale, 0.32, 0.26])))

    def rotate(self, x, y):
        return self.cos * x + self.sin * y, -self.sin * x + self.cos * y

    def unrotate(self, a, b):
        return self.cos * a - self.sin * b, self.sin * a + self.cos * b

    def radius(self, u, v, w):
        theta = np.arctan2(v, u)
        wobble = 1 + sum(amp * np.cos(k * theta + phase) for k, amp, phase in self.wobble)
        return np.sqrt((u ** 2 + v ** 2) * wobble ** 2 + w ** 2)

    def cortex_thickness(self, u, v, w):
        wave = sum(np.cos(f[0] * u + f[1] * v + f[2] * w + phase) for f, phase in self.waves)
        return _L_CORTEX[0] + _L_CORTEX[1] * wave * math.sqrt(2 / len(self.waves))

    def ventricle_distance(self, u, v, w):
        """Normalised ellipsoidal distance to the nearer ventricle's centre (< 1 inside)."""
        out = None
        for centre, rot, semi in self.ventricles:
            du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
            d = sum(((rot[i, 0] * du + rot[i, 1] * dv + rot[i, 2] * dw) / semi[i]) ** 2 for i in range(3))
            out = d if out is None else np.minimum(out, d)
        return np.sqrt(out)

    def in_ventricles(self, u, v, w):
        return self.ventricle_distance(u, v, w) < 1

    def lesion_centre(self, rng: np.random.Generator) -> np.ndarray:
        """A point (u, v, w) deep in white matter: mostly just outside a
        ventricle (periventricular), else anywhere in the deep white matter."""
        periventricular = rng.random() < PERIVENTRICULAR_PROBABILITY
        for _ in range(1000):
            direction = rng.normal(size=3)
            direction /= max(np.linalg.norm(direction), 1e-9)
            if periventricular:
                centre, rot, semi = self.ventricles[rng.integers(2)]
                point = centre + rot.T @ (direction * semi * rng.uniform(1.2, 1.8))
            else:
                point = direction * _L_MAX_LESION_CENTRE_RADIUS * rng.random() ** (1 / 3)
            u, v, w = point
            if (self.radius(u, v, w) < _L_MAX_LESION_CENTRE_RADIUS
                    and _L_BRAIN_RADIUS - self.radius(u, v, w) > self.cortex_thickness(u, v, w) + 0.05
                    and self.ventricle_distance(u, v, w) > 1.15):
                return point
        raise AssertionError("no white-matter point found for a lesion")  # the head always has some


def _lesion_shapes(rng: np.random.Generator, semi: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Semi-axes (mm, [n, 3]) and rotations of 3-12 lesions whose ellipsoids
    add up to the case's lesion load of the brain volume."""
    n = int(rng.integers(MIN_LESIONS, MAX_LESIONS + 1))
    load = math.exp(rng.uniform(math.log(LESION_LOAD[0]), math.log(LESION_LOAD[1])))
    radii = rng.uniform(0.6, 1.4, n)[:, None] * rng.uniform(0.7, 1.3, (n, 3))
    brain_volume = float(np.prod(semi)) * _L_BRAIN_RADIUS ** 3
    radii *= (load * brain_volume / float(np.prod(radii, axis=1).sum())) ** (1 / 3)
    rotations = []
    for _ in range(n):
        q, rr = np.linalg.qr(rng.normal(size=(3, 3)))
        rotations.append(q * np.sign(np.diag(rr)))
    return radii, rotations


def _lesion_blob(centre_mm, radius, rotation, bump, head: _HeadModel, axes, shift):
    """One lesion rasterised over its bounding box: (box slices, inside bool,
    soft weight float32 with a ~0.7 mm partial-volume edge), or (None, ...)
    when the box misses the grid. `centre_mm` is in the head's frame."""
    reach = float(radius.max()) * 1.4 + 1.0  # the bump adds at most 0.36 of a semi-axis, the soft edge < 1 mm
    px, py = head.unrotate(centre_mm[0], centre_mm[1])
    physical = np.array([px, py, centre_mm[2]]) + shift
    box = []
    for axis, p in zip(axes, physical):
        lo = int(np.searchsorted(axis, p - reach))
        hi = int(np.searchsorted(axis, p + reach, side="right"))
        if hi <= lo:
            return None, None, None
        box.append(slice(lo, hi))
    box = tuple(box)
    x = axes[0][box[0], None, None] - np.float32(shift[0])
    y = axes[1][None, box[1], None] - np.float32(shift[1])
    c = axes[2][None, None, box[2]] - np.float32(shift[2]) - np.float32(centre_mm[2])
    a, b = head.rotate(x, y)
    a, b = a - np.float32(centre_mm[0]), b - np.float32(centre_mm[1])
    d = [(rotation[0, i] * a + rotation[1, i] * b + rotation[2, i] * c) / np.float32(radius[i]) for i in range(3)]
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + np.float32(1e-6)
    # A smooth radial perturbation by direction only: star-shaped, irregular blobs.
    edge = np.ones_like(dist)
    for f, amp, phase in bump:
        edge += np.float32(amp) * np.cos((f[0] * d[0] + f[1] * d[1] + f[2] * d[2]) / dist + np.float32(phase))
    inside = dist < edge
    # Signed distance to the edge in mm (approximately), ramped over ~0.7 mm.
    soft = np.clip(0.5 + (edge - dist) * np.float32(radius.mean() / 0.7), 0, 1).astype(np.float32)
    return box, inside, soft


def write_lesion_phantoms(out_dir: str | os.PathLike, *, num_cases: int = 8, shape=(64, 64, 24),
                          spacing=(1.0, 1.0, 3.0), seed: int = 0, overwrite: bool = False,
                          progress: bool = True) -> list[str]:
    """Writes lesion cases under out_dir, one folder per case holding
    FLAIR.nii.gz, T1.nii.gz and lesions.nii.gz (the layout `data_prep.volumes`
    reads with --channels='FLAIR*,T1*' --label='lesions*'); returns the case
    names (sorted).

    The volumes have the given spacing, identity direction and an origin that
    centres the field of view on 0, -(shape - 1) * spacing / 2. The folder
    appears complete or not at all (written into a temporary sibling that
    replaces `out_dir` at the end); an existing non-empty `out_dir` raises
    DataError unless `overwrite` and it holds only such cases.
    """
    # Imported here: the LGG phantoms (and prepare_demo) do without SimpleITK.
    from unet_jax.data.medical_io import Geometry, Volume, write_volume

    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if not 1 <= num_cases <= MAX_CASES:
        raise ValueError(f"num_cases={num_cases}: must be in [1, {MAX_CASES}]")
    origin = tuple(float(-(n - 1) * s / 2) for n, s in zip(shape, spacing))
    geometry = Geometry(spacing, origin, tuple(float(v) for v in np.eye(3).ravel()))
    names = []
    with atomic_output_dir(out_dir, overwrite, own_files=_LESION_FILES) as tmp:
        for index in tqdm(range(num_cases), desc="lesion phantoms", unit="case", disable=not progress):
            name, flair, t1, mask = generate_lesion_case(index, shape=shape, spacing=spacing, seed=seed)
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            for file, array in (("FLAIR.nii.gz", flair), ("T1.nii.gz", t1), ("lesions.nii.gz", mask)):
                write_volume(os.path.join(folder, file), Volume(array, geometry))
            names.append(name)
    return sorted(names)


# --- Chest CT (3-D, NIfTI, Hounsfield units) ------------------------------------

HU_AIR, HU_FAT, HU_SOFT_TISSUE = -1000, -100, 40
HU_STORED = (-1024, 3071)  # what a 12-bit scanner stores (int16 with rescale intercept -1024)
MIN_VESSELS, MAX_VESSELS = 24, 40  # pulmonary vessels per case, both lungs together


def generate_chest_case(index: int, *, shape=(128, 128, 24), spacing=(2.0, 2.0, 5.0),
                        seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """Returns (case name `chest_0001`..., CT int16 [X,Y,Z] in Hounsfield units,
    lung labels uint8 [X,Y,Z] of 0/1), in ITK index order: X runs to the
    patient's left, Y to the back, Z up (LPS with an identity direction), so
    the patient's right lung lies at low X, the spine at high Y and the lung
    apices at high Z.

    Everything derives from `numpy.random.default_rng([seed, index, 4])`, so a
    case does not depend on how many others are generated. The anatomy is
    defined over the field of view (`shape` times `spacing`) and every random
    draw that shapes it comes before the grid-sized noise draws, so the same
    field of view at another spacing gives the same chest at another
    resolution; only texture and noise differ.

    Per axial slice: air outside the body (-1000 HU); an elliptical body of
    soft tissue (~40 HU) inside a subcutaneous fat ring (~-100 HU) with ribs
    and a sternum in the chest wall; two lungs (about -850 HU, denser towards
    the back, with texture), kidney-shaped around the heart and separated by
    the mediastinum, their size varying smoothly along Z: dome-shaped towards
    the apices, cut into posterior crescents by the diaphragm at their bases
    (the right one ending higher, over the liver); 24 to 40 branching
    pulmonary vessels (~40 HU tubes, dots in most slices) spreading from the
    hila; the heart (~40 HU in a pericardial fat rim) anterior between the
    lungs and left of the midline in the lower slices; the descending aorta
    left of the spine; the trachea (air) above the carina and the two main
    bronchi below it; the spine at the back of the midline: a vertebral body
    of cancellous bone (400-600 HU) in a cortical rim (~1000 HU), the spinal
    canal and the posterior arch. Gaussian noise of 15-25 HU on top, then
    rounded and clipped to what scanners store, [-1024, 3071].

    The lung label is the parenchyma, vessels inside the lungs included (as
    clinical lung masks are); not the trachea or bronchi. Each lung is one
    connected region per slice, and the lungs never touch. Slices above the
    apices or below the bases show one lung or none, as the top and bottom
    of a real chest scan do.
    """
    if not 0 <= index < MAX_CASES:
        raise ValueError(f"case index {index} outside [0, {MAX_CASES})")
    shape, spacing = _grid(shape, spacing)
    rng = np.random.default_rng([seed, index, 4])
    name = f"chest_{index + 1:04d}"

    # --- Every grid-independent draw first. Lengths in-plane are in units of
    # the body's anterior-posterior semi-axis `b` (p: to the patient's left,
    # q: to the back); heights are fractions of the field of view along Z.
    half = np.asarray(shape[:2]) * np.asarray(spacing[:2]) / 2
    semi_x = half[0] * rng.uniform(0.82, 0.90)
    b = min(semi_x / rng.uniform(1.3, 1.5), half[1] * 0.9)
    e = semi_x / b  # the body's width over its depth
    shift = rng.uniform(-0.03, 0.03, 2) * half
    wobble = [(k, rng.uniform(-0.02, 0.02), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
    fat = rng.uniform(0.06, 0.13)  # subcutaneous fat, up to 30% thicker at the front and back
    soft_hu = rng.uniform(35, 50)
    lungs = []
    left_base = rng.uniform(-0.04, 0.10)
    for side in (-1, 1):  # the patient's right (low X), then left
        base = left_base + (rng.uniform(0.03, 0.12) if side < 0 else 0)  # right hemidiaphragm higher
        size = rng.uniform(0.9, 1.1) * (1.05 if side < 0 else 1)
        lungs.append(dict(
            side=side, base=base, apex=rng.uniform(0.90, 1.08),
            centre=(side * e * rng.uniform(0.45, 0.49), rng.uniform(-0.04, 0.06)),
            semi=(e * rng.uniform(0.30, 0.33) * size, rng.uniform(0.62, 0.72) * size),
            tilt=rng.uniform(0.15, 0.35), dome=rng.uniform(0.15, 0.3),
            harmonics=[(k, rng.uniform(-0.03, 0.03), rng.uniform(0, 2 * math.pi), rng.uniform(-2, 2))
                       for k in (2, 3, 4)]))
    mediastinum = rng.uniform(0.10, 0.14)  # half-width of the midline band no lung enters
    heart = dict(centre=(e * rng.uniform(0.05, 0.10), rng.uniform(-0.36, -0.28)),
                 semi=(e * rng.uniform(0.28, 0.32), rng.uniform(0.36, 0.42)), angle=rng.uniform(0.35, 0.6),
                 height=rng.uniform(0.22, 0.30), fat=rng.uniform(0.03, 0.06))
    heart["z"] = left_base + rng.uniform(0.0, 0.06) + heart["height"]  # resting on the diaphragm
    spine_q, spine_r = rng.uniform(0.36, 0.42), rng.uniform(0.17, 0.20)
    cancellous_hu, cortex_hu = rng.uniform(400, 600), rng.uniform(950, 1100)
    aorta = (rng.uniform(0.18, 0.24), spine_q - rng.uniform(0.14, 0.20), rng.uniform(0.12, 0.15))
    carina = left_base + rng.uniform(0.50, 0.65)
    ribs = [(-1.1 + j * 0.275 + rng.uniform(-0.05, 0.05), rng.uniform(0.035, 0.05)) for j in range(9)]  # angle, radius
    rib_drift = rng.uniform(0.2, 0.5)  # ribs slope: their angle changes along Z
    rib_hu = rng.uniform(650, 900)
    lung_hu, lung_gradient = rng.uniform(-875, -835), rng.uniform(20, 50)
    vessels = _pulmonary_vessels(rng, lungs)
    noise_hu = rng.uniform(15, 25)

    # --- The grid: (p, q) per voxel column and the height fraction per slice.
    axes = [(np.arange(n, dtype=np.float64) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    p = ((axes[0] - shift[0]) / b)[:, None]
    q = ((axes[1] - shift[1]) / b)[None, :]
    heights = (np.arange(shape[2]) + 0.5) / shape[2]
    theta = np.arctan2(q, p / e)
    outline = 1 + sum(amp * np.cos(k * theta + phase) for k, amp, phase in wobble)
    r_body = np.sqrt((p / e) ** 2 + q ** 2) / outline  # < 1 inside the body
    body = r_body < 1
    fat_ring = body & (r_body > 1 - fat * (1 + 0.3 * np.cos(theta + math.pi / 2) ** 2))
    wall = r_body < 1 - fat - 0.12  # inside the chest wall's muscle and ribs

    ct = np.empty(shape, np.float32)
    label = np.zeros(shape, bool)
    for k, h in enumerate(heights):
        hu = np.full(shape[:2], float(HU_AIR))
        hu[body] = soft_hu
        hu[fat_ring] = HU_FAT
        keep_out = np.broadcast_to(np.abs(p) < mediastinum, shape[:2]).copy()  # no lung crosses the midline
        # Spine: vertebral body, canal, posterior arch and spinous process.
        vertebra = np.hypot(p, q - spine_q)
        canal_q = spine_q + spine_r + 0.07
        canal = np.hypot(p, q - canal_q)
        arch = (canal < 0.14) | ((np.abs(p) < 0.035) & (q > canal_q) & (q < canal_q + 0.20))
        arch &= r_body < 1 - fat
        hu[arch] = cortex_hu * 0.75
        hu[canal < 0.08] = 20
        hu[vertebra < spine_r] = cortex_hu
        hu[vertebra < spine_r - 0.035] = cancellous_hu
        keep_out |= (vertebra < spine_r + 0.05) | (canal < 0.19)
        # Descending aorta, left of the spine and in front of it.
        aortic = np.hypot(p - aorta[0], q - aorta[1])
        hu[aortic < aorta[2] + 0.025] = HU_FAT
        hu[aortic < aorta[2]] = soft_hu
        keep_out |= aortic < aorta[2] + 0.05
        # Heart in its pericardial fat, in the lower slices.
        extent = 1 - ((h - heart["z"]) / heart["height"]) ** 2
        if extent > 0:
            scale = math.sqrt(extent)
            cos, sin = math.cos(heart["angle"]), math.sin(heart["angle"])
            dp, dq = p - heart["centre"][0], q - heart["centre"][1]
            hr = np.sqrt(((cos * dp + sin * dq) / heart["semi"][0]) ** 2
                         + ((-sin * dp + cos * dq) / heart["semi"][1]) ** 2) / scale
            cardiac = hr < 1 + heart["fat"] / (scale * min(heart["semi"]))
            hu[cardiac] = HU_FAT
            hu[hr < 1] = soft_hu
            keep_out |= hr < 1 + (heart["fat"] + 0.05) / (scale * min(heart["semi"]))
        # Airways: the trachea above the carina, the main bronchi just below it.
        trachea_q = spine_q - spine_r - 0.14
        keep_out |= np.hypot(p, q - trachea_q) < 0.13
        if h > carina:
            airway = np.hypot(p, q - trachea_q) - 0.09  # < 0 inside
        elif h > carina - 0.15:
            airway = np.hypot(np.abs(p) - (0.12 + (carina - h) * 0.8), q - trachea_q) - 0.065
        else:
            airway = None
        if airway is not None:
            hu[airway < 0] = HU_AIR
            keep_out |= airway < 0.04
        # Ribs and sternum in the chest wall.
        rib_radius = 1 - fat - 0.06
        for angle, radius in ribs:
            for side in (-1, 1):
                phi = angle + rib_drift * h
                centre_p = side * e * rib_radius * math.cos(phi)
                centre_q = rib_radius * math.sin(phi)
                hu[np.hypot(p - centre_p, q - centre_q) < radius] = rib_hu
        hu[(np.abs(p) < 0.12) & (np.abs(q + rib_radius) < 0.035)] = rib_hu * 0.7
        # Lungs: parenchyma with a gravitational gradient, labelled.
        parenchyma = np.zeros(shape[:2], bool)
        for lung in lungs:
            mask = _lung_section(lung, p, q, h) & wall & ~keep_out
            if mask.any():
                parts, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
                if count > 1:
                    mask = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
                parenchyma |= mask
        hu = np.where(parenchyma, lung_hu + lung_gradient * q, hu)
        ct[:, :, k] = hu
        label[:, :, k] = parenchyma

    # --- Vessels, drawn into the lungs only (and labelled lung, as they are).
    grid = ((axes[0] - shift[0]) / b, (axes[1] - shift[1]) / b, axes[2] / b)  # all in units of b
    to_grid = np.array([1, 1, shape[2] * spacing[2] / b])  # height fractions to units of b from the middle
    for start, end, r0, r1, hu in vessels:
        box, weight = _tube(grid, (start - [0, 0, 0.5]) * to_grid, (end - [0, 0, 0.5]) * to_grid, r0 / b, r1 / b,
                            min(spacing[:2]) / b)
        if box is not None:
            weight *= label[box]
            ct[box] += weight * (hu - ct[box])

    # --- Grid-sized draws last: partial volume, lung texture, bone texture, noise.
    ct = ndimage.gaussian_filter(ct, [0.5 / s for s in spacing])
    texture = _smooth_noise(rng, shape, [2.0 / s for s in spacing])
    ct += np.where(label, 20.0, 0.0).astype(np.float32) * texture
    bone = ct > 300
    ct += np.where(bone, 40.0, 0.0).astype(np.float32) * texture
    ct += np.float32(noise_hu) * rng.standard_normal(shape, dtype=np.float32)
    ct = np.clip(np.rint(ct), *HU_STORED).astype(np.int16)
    return name, ct, label.astype(np.uint8)


def _grid(shape, spacing) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape={shape}: need three positive sizes [X, Y, Z]")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing={spacing}: need three positive voxel sizes in mm")
    return shape, spacing


def _lung_section(lung: dict, p: np.ndarray, q: np.ndarray, h: float) -> np.ndarray:
    """The lung's outline at height fraction `h` (before the mediastinum, heart
    and chest wall cut it), bool [X, Y]: a tilted ellipse with a wavy edge,
    dome-shaped towards the apex and cut by the diaphragm at the base."""
    t = (h - lung["base"]) / (lung["apex"] - lung["base"])
    if not 0 <= t < 1:
        return np.zeros(np.broadcast_shapes(p.shape, q.shape), bool)
    scale = math.sqrt(1 - t ** 2.5)  # widest near the base, a dome towards the apex
    side, tilt = lung["side"], lung["tilt"]
    dp, dq = p - lung["centre"][0], q - lung["centre"][1]
    # The long axis leans so that the back of the lung reaches round towards the spine.
    across = math.cos(tilt) * dp + side * math.sin(tilt) * dq
    along = -side * math.sin(tilt) * dp + math.cos(tilt) * dq
    angle = np.arctan2(along, across * side)
    edge = 1 + sum(amp * np.cos(k * angle + phase + drift * t) for k, amp, phase, drift in lung["harmonics"])
    inside = np.hypot(across / lung["semi"][0], along / lung["semi"][1]) < scale * edge
    if t < lung["dome"]:  # the diaphragm's dome, from the front and the middle
        cut = 0.95 * math.sqrt(1 - (t / lung["dome"]) ** 2)
        d_across, d_along = across + side * 0.05, along + 0.15
        inside &= np.hypot(d_across / lung["semi"][0], d_along / lung["semi"][1]) >= cut
    return inside


def _pulmonary_vessels(rng: np.random.Generator, lungs: list[dict]) -> list[tuple]:
    """24-40 vessels as (start, end, start radius mm, end radius mm, HU), the
    points as (p, q, height fraction): the first five of each lung run from
    its hilum, the others branch off an earlier one, all towards random
    points of the lung; 3-4.5 mm in radius at the hilum, 1-1.8 mm at the
    end."""
    total = int(rng.integers(MIN_VESSELS, MAX_VESSELS + 1))
    vessels = []
    for n, lung in enumerate(lungs):
        count = total // 2 + (total % 2) * n
        lo, hi = max(lung["base"], 0.0), min(lung["apex"], 1.0)
        mid = lo + 0.45 * (hi - lo)
        hilum = np.array([lung["centre"][0] - lung["side"] * 0.55 * lung["semi"][0], lung["centre"][1], mid])
        own = []
        for i in range(count):
            h = rng.uniform(lo + 0.1 * (hi - lo), hi - 0.1 * (hi - lo))
            t = (h - lung["base"]) / (lung["apex"] - lung["base"])
            scale = math.sqrt(max(1 - t ** 2.5, 0.05))
            angle, radius = rng.uniform(0, 2 * math.pi), 0.8 * math.sqrt(rng.random())
            end = np.array([lung["centre"][0] + radius * scale * lung["semi"][0] * math.cos(angle),
                            lung["centre"][1] + radius * scale * lung["semi"][1] * math.sin(angle), h])
            if i < 5 or not own:
                start, r0 = hilum + rng.normal(0, 0.04, 3) * [1, 1, 0.5], rng.uniform(3.0, 4.5)
            else:
                parent = own[int(rng.integers(len(own)))]
                f = rng.uniform(0.2, 0.7)
                start = parent[0] + f * (parent[1] - parent[0])
                r0 = parent[2] + f * (parent[3] - parent[2])
            own.append((start, end, r0, rng.uniform(1.0, 1.8), rng.uniform(25, 60)))
        vessels += own
    return vessels


def _tube(grid, start, end, r0: float, r1: float, ramp: float):
    """A tapering tube from `start` (radius r0) to `end` (radius r1) over the
    box of the grid it reaches: (box slices, weight float32 in [0, 1] with a
    soft edge `ramp` wide), or (None, None) when it misses the grid. `grid`
    holds the coordinates along each axis, all in one unit."""
    reach = max(r0, r1) + ramp
    box = []
    for axis, a, c in zip(grid, start, end):
        lo = int(np.searchsorted(axis, min(a, c) - reach))
        hi = int(np.searchsorted(axis, max(a, c) + reach, side="right"))
        if hi <= lo:
            return None, None
        box.append(slice(lo, hi))
    box = tuple(box)
    d = [grid[i][box[i]].reshape([-1 if j == i else 1 for j in range(3)]) - start[i] for i in range(3)]
    direction = np.asarray(end, np.float64) - np.asarray(start, np.float64)
    length2 = max(float(direction @ direction), 1e-12)
    t = np.clip(sum(d[i] * direction[i] for i in range(3)) / length2, 0, 1)
    distance = np.sqrt(sum((d[i] - t * direction[i]) ** 2 for i in range(3)))
    radius = r0 + (r1 - r0) * t
    return box, np.clip(0.5 + (radius - distance) / ramp, 0, 1).astype(np.float32)


def write_chest_phantoms(out_dir: str | os.PathLike, *, num_cases: int = 6, shape=(128, 128, 24),
                         spacing=(2.0, 2.0, 5.0), seed: int = 0, overwrite: bool = False,
                         progress: bool = True) -> list[str]:
    """Writes chest CT cases from `generate_chest_case` under out_dir, one
    folder per case holding ct.nii.gz (int16, Hounsfield units) and
    lungs.nii.gz (uint8, 1 = lung); returns the case names (sorted).

    The volumes have the given spacing, identity direction (LPS: X to the
    patient's left, Y to the back, Z up) and an origin that centres the field
    of view on 0, -(shape - 1) * spacing / 2. The folder appears complete or
    not at all (written into a temporary sibling that replaces `out_dir` at
    the end); an existing non-empty `out_dir` raises DataError unless
    `overwrite` and it holds only such cases.
    """
    from unet_jax.data.medical_io import Geometry, Volume, write_volume  # as in write_lesion_phantoms

    shape, spacing = _grid(shape, spacing)
    if not 1 <= num_cases <= MAX_CASES:
        raise ValueError(f"num_cases={num_cases}: must be in [1, {MAX_CASES}]")
    origin = tuple(float(-(n - 1) * s / 2) for n, s in zip(shape, spacing))
    geometry = Geometry(spacing, origin, tuple(float(v) for v in np.eye(3).ravel()))
    names = []
    with atomic_output_dir(out_dir, overwrite, own_files=_CHEST_FILES) as tmp:
        for index in tqdm(range(num_cases), desc="chest phantoms", unit="case", disable=not progress):
            name, ct, lungs = generate_chest_case(index, shape=shape, spacing=spacing, seed=seed)
            folder = os.path.join(tmp, name)
            os.makedirs(folder)
            for file, array in (("ct.nii.gz", ct), ("lungs.nii.gz", lungs)):
                write_volume(os.path.join(folder, file), Volume(array, geometry))
            names.append(name)
    return sorted(names)


# --- Image pairs for contrast-map regression (2-D, PNG) -------------------------

MAX_PAIRS = 9999
MIN_ENHANCING_LESIONS, MAX_ENHANCING_LESIONS = 1, 3
# Input (T1-like) and target (contrast enhancement) levels per tissue, in the
# order background, scalp, skull, CSF rim, grey matter, white matter, ventricle.
_P_BACKGROUND, _P_SCALP, _P_SKULL, _P_CSF, _P_GREY, _P_WHITE, _P_VENTRICLE = range(7)
_PAIR_INPUT_LEVELS = np.array([0, 185, 30, 45, 105, 150, 35], np.float32)
_PAIR_TARGET_LEVELS = np.array([0, 45, 5, 15, 55, 28, 8], np.float32)
_P_SKULL_RADIUS, _P_CSF_RADIUS, _P_BRAIN_RADIUS = 0.92, 0.87, 0.84  # scalp beyond the first, head semi-axes units


def generate_pair(index: int, *, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Returns (input, target), uint8 [size, size] each: an axial T1-like head
    slice and its contrast-enhancement map.

    Everything derives from `numpy.random.default_rng([seed, index, 5])`, so a
    pair does not depend on how many others are generated.

    Input: an elliptical head, bright scalp, dark skull, a thin CSF rim, a
    wavy grey-matter cortex, brighter white matter and two dark lateral
    ventricles, under a mild bias field with noise folded at zero (a
    magnitude image: dark, not 0, outside the head).

    Target: what contrast agent does to the slice, on 0..255: a low,
    texture-varying background by tissue (grey matter above white matter),
    strongly enhancing cortical vessels and the superior sagittal sinus (~200-250),
    the choroid plexus in the back of each ventricle (~200), and 1 to 3
    enhancing lesions, solid or ring-shaped (~150-240); exactly 0 outside the
    head. Each of these shows in the input, but only faintly: vessels as thin
    dark lines, the sinus as a dark dot, the choroid plexus as a grey blob in
    the ventricle, lesions as a slightly dark, textured patch in a faint dark
    halo. So a network can learn the target from the input, though it is not
    a pointwise function of it: pixels of the same input level have very
    different targets.
    """
    image, target, _ = _pair(index, size, seed)
    return image, target


def _pair(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`generate_pair`, with the tissue labels (uint8 [size, size], `_P_*`;
    the head is labels > 0) too."""
    if not 0 <= index < MAX_PAIRS:
        raise ValueError(f"pair index {index} outside [0, {MAX_PAIRS})")
    if int(size) != size or size < 16:
        raise ValueError(f"size={size}: need an integer of at least 16")
    size = int(size)
    rng = np.random.default_rng([seed, index, 5])
    px = size / 64  # smoothing scales below are in pixels of a 64-pixel image

    # Head coordinates (u, v) as in `generate_patient`, one slice at height z.
    line = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(line, line, indexing="ij")
    angle = rng.uniform(-0.15, 0.15)
    shift_x, shift_y = rng.uniform(-0.04, 0.04, 2).tolist()
    axis_u, axis_v = rng.uniform([0.70, 0.82], [0.78, 0.90]).tolist()
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / axis_u
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / axis_v
    z = rng.uniform(0.0, 0.3)
    theta = np.arctan2(v, u)
    wobble = 1 + sum(rng.uniform(-0.015, 0.015) * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))
    r = np.sqrt(u ** 2 + v ** 2) * wobble

    detail = _smooth_noise(rng, (size, size), 1.0 * px)
    labels = np.full((size, size), _P_BACKGROUND, np.uint8)
    head = r < 1
    labels[head] = _P_SCALP
    labels[r < _P_SKULL_RADIUS] = _P_SKULL
    labels[r < _P_CSF_RADIUS] = _P_CSF
    brain = r < _P_BRAIN_RADIUS
    labels[brain] = _P_WHITE
    labels[brain & (_P_BRAIN_RADIUS - r < 0.08 + 0.05 * detail)] = _P_GREY
    ventricles = brain & _ventricles(rng, u, v, np.full((1, 1), z, np.float32))
    labels[ventricles] = _P_VENTRICLE
    image = _PAIR_INPUT_LEVELS[labels]
    target = _PAIR_TARGET_LEVELS[labels]
    # Perfusion-like variation of the enhancement that the input does not show.
    target += brain * 6 * _smooth_noise(rng, (size, size), 3.0 * px)

    # Choroid plexus: the back third of each ventricle, away from its wall.
    parts, count = ndimage.label(ventricles)
    inner = ndimage.binary_erosion(ventricles, iterations=max(1, round(px)))
    choroid = np.zeros_like(ventricles)
    for n in range(1, count + 1):
        part = parts == n
        back = v[part].max() - 0.35 * (v[part].max() - v[part].min())
        choroid |= part & (v > back) & (inner if (inner & part).any() else part)
    image[choroid] = rng.uniform(75, 95) + 8 * detail[choroid]
    target[choroid] = rng.uniform(185, 225)
    # Partial volume at tissue boundaries; vessels and lesions come with soft edges of their own.
    image = ndimage.gaussian_filter(image, 0.5 * px)
    target = ndimage.gaussian_filter(target, 0.5 * px)

    # Vessels: cortical ones winding inwards from the brain's surface, and the sinus.
    vessels = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(4, 9))):
        points = _vessel_path(rng, _P_BRAIN_RADIUS)
        a, b = points[:, 0] * axis_u, points[:, 1] * axis_v
        px_x, px_y = cos * a - sin * b + shift_x, sin * a + cos * b + shift_y
        vessels = np.maximum(vessels, _draw_line(px_y, px_x, size, rng.uniform(0.5, 0.8) * px))
    sinus_v = rng.choice([-1, 1]) * (_P_CSF_RADIUS - 0.02)
    sinus = np.clip(1.5 - np.hypot(u / 0.05, (v - sinus_v) / 0.04), 0, 1)  # a soft dot at the midline
    vessels = np.maximum(vessels, sinus) * (r < _P_SKULL_RADIUS)
    image -= vessels * rng.uniform(25, 40)
    target += vessels * (rng.uniform(215, 255) - target)

    # Enhancing lesions in the brain: faintly dark and textured on the input.
    texture = _smooth_noise(rng, (size, size), 0.6 * px)
    for _ in range(int(rng.integers(MIN_ENHANCING_LESIONS, MAX_ENHANCING_LESIONS + 1))):
        phi, rho = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.6)
        radius = rng.uniform(0.08, 0.16)
        harmonics = [(k, rng.uniform(0, 0.12), rng.uniform(0, 2 * math.pi)) for k in (2, 3)]
        du, dv = u - rho * math.cos(phi), v - rho * math.sin(phi)
        angle_l = np.arctan2(dv, du)
        edge = radius * (1 + sum(amp * np.cos(k * angle_l + ph) for k, amp, ph in harmonics))
        d = np.hypot(du, dv) / edge  # < 1 inside
        soft = np.clip((1 - d) * radius * size / 2 / max(px, 1) + 0.5, 0, 1) * brain
        halo = np.clip(1.6 - d, 0, 0.6) / 0.6 * brain
        image -= rng.uniform(8, 14) * halo
        image += soft * (rng.uniform(-30, -18) + 14 * texture)
        if rng.random() < 0.5:  # solid
            enhancement = soft * rng.uniform(150, 220)
        else:  # ring: a bright rim around a dim core
            rim = np.clip(1 - np.abs(d - 0.8) / 0.25, 0, 1) * brain
            enhancement = np.maximum(rim * rng.uniform(190, 240), soft * rng.uniform(30, 60))
        target = np.maximum(target, enhancement)

    # The input's bias field and noise, and the target's own noise.
    tilt = rng.uniform(-0.08, 0.08, 3).tolist()
    image *= rng.uniform(0.9, 1.1) * (1 + tilt[0] * x + tilt[1] * y + tilt[2] * (x ** 2 + y ** 2))
    image += rng.uniform(3, 6) * rng.standard_normal(image.shape, dtype=np.float32)
    target += 3 * rng.standard_normal(target.shape, dtype=np.float32)
    image = np.clip(np.rint(np.abs(image)), 0, 255).astype(np.uint8)
    target = (np.clip(np.rint(target), 0, 255) * head).astype(np.uint8)
    return image, target, labels


def _vessel_path(rng: np.random.Generator, start_radius: float) -> np.ndarray:
    """A winding path (points [n, 2] in head units u, v) from the brain's
    surface inwards, 0.3 to 0.7 long, in steps of 0.01."""
    phi = rng.uniform(0, 2 * math.pi)
    point = start_radius * np.array([math.cos(phi), math.sin(phi)])
    heading = phi + math.pi + rng.uniform(-0.6, 0.6)
    turn = rng.normal(0, 0.05)
    points = [point]
    for _ in range(int(rng.uniform(0.3, 0.7) / 0.01)):
        turn = 0.9 * turn + rng.normal(0, 0.03)
        heading += turn
        point = point + 0.01 * np.array([math.cos(heading), math.sin(heading)])
        if np.hypot(*point) > start_radius:
            break
        points.append(point)
    return np.array(points)


def _draw_line(rows: np.ndarray, cols: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """A tube of Gaussian profile (peak 1 in its middle, sigma pixels) along
    the points given in image coordinates [-1, 1], float32 [size, size]."""
    rr, cc = (rows + 1) / 2 * (size - 1), (cols + 1) / 2 * (size - 1)
    # Resample at half a pixel, each sample weighing its share of the length.
    steps = np.hypot(np.diff(rr), np.diff(cc))
    length = float(steps.sum())
    count = max(2, int(math.ceil(length / 0.5)) + 1)
    at = np.linspace(0, length, count)
    along = np.concatenate([[0], np.cumsum(steps)])
    rr, cc = np.interp(at, along, rr), np.interp(at, along, cc)
    ink = np.zeros((size, size), np.float32)
    r0, c0 = np.floor(rr).astype(int), np.floor(cc).astype(int)
    fr, fc = rr - r0, cc - c0
    weight = length / count
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (1, 0, fr * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 1, fr * fc)):
        ok = (r0 + dr >= 0) & (r0 + dr < size) & (c0 + dc >= 0) & (c0 + dc < size)
        np.add.at(ink, (r0[ok] + dr, c0[ok] + dc), weight * w[ok])
    return np.clip(ndimage.gaussian_filter(ink, sigma) * math.sqrt(2 * math.pi) * sigma, 0, 1)


def write_pair_phantoms(out_dir: str | os.PathLike, *, num_pairs: int = 24, size: int = 64, seed: int = 0,
                        overwrite: bool = False, progress: bool = True) -> list[str]:
    """Writes `num_pairs` (input, target) pairs from `generate_pair` as 8-bit
    grey PNGs, `out_dir/inputs/<stem>.png` and `out_dir/targets/<stem>.png`
    (the layout `data_prep.pictures --task=regression` reads: the same stem
    in both folders); returns the stems (sorted). Each pair is a patient of
    its own, stems `p01`, `p02`, ... (zero-padded to at least two digits,
    more where `num_pairs` needs them).

    The folder appears complete or not at all (written into a temporary
    sibling that replaces `out_dir` at the end); an existing non-empty
    `out_dir` raises DataError unless `overwrite` and it holds only such pairs.
    """
    from unet_jax.data.medical_io import write_image  # as in write_lesion_phantoms: SimpleITK only here

    if not 1 <= num_pairs <= MAX_PAIRS:
        raise ValueError(f"num_pairs={num_pairs}: must be in [1, {MAX_PAIRS}]")
    width = max(2, len(str(num_pairs)))
    stems = []
    with atomic_output_dir(out_dir, overwrite, own_files=_PAIR_FILES) as tmp:
        for folder in ("inputs", "targets"):
            os.makedirs(os.path.join(tmp, folder))
        for index in tqdm(range(num_pairs), desc="pair phantoms", unit="pair", disable=not progress):
            image, target = generate_pair(index, size=size, seed=seed)
            stem = f"p{index + 1:0{width}d}"
            write_image(os.path.join(tmp, "inputs", f"{stem}.png"), image)
            write_image(os.path.join(tmp, "targets", f"{stem}.png"), target)
            stems.append(stem)
    return sorted(stems)


def _is_prepared(folder: str) -> bool:
    """Whether `folder` holds phantoms prepared by this data_prep (an older one
    left out the per-patient intensity statistics)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return "intensity_stats" in json.load(f)


def prepare_demo(workdir: str, *, num_patients: int = 10, num_slices: int = 20, size: int = 256,
                 seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 volume_depth: int = 0) -> str:
    """Generates phantoms under `workdir/data` and prepares them as TFRecords
    (as volumes with `volume_depth`), once; returns the prepared folder (the
    demo config trains on it)."""
    root = os.path.join(os.path.abspath(workdir), "data")
    prepared = os.path.join(root, "prepared")
    if not _is_prepared(prepared):
        phantoms = os.path.join(root, "phantoms")
        write_phantoms(phantoms, num_patients=num_patients, num_slices=num_slices, size=size, seed=seed,
                       overwrite=True, progress=False)
        lgg.prepare(phantoms, prepared, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                    volume_depth=volume_depth, overwrite=True, progress=False)
    return prepared


def prepare_lesion_demo(workdir: str, *, num_cases: int = 10, shape=(64, 64, 24), spacing=(1.0, 1.0, 3.0),
                        seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> str:
    """Generates 3-D lesion phantoms (NIfTI) under `workdir/data` and prepares
    them with data_prep.volumes (FLAIR and T1, z-scored over the head), once;
    returns the prepared folder."""
    from data_prep import volumes  # reads NIfTI through SimpleITK: only this demo needs it

    root = os.path.join(os.path.abspath(workdir), "data")
    prepared = os.path.join(root, "prepared_3d")
    if not os.path.exists(os.path.join(prepared, MANIFEST)):
        phantoms = os.path.join(root, "lesion_phantoms")
        write_lesion_phantoms(phantoms, num_cases=num_cases, shape=tuple(shape), spacing=tuple(spacing), seed=seed,
                              overwrite=True, progress=False)
        volumes.prepare(phantoms, prepared, channels="FLAIR*,T1*", label="lesions*", val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, overwrite=True, progress=False)
    return prepared


def prepare_chest_demo(workdir: str, *, num_cases: int = 6, shape=(128, 128, 24), spacing=(2.0, 2.0, 5.0),
                       seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> str:
    """Generates chest CT phantoms (NIfTI, Hounsfield units) under
    `workdir/data` and prepares them with data_prep.volumes as axial slices
    in the wide lung window, scaled to [0, 1], once; returns the prepared folder."""
    from data_prep import volumes  # reads NIfTI through SimpleITK: only this demo needs it

    root = os.path.join(os.path.abspath(workdir), "data")
    prepared = os.path.join(root, "prepared_chest")
    if not os.path.exists(os.path.join(prepared, MANIFEST)):
        phantoms = os.path.join(root, "chest_phantoms")
        write_chest_phantoms(phantoms, num_cases=num_cases, shape=tuple(shape), spacing=tuple(spacing), seed=seed,
                             overwrite=True, progress=False)
        volumes.prepare(phantoms, prepared, channels="ct*", label="lungs*", intensity="ct", ct_window="lung_wide",
                        crop=False, slices="axial", slice_size=f"{shape[0]},{shape[1]}", val_fraction=val_fraction,
                        test_fraction=test_fraction, seed=seed, overwrite=True, progress=False)
    return prepared


def prepare_pair_demo(workdir: str, *, num_pairs: int = 24, size: int = 64, seed: int = 0,
                      val_fraction: float = 0.2, test_fraction: float = 0.2, double: bool = True) -> str:
    """Generates 2-D T1 -> contrast-map pairs (PNG) under `workdir/data` and
    prepares them with data_prep.pictures as a regression (with document
    000's doubling of the training pairs), once; returns the prepared folder."""
    from data_prep import pictures

    root = os.path.join(os.path.abspath(workdir), "data")
    prepared = os.path.join(root, "prepared_pairs")
    if not os.path.exists(os.path.join(prepared, MANIFEST)):
        phantoms = os.path.join(root, "pair_phantoms")
        write_pair_phantoms(phantoms, num_pairs=num_pairs, size=size, seed=seed, overwrite=True, progress=False)
        pictures.prepare(phantoms, prepared, task="regression", double=double, val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, overwrite=True, progress=False)
    return prepared


# config.data.synthetic.kind -> its preparer
DEMOS = {"lgg": prepare_demo, "lesions_3d": prepare_lesion_demo, "chest_ct": prepare_chest_demo,
         "pairs_2d": prepare_pair_demo}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True, help="folder to create (kaggle_3m layout)")
    parser.add_argument("--num_patients", type=int, default=10)
    parser.add_argument("--num_slices", type=int, default=20, help="slices per patient")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    args = parser.parse_args(argv)
    if not 1 <= args.num_patients <= MAX_PATIENTS:
        parser.error(f"--num_patients={args.num_patients}: must be in [1, {MAX_PATIENTS}]")
    if args.num_slices < 1:
        parser.error(f"--num_slices={args.num_slices}: must be at least 1")
    if args.size < 32 or args.size % 16:
        parser.error(f"--size={args.size}: must be a multiple of 16, at least 32")
    if args.seed < 0:
        parser.error(f"--seed={args.seed}: must be non-negative")
    try:
        names = write_phantoms(args.out_dir, num_patients=args.num_patients, num_slices=args.num_slices,
                               size=args.size, seed=args.seed, overwrite=args.overwrite)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    masks = glob.glob(os.path.join(args.out_dir, "*", "*_mask.tif"))
    with_tumour = sum(bool(tifffile.imread(m).any()) for m in masks)
    print(f"wrote {len(names)} patients, {len(masks)} slices ({with_tumour} with tumour) "
          f"of {args.size}x{args.size} to {os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    main()
