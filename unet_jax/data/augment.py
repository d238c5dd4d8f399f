"""Training augmentation on NumPy arrays, run inside the grain workers.

Geometric transforms are applied to image and mask in one interpolation call,
so both move identically; the mask is interpolated linearly and re-thresholded
at 0.5, which keeps its edges where the image's edges go.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """Each transform happens with its own probability; zero turns it off."""

    flip_prob: float = 0.5          # horizontal (left-right) flip
    rotate_prob: float = 0.5
    max_rotate_deg: float = 15.0    # uniform in [-max, max]
    scale_prob: float = 0.5
    max_scale: float = 0.05         # zoom factor uniform in [1-max, 1+max]


def random_affine(rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray | None:
    """A 2x2 output->input matrix for rotation and scaling, or None for identity."""
    angle = np.deg2rad(rng.uniform(-opts.max_rotate_deg, opts.max_rotate_deg)) \
        if rng.random() < opts.rotate_prob else 0.0
    zoom = rng.uniform(1 - opts.max_scale, 1 + opts.max_scale) if rng.random() < opts.scale_prob else 1.0
    if angle == 0.0 and zoom == 1.0:
        return None
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]]) / zoom


def warp(stack: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies a 2x2 matrix about the centre of an [H, W, C] float array, bilinear,
    zero outside; channels are carried along untouched."""
    h, w = stack.shape[:2]
    full = np.eye(3)
    full[:2, :2] = matrix
    centre = np.array([(h - 1) / 2, (w - 1) / 2, 0.0])
    offset = centre - full @ centre
    return ndimage.affine_transform(stack, full, offset=offset, order=1, mode="constant", cval=0.0)


def augment_slice(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  opts: AugmentOptions) -> tuple[np.ndarray, np.ndarray]:
    """Random flip, rotation and scaling of an [H, W, C] image and its [H, W] mask
    (float32 in, float32 out; mask stays 0/1)."""
    if rng.random() < opts.flip_prob:
        image, mask = image[:, ::-1], mask[:, ::-1]
    matrix = random_affine(rng, opts)
    if matrix is not None:
        stack = warp(np.concatenate([image, mask[..., None]], axis=-1), matrix)
        image, mask = stack[..., :-1], (stack[..., -1] >= 0.5).astype(np.float32)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
