"""Training augmentation on NumPy arrays, run inside the grain workers.

Geometric transforms are applied to image and mask in one interpolation call,
so both move identically; a 0/1 mask is interpolated linearly and
re-thresholded at 0.5, which keeps its edges where the image's edges go (a
mask of several labels goes through its one-hot channels and an argmax).
Volumes [H, W, D, C] get the same in-plane transform on every slice.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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
    """Applies a 2x2 output->input matrix about the centre of an [H, W, C] float
    array: bilinear, zero outside, all channels sampled at the same points.

    Plain NumPy gathers: several times faster than scipy.ndimage on [H, W, C],
    which interpolates along the channel axis too.
    """
    h, w = stack.shape[:2]
    centre = np.array([[(h - 1) / 2], [(w - 1) / 2]])
    grid = np.mgrid[0:h, 0:w].reshape(2, -1)
    y, x = matrix @ (grid - centre) + centre
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = (y - y0).astype(np.float32)[:, None], (x - x0).astype(np.float32)[:, None]
    # One pixel of zeros around the image; any coordinate further out clips onto it.
    c = stack.shape[-1]
    flat = np.pad(stack.astype(np.float32), ((1, 1), (1, 1), (0, 0))).reshape(-1, c)
    yi = np.clip(y0.astype(np.int64), -1, h) + 1
    xi = np.clip(x0.astype(np.int64), -1, w) + 1
    top, left = yi * (w + 2), xi
    bottom, right = np.minimum(yi + 1, h + 1) * (w + 2), np.minimum(xi + 1, w + 1)
    def at(rows):  # np.take is several times faster than fancy indexing here
        return np.take(flat, rows, axis=0)

    out = ((at(top + left) * (1 - wx) + at(top + right) * wx) * (1 - wy)
           + (at(bottom + left) * (1 - wx) + at(bottom + right) * wx) * wy)
    return out.reshape(stack.shape)


def warp_with_mask(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`warp` of an [H, W, ...] image and its [H, W, ...] label mask together
    (any extra axes, such as the depth of a volume, are folded into channels)."""
    h, w = mask.shape[:2]
    labels = int(mask.max())
    # Binary: the mask itself; more labels: one channel per label, argmax after.
    planes = mask[..., None] if labels <= 1 else np.eye(labels + 1, dtype=np.float32)[mask.astype(np.int64)]
    stack = warp(np.concatenate([image.reshape(h, w, -1), planes.reshape(h, w, -1)], axis=-1), matrix)
    n = image[0, 0].size
    image = stack[..., :n].reshape(image.shape)
    planes = stack[..., n:].reshape(planes.shape)
    if labels <= 1:
        return image, (planes[..., 0] >= 0.5).astype(np.float32)
    return image, np.argmax(planes, axis=-1).astype(np.float32)


def augment_slice(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  opts: AugmentOptions) -> tuple[np.ndarray, np.ndarray]:
    """Random flip, rotation and scaling of an [H, W, C] image and its [H, W]
    label mask, or in-plane of an [H, W, D, C] volume and its [H, W, D] mask
    (float32 in, float32 out; mask labels stay labels)."""
    if rng.random() < opts.flip_prob:
        image, mask = image[:, ::-1], mask[:, ::-1]
    matrix = random_affine(rng, opts)
    if matrix is not None:
        image, mask = warp_with_mask(image, mask, matrix)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)
