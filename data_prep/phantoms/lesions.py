"""White-matter-lesion heads (`generate_lesion_case`, `write_lesion_phantoms`) for
the 3-D WMH U-Net, as NIfTI volumes in the per-case folder layout that
`data_prep.volumes` reads (`--channels='FLAIR*,T1*' --label='lesions*'`):
skull-stripped like the real Ljubljana MS data (exactly 0 outside the head), a
thin CSF rim, a wavy cortex, white matter, two lateral ventricles and 3 to 12
small periventricular or deep white-matter lesions, bright on FLAIR and dark on
T1, in every case.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from scipy import ndimage

from data_prep.phantoms.nifti import MAX_CASES, write_cases
from data_prep.phantoms.shapes import smooth_noise, voxel_grid

# What write_lesion_phantoms writes, relative to its out_dir: --overwrite replaces a folder holding only such cases.
_LESION_FILES = re.compile(r"case_\d{4}/(FLAIR|T1|lesions)\.nii\.gz")
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
    shape, spacing = voxel_grid(shape, spacing)
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
    detail = smooth_noise(rng, shape, [1.5 / s for s in spacing])
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
    def case(index: int, shape: tuple, spacing: tuple) -> tuple[str, dict[str, np.ndarray]]:
        name, flair, t1, mask = generate_lesion_case(index, shape=shape, spacing=spacing, seed=seed)
        return name, {"FLAIR.nii.gz": flair, "T1.nii.gz": t1, "lesions.nii.gz": mask}

    return write_cases(out_dir, case, num_cases=num_cases, shape=shape, spacing=spacing, own_files=_LESION_FILES,
                       desc="lesion phantoms", overwrite=overwrite, progress=progress)
