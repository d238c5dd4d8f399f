"""Image pairs for contrast-map regression (`generate_pair`,
`write_pair_phantoms`), 8-bit grey PNGs in `inputs/` and `targets/` under the
same stems (the layout `data_prep.pictures --task=regression` reads): a
T1-like head slice in, its contrast-enhancement map out (vessels, the
choroid plexus and enhancing lesions bright on a low tissue background,
exactly 0 outside the head). Each structure that enhances shows faintly in
the input, so the map can be learnt, but not as a pointwise function of the
input's grey levels.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from data_prep.common import atomic_output_dir
from data_prep.phantoms.shapes import head_frame, lateral_ventricles, outline_wobble, smooth_noise
from unet_jax.data.medical_io import write_image

# What write_pair_phantoms writes, relative to its out_dir: --overwrite replaces a folder holding only such pairs.
_PAIR_FILES = re.compile(r"(inputs|targets)/p\d+\.png")
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
    frame = head_frame(rng, size, 0.04, [0.70, 0.82], [0.78, 0.90])
    x, y, u, v = frame.x, frame.y, frame.u, frame.v
    z = rng.uniform(0.0, 0.3)
    r = np.sqrt(u ** 2 + v ** 2) * outline_wobble(rng, u, v)

    detail = smooth_noise(rng, (size, size), 1.0 * px)
    labels = np.full((size, size), _P_BACKGROUND, np.uint8)
    head = r < 1
    labels[head] = _P_SCALP
    labels[r < _P_SKULL_RADIUS] = _P_SKULL
    labels[r < _P_CSF_RADIUS] = _P_CSF
    brain = r < _P_BRAIN_RADIUS
    labels[brain] = _P_WHITE
    labels[brain & (_P_BRAIN_RADIUS - r < 0.08 + 0.05 * detail)] = _P_GREY
    ventricles = brain & lateral_ventricles(rng, u, v, np.full((1, 1), z, np.float32))
    labels[ventricles] = _P_VENTRICLE
    image = _PAIR_INPUT_LEVELS[labels]
    target = _PAIR_TARGET_LEVELS[labels]
    # Perfusion-like variation of the enhancement that the input does not show.
    target += brain * 6 * smooth_noise(rng, (size, size), 3.0 * px)

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
        a, b = points[:, 0] * frame.axis_u, points[:, 1] * frame.axis_v
        px_x, px_y = frame.cos * a - frame.sin * b + frame.shift_x, frame.sin * a + frame.cos * b + frame.shift_y
        vessels = np.maximum(vessels, _draw_line(px_y, px_x, size, rng.uniform(0.5, 0.8) * px))
    sinus_v = rng.choice([-1, 1]) * (_P_CSF_RADIUS - 0.02)
    sinus = np.clip(1.5 - np.hypot(u / 0.05, (v - sinus_v) / 0.04), 0, 1)  # a soft dot at the midline
    vessels = np.maximum(vessels, sinus) * (r < _P_SKULL_RADIUS)
    image -= vessels * rng.uniform(25, 40)
    target += vessels * (rng.uniform(215, 255) - target)

    # Enhancing lesions in the brain: faintly dark and textured on the input.
    texture = smooth_noise(rng, (size, size), 0.6 * px)
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
