"""Drawing helpers the phantom generators share: a head's frame in an image,
its irregular outline, lateral ventricles, smooth noise, and the checked
voxel grid of a 3-D phantom."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage


class HeadFrame(NamedTuple):
    """An image grid (x, y in [-1, 1], [size, size]) and a head ellipse placed
    on it: (u, v) are the grid in the head's semi-axes units; the head is
    rotated by the angle of (cos, sin), centred at (shift_x, shift_y), with
    semi-axes (axis_u, axis_v)."""
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    cos: float
    sin: float
    shift_x: float
    shift_y: float
    axis_u: float
    axis_v: float


def head_frame(rng: np.random.Generator, size: int, shift: float, axes_low, axes_high) -> HeadFrame:
    """A head rotated by up to 0.15 rad, shifted by up to `shift` and with
    semi-axes (u, v) between `axes_low` and `axes_high`, drawn in that order."""
    line = np.linspace(-1, 1, size, dtype=np.float32)
    y, x = np.meshgrid(line, line, indexing="ij")
    angle = rng.uniform(-0.15, 0.15)
    shift_x, shift_y = rng.uniform(-shift, shift, 2).tolist()
    axis_u, axis_v = rng.uniform(axes_low, axes_high).tolist()
    cos, sin = math.cos(angle), math.sin(angle)
    u = (cos * (x - shift_x) + sin * (y - shift_y)) / axis_u
    v = (-sin * (x - shift_x) + cos * (y - shift_y)) / axis_v
    return HeadFrame(x, y, u, v, cos, sin, shift_x, shift_y, axis_u, axis_v)


def outline_wobble(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """1 plus small random harmonics of the direction from the head's centre:
    a head radius times it makes a slightly irregular outline."""
    theta = np.arctan2(v, u)
    return 1 + sum(rng.uniform(-0.015, 0.015) * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5))


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

