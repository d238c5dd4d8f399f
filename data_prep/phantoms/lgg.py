"""LGG-like patients (`generate_patient`, `write_phantoms`) in the Kaggle
`kaggle_3m` layout: laid out like the real download and with clearly
FLAIR-bright tumours, they let the whole LGG pipeline, training included, run
without the real dataset. Each patient is a head volume cut into axial slices:
a bright scalp shell, a dark CSF band, textured grey and white matter, two
lateral ventricles and, in most patients, one or two irregular tumours spanning
consecutive slices. Channels are (pre-contrast, FLAIR, post-contrast) as in the
real data.
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import tifffile
from scipy import ndimage
from tqdm import tqdm

from data_prep.common import atomic_output_dir
from data_prep.phantoms.shapes import head_frame, lateral_ventricles, outline_wobble, smooth_noise

INSTITUTION = "PH"
# What write_phantoms writes, relative to its out_dir: --overwrite replaces a folder holding only such files.
_LGG_FILES = re.compile(rf"(TCGA_{INSTITUTION}_\d{{4}}_\d{{8}})/\1_\d+(_mask)?\.tif")
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
    frame = head_frame(rng, size, 0.05, [0.68, 0.80], [0.78, 0.90])
    x, y, u, v = frame.x, frame.y, frame.u, frame.v
    z = np.linspace(-0.75, 0.9, num_slices, dtype=np.float32)[:, None, None]
    wobble = outline_wobble(rng, u, v)
    r = np.sqrt((u**2 + v**2) * wobble**2 + z**2)

    # One fine noise field serves both the cortex and tumour heterogeneity:
    # they never overlap visibly, since tumours are painted over the brain.
    detail = smooth_noise(rng, shape, (0.5, 3 * px, 3 * px))
    labels = np.full(shape, _BACKGROUND, np.uint8)
    labels[r < 1] = _SHELL
    labels[r < _CSF_RADIUS] = _CSF
    brain = r < _BRAIN_RADIUS
    labels[brain] = _WHITE
    # A cortex of wavy thickness (zero in places) gives gyrus-like patterns.
    labels[brain & (_BRAIN_RADIUS - r < 0.06 + 0.04 * detail)] = _GREY
    labels[brain & lateral_ventricles(rng, u, v, z)] = _VENTRICLE

    image = _TISSUE_LEVELS[labels]
    image += (brain * (8 * smooth_noise(rng, shape, (1, 5 * px, 5 * px))))[..., None]

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
