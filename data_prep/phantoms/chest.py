"""Chest CTs (`generate_chest_case`, `write_chest_phantoms`) for lung
segmentation and the simulated lung pathology: int16 volumes in Hounsfield
units with uint8 lung labels (both lungs 1, vessels inside them included),
`<case>/ct.nii.gz` and `<case>/lungs.nii.gz`, X to the patient's left, Y to
the back, Z up. Air outside an elliptical body of soft tissue in a
subcutaneous fat ring, with ribs; two kidney-shaped lungs (about -850 HU)
either side of the mediastinum, their size varying along Z, with a few tens
of branching vessels; the heart in the lower slices, the aorta, the airways
and the spine (cancellous bone in a cortical rim); noise of about 20 HU. The
slices at the bottom and top may show one lung or none.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from scipy import ndimage

from data_prep.phantoms.nifti import MAX_CASES, write_cases
from data_prep.phantoms.shapes import smooth_noise, voxel_grid

# What write_chest_phantoms writes, relative to its out_dir: --overwrite replaces a folder holding only such cases.
_CHEST_FILES = re.compile(r"chest_\d{4}/(ct|lungs)\.nii\.gz")
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
    shape, spacing = voxel_grid(shape, spacing)
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
    texture = smooth_noise(rng, shape, [2.0 / s for s in spacing])
    ct += np.where(label, 20.0, 0.0).astype(np.float32) * texture
    bone = ct > 300
    ct += np.where(bone, 40.0, 0.0).astype(np.float32) * texture
    ct += np.float32(noise_hu) * rng.standard_normal(shape, dtype=np.float32)
    ct = np.clip(np.rint(ct), *HU_STORED).astype(np.int16)
    return name, ct, label.astype(np.uint8)


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
    def case(index: int, shape: tuple, spacing: tuple) -> tuple[str, dict[str, np.ndarray]]:
        name, ct, lungs = generate_chest_case(index, shape=shape, spacing=spacing, seed=seed)
        return name, {"ct.nii.gz": ct, "lungs.nii.gz": lungs}

    return write_cases(out_dir, case, num_cases=num_cases, shape=shape, spacing=spacing, own_files=_CHEST_FILES,
                       desc="chest phantoms", overwrite=overwrite, progress=progress)
