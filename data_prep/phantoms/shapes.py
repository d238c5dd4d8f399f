"""Drawing helpers the phantom generators share: smooth noise, lateral
ventricles and the checked voxel grid of a 3-D phantom."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def lateral_ventricles(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Two lateral ventricles: ellipsoids angled apart towards the front."""
    scale = rng.uniform(0.8, 1.3)
    inside = np.zeros(np.broadcast_shapes(u.shape, z.shape), bool)
    for side in (-1, 1):
        cos, sin = math.cos(side * 0.25), math.sin(side * 0.25)
        du, dv = u - side * 0.13 * scale, v + 0.05
        pu, pv = cos * du + sin * dv, -sin * du + cos * dv
        inside |= (pu / (0.09 * scale)) ** 2 + (pv / 0.30) ** 2 + ((z - 0.15) / 0.25) ** 2 < 1
    return inside


def voxel_grid(shape, spacing) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`shape` as three positive ints and `spacing` as three positive finite floats (mm); ValueError otherwise."""
    shape = tuple(int(n) for n in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape={shape}: need three positive sizes [X, Y, Z]")
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing={spacing}: need three positive voxel sizes in mm")
    return shape, spacing


