"""Training augmentation on NumPy arrays, run inside the grain workers.

Geometric transforms are applied to image and mask in one interpolation call,
so both move identically; a 0/1 mask is interpolated linearly and
re-thresholded at 0.5, which keeps its edges where the image's edges go (a
mask of several labels goes through its one-hot channels and an argmax). A
regression's float target (`continuous=True`) is interpolated linearly like
the image and never thresholded.
Volumes [H, W, D, C] get the same in-plane transform on every slice.

`sample_patch` cuts training patches out of whole volumes (or 2-D images) the
way nnU-Net does (a share of them centred on foreground), with rotation and
scaling in-plane or in 3-D sampled straight from the whole volume, flips on
any axes and per-channel intensity transforms (`augment_intensity`, which
`augment_slice` applies too; off by default).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """Each transform happens with its own probability; zero turns it off.

    Geometry first (flips, rotation, scaling), then the intensity transforms
    on the image only, each channel with its own random parameter (nnU-Net's
    ranges; its order: noise, brightness, contrast, gamma).
    """

    flip_prob: float = 0.5          # each axis of flip_axes flipped independently
    rotate_prob: float = 0.5
    max_rotate_deg: float = 15.0    # uniform in [-max, max] (each of the three angles in 3-D)
    scale_prob: float = 0.5
    max_scale: float = 0.05         # isotropic zoom factor uniform in [1-max, 1+max]
    # Spatial axes: (1,) is left-right of a kaggle_3m [H, W] slice; in an [X, Y, Z]
    # volume of medical_io axis 0 is left-right, so 3-D configs name theirs, e.g. (0, 1, 2).
    flip_axes: tuple[int, ...] = (1,)
    rotate_3d: bool = False         # sample_patch of a volume: False rotates about the last axis, in the
    #                                 plane of axes 0 and 1, and zooms there only; True rotates about all
    #                                 three axes and zooms in 3-D, in voxel space (anisotropic spacing
    #                                 is not undone); augment_slice is always in-plane
    brightness_prob: float = 0.0    # multiply by a factor uniform in brightness_range
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.0      # (x - mean) * factor + mean, clipped to the channel's min/max
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_prob: float = 0.0         # min/max -> [0, 1], ** gamma, back to min/max
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.0         # + Gaussian noise, sigma uniform in [0, noise_std]
    noise_std: float = 0.1

    def __post_init__(self):
        # Tuples even when a config gives lists: the options stay hashable and comparable.
        for name in ("flip_axes", "brightness_range", "contrast_range", "gamma_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


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
    # Coordinates (not their floors) clip onto the one pixel of zeros around the
    # image, so points further out read zero rather than half the edge pixel.
    y, x = np.clip(y, -1, h), np.clip(x, -1, w)
    y0, x0 = np.floor(y), np.floor(x)
    wy, wx = (y - y0).astype(np.float32)[:, None], (x - x0).astype(np.float32)[:, None]
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


def warp_with_mask(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray,
                   continuous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`warp` of an [H, W, ...] image and its [H, W, ...] label mask together
    (any extra axes, such as the depth of a volume, are folded into channels);
    a `continuous` mask (a float target) is warped as the image is."""
    h, w = mask.shape[:2]
    labels = 1 if continuous else int(mask.max())
    # Binary: the mask itself; more labels: one channel per label, argmax after.
    planes = mask[..., None] if labels <= 1 else np.eye(labels + 1, dtype=np.float32)[mask.astype(np.int64)]
    stack = warp(np.concatenate([image.reshape(h, w, -1), planes.reshape(h, w, -1)], axis=-1), matrix)
    n = image[0, 0].size
    image = stack[..., :n].reshape(image.shape)
    planes = stack[..., n:].reshape(planes.shape)
    if continuous:
        return image, planes[..., 0]
    if labels <= 1:
        return image, (planes[..., 0] >= 0.5).astype(np.float32)
    return image, np.argmax(planes, axis=-1).astype(np.float32)


def _flip_axes(opts: AugmentOptions, ndim: int) -> tuple[int, ...]:
    axes = tuple(int(a) for a in opts.flip_axes)
    for a in axes:
        if not 0 <= a < ndim:
            raise ValueError(f"flip_axes={axes}: axis {a} is not one of the {ndim} spatial axes")
    return axes


def _random_flips(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, opts: AugmentOptions,
                  ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Flips each axis of `opts.flip_axes` with `opts.flip_prob` (one draw per axis)."""
    for axis in _flip_axes(opts, ndim):
        if rng.random() < opts.flip_prob:
            image, mask = np.flip(image, axis), np.flip(mask, axis)
    return image, mask


def augment_slice(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                  opts: AugmentOptions, continuous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Random flips, rotation and scaling of an [H, W, C] image and its [H, W]
    label mask (or `continuous` float target), or in-plane of an [H, W, D, C]
    volume and its [H, W, D] mask, then `augment_intensity` of the image only
    (float32 in, float32 out; mask labels stay labels)."""
    image, mask = _random_flips(image, mask, rng, opts, mask.ndim)
    matrix = random_affine(rng, opts)
    if matrix is not None:
        image, mask = warp_with_mask(image, mask, matrix, continuous)
    image = augment_intensity(image, rng, opts)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


# ---- intensity

def _happens(rng: np.random.Generator, prob: float) -> bool:
    """True with probability `prob`; draws nothing when it is 0, so transforms
    that are off leave the random stream as it was."""
    return prob > 0 and rng.random() < prob


def _nnunet_factor(rng: np.random.Generator, bounds: tuple[float, float], n: int) -> np.ndarray:
    """`n` factors from [lo, hi] drawn as nnU-Net draws contrast and gamma:
    when the range straddles 1, half below 1 (uniform in [lo, 1]) and half
    above (uniform in [1, hi]), so shrinking is as likely as stretching."""
    lo, hi = (float(b) for b in bounds)
    if not lo < 1 < hi:
        return rng.uniform(lo, hi, size=n)
    below = rng.random(n) < 0.5
    return np.where(below, rng.uniform(lo, 1.0, size=n), rng.uniform(1.0, hi, size=n))


def augment_intensity(image: np.ndarray, rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray:
    """nnU-Net's intensity transforms of an [..., C] float image (2-D or 3-D),
    in nnU-Net's order, each with its own probability per call and its own
    random parameter per channel:

      noise       + N(0, sigma^2), sigma uniform in [0, noise_std]
      brightness  * factor, uniform in brightness_range
      contrast    (x - mean) * factor + mean, clipped to the channel's min/max
                  before the transform (factor as `_nnunet_factor`)
      gamma       ((x - min) / (max - min)) ** gamma * (max - min) + min: the
                  channel's min and max stay (gamma as `_nnunet_factor`; a
                  constant channel is left alone)

    Returns a new float32 array, or `image` itself when nothing was drawn;
    all probabilities 0 (the default) draws no random numbers.
    """
    image = np.asarray(image, np.float32)
    channels = image.shape[-1]
    draws = []  # (transform, per-channel parameters), drawn in order before any work
    if _happens(rng, opts.noise_prob):
        sigma = rng.uniform(0.0, opts.noise_std, size=channels)
        draws.append(("noise", sigma, rng.standard_normal((channels, image[..., 0].size), dtype=np.float32)))
    if _happens(rng, opts.brightness_prob):
        draws.append(("brightness", rng.uniform(*opts.brightness_range, size=channels), None))
    if _happens(rng, opts.contrast_prob):
        draws.append(("contrast", _nnunet_factor(rng, opts.contrast_range, channels), None))
    if _happens(rng, opts.gamma_prob):
        draws.append(("gamma", _nnunet_factor(rng, opts.gamma_range, channels), None))
    if not draws:
        return image
    # Channel by channel on contiguous copies: NumPy reduces [N, C] over N many times slower.
    planes = np.moveaxis(image, -1, 0).reshape(channels, -1).copy()
    for c, x in enumerate(planes):
        for name, values, noise in draws:
            value = np.float32(values[c])
            if name == "noise":
                x += noise[c] * value
            elif name == "brightness":
                x *= value
            elif name == "contrast":
                low, high, mean = x.min(), x.max(), np.float32(x.mean(dtype=np.float64))
                x -= mean
                x *= value
                x += mean
                np.clip(x, low, high, out=x)
            else:  # gamma; a constant channel stays as it is
                low = x.min()
                span = x.max() - low
                if span > 0:
                    x -= low
                    x /= span
                    np.clip(x, 0, 1, out=x)
                    np.power(x, value, out=x)
                    x *= span
                    x += low
    return np.ascontiguousarray(np.moveaxis(planes.reshape(channels, *image.shape[:-1]), 0, -1))


# ---- patches

def _rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by `angle` about `axis` (in the plane of the other two)."""
    i, j = [a for a in range(3) if a != axis]
    m = np.eye(3)
    c, s = np.cos(angle), np.sin(angle)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def random_affine_3d(rng: np.random.Generator, opts: AugmentOptions) -> np.ndarray | None:
    """A 3x3 output->input matrix, or None for identity: with `rotate_prob`
    three angles, each uniform in [-max_rotate_deg, max_rotate_deg], about
    axes 0, 1 and 2; with `scale_prob` one isotropic zoom."""
    angles = np.deg2rad(rng.uniform(-opts.max_rotate_deg, opts.max_rotate_deg, size=3)) \
        if rng.random() < opts.rotate_prob else np.zeros(3)
    zoom = rng.uniform(1 - opts.max_scale, 1 + opts.max_scale) if rng.random() < opts.scale_prob else 1.0
    if not angles.any() and zoom == 1.0:
        return None
    return _rotation(0, angles[0]) @ _rotation(1, angles[1]) @ _rotation(2, angles[2]) / zoom


def _patch_affine(rng: np.random.Generator, opts: AugmentOptions, ndim: int) -> np.ndarray | None:
    """The output->input matrix of a 2-D or 3-D patch, or None for identity."""
    if ndim == 3 and opts.rotate_3d:
        return random_affine_3d(rng, opts)
    matrix = random_affine(rng, opts)  # 2-D, or in-plane (axes 0 and 1) of a volume
    if matrix is None or ndim == 2:
        return matrix
    full = np.eye(3)
    full[:2, :2] = matrix
    return full


def _crop(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """float32 window [start, start + size) of `array`'s leading axes, zeros outside."""
    out = np.zeros(tuple(size) + array.shape[len(size):], np.float32)
    src = tuple(slice(max(a, 0), min(a + n, s)) for a, n, s in zip(start, size, array.shape))
    dst = tuple(slice(max(a, 0) - a, min(a + n, s) - a) for a, n, s in zip(start, size, array.shape))
    out[dst] = array[src]
    return out


def _lerp(corners: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """Multilinear interpolation of the 2**k corner values (`itertools.product`
    order over k axes, the last axis fastest) with one fraction per axis;
    overwrites the corners."""
    for w in reversed(weights):
        pairs = zip(corners[::2], corners[1::2])
        corners = []
        for a, b in pairs:
            b -= a
            b *= w
            b += a
            corners.append(b)
    return corners[0]


def _resample(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, pivot: np.ndarray,
              out_pivot: np.ndarray, patch: tuple[int, ...], continuous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Image [*patch, C] and mask [*patch] sampled at input = pivot + matrix @
    (output - out_pivot): (bi/tri)linear, zero outside the volume; the mask
    through linear planes (itself if binary, one per label 1..L otherwise,
    background = what they leave) and a threshold at 0.5 or an argmax, as in
    `warp_with_mask`, so it follows the image's edges exactly; a `continuous`
    mask (a float target) is interpolated as the image is.

    NumPy gathers straight from the whole volume (nothing copied but the
    2**k corner values of each output voxel): one index computation serves
    every channel and label, where scipy.ndimage's `map_coordinates` or
    `affine_transform` interpolate one channel per call (35-65 ms per channel
    for a 128x128x16 patch on this machine). Zeros outside the volume come
    from edge-clamped interpolation times a per-axis border factor, which is
    the same thing. An axis that the matrix leaves alone (the slice axis of an
    in-plane transform) lands on whole voxels and is not interpolated. The
    pivot voxel maps exactly onto itself (coordinates are offsets from it).
    """
    ndim = len(patch)
    spatial = mask.shape
    channels = image.shape[-1]
    itype = np.intp  # what np.take indexes with (other types are converted first)
    strides = [int(np.prod(spatial[i + 1:])) for i in range(ndim)]
    index, border, steps, weights = itype(0), None, [], []
    for i in range(ndim):
        c = np.full((1,) * ndim, np.float32(pivot[i]))
        for j in range(ndim):
            if matrix[i, j] != 0:
                d = np.arange(patch[j], dtype=np.float32) - np.float32(out_pivot[j])
                c = c + np.float32(matrix[i, j]) * d.reshape([-1 if k == j else 1 for k in range(ndim)])
        size = spatial[i]
        if c.min() < 0 or c.max() > size - 1:
            factor = np.clip(np.minimum(c + 1, size - c), 0, 1)  # linear fade to the zeros outside
            border = factor if border is None else border * factor
            c = np.clip(c, 0, size - 1)
        floor = np.floor(c)
        if size > 1 and not np.array_equal(matrix[i], np.eye(ndim)[i]):
            floor = np.minimum(floor, size - 2)
            steps.append(strides[i])
            weights.append(np.broadcast_to(c - floor, patch).ravel())
        index = index + floor.astype(itype) * itype(strides[i])
    index = np.broadcast_to(index, patch).ravel()
    offsets = [sum(bit * s for bit, s in zip(bits, steps)) for bits in itertools.product((0, 1), repeat=len(steps))]

    # Every index is inside the volume by construction; mode="wrap" only skips
    # np.take's bounds check, the fastest of its modes.
    flat = np.ascontiguousarray(image, np.float32).reshape(-1, channels)
    if channels == 1:
        corners = [np.take(flat[:, 0], index + o, mode="wrap")[None] for o in offsets]
    else:  # channel-first, so the arithmetic runs along the voxels
        corners = [np.ascontiguousarray(np.take(flat, index + o, axis=0, mode="wrap").T) for o in offsets]
    image_out = _lerp(corners, weights)
    if border is not None:
        border = np.broadcast_to(border, patch).ravel()
        image_out *= border
    image_out = np.moveaxis(image_out.reshape(channels, *patch), 0, -1)

    labels = [np.take(mask.reshape(-1), index + o, mode="wrap") for o in offsets]
    if continuous:
        target = _lerp([v.astype(np.float32) for v in labels], weights)
        return image_out, (target if border is None else target * border).reshape(patch)
    count = max(int(max(v.max() for v in labels)), 0)
    if count == 0:
        return image_out, np.zeros(patch, np.float32)
    planes = [_lerp([(v == k).astype(np.float32) for v in labels], weights) for k in range(1, count + 1)] \
        if count > 1 else [_lerp([v.astype(np.float32, copy=False) for v in labels], weights)]
    if border is not None:
        planes = [p * border for p in planes]
    if count == 1:
        mask_out = (planes[0] >= 0.5).astype(np.float32)
    else:
        scores = np.stack([1 - sum(planes)] + planes)  # background: what the labels leave
        mask_out = np.argmax(scores, axis=0).astype(np.float32)
    return image_out, mask_out.reshape(patch)


def sample_patch(image: np.ndarray, mask: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator,
                 opts: AugmentOptions | None, foreground_prob: float = 1 / 3,
                 continuous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A random training patch of a whole volume: float32 image [*patch_size, C]
    and float32 mask [*patch_size] from image [X, Y, Z, C] (or [H, W, C]) and
    its label mask [X, Y, Z] (or [H, W]; a trailing axis of 1 is dropped;
    0 background, labels 1..L as float32 or uint8), or its float target
    (`continuous`: interpolated like the image; foreground is target > 0).

    Where it is (nnU-Net's sampling):
      - with probability `foreground_prob` the window is centred on a random
        foreground voxel (mask > 0), shifted as little as needed to stay
        inside the volume where the volume is at least the patch size; that
        voxel is in the patch, so the patch contains foreground. A volume
        without foreground falls back to a random window.
      - otherwise the window is uniform among the positions inside the volume.
      - along an axis where the volume is smaller than the patch, the window
        covers the whole axis with the volume centred (the extra (p - s) // 2
        zeros before it, the rest after), forced or not.
      Image and mask are padded with zeros.

    Augmentation (`opts`; None: only the crop, as for validation):
      - rotation/scaling (`random_affine` in-plane, or `random_affine_3d`
        with `rotate_3d`) turns the patch about its pivot voxel: the chosen
        foreground voxel (off the patch's centre where the window was
        shifted), or else the patch's centre voxel (patch_size // 2). The
        pivot maps exactly onto itself, so a forced patch keeps its
        foreground voxel. The patch is sampled straight from the whole volume
        in one interpolation (`_resample`: linear for the image, zeros
        outside; the mask through linear label planes and a threshold or
        argmax, like `warp_with_mask`, so its edges stay on the image's
        edges), so no border of the crop shows. No rotation or scaling drawn:
        a plain slice.
      - then flips on `flip_axes`, then `augment_intensity` (image only).
    Deterministic given `rng`.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    spatial = image.shape[:-1]
    if mask.shape == spatial + (1,):
        mask = mask[..., 0]
    ndim = len(spatial)
    if ndim not in (2, 3):
        raise ValueError(f"image of shape {image.shape}: expected [H, W, C] or [X, Y, Z, C]")
    if mask.shape != spatial:
        raise ValueError(f"mask of shape {mask.shape} does not match the image's spatial shape {spatial}")
    sizes = tuple(patch_size)
    if len(sizes) != ndim:
        raise ValueError(f"patch_size={sizes}: give {ndim} sizes, one per spatial axis of the image {image.shape}")
    if not all(isinstance(p, (int, np.integer)) and p > 0 for p in sizes):
        raise ValueError(f"patch_size={sizes}: sizes must be positive integers")
    if not 0 <= foreground_prob <= 1:
        raise ValueError(f"foreground_prob={foreground_prob}: a probability in [0, 1]")
    patch = tuple(int(p) for p in sizes)

    shape, size = np.array(spatial), np.array(patch)
    lowest = np.where(shape >= size, 0, -((size - shape) // 2))  # window starts allowed
    highest = np.where(shape >= size, shape - size, lowest)
    pivot = None
    if rng.random() < foreground_prob:
        foreground = np.flatnonzero(mask > 0)
        if foreground.size:
            pivot = np.array(np.unravel_index(foreground[rng.integers(foreground.size)], spatial))
            start = np.clip(pivot - size // 2, lowest, highest)
    if pivot is None:
        start = np.array([rng.integers(a, b + 1) for a, b in zip(lowest, highest)])
        pivot = start + size // 2

    matrix = _patch_affine(rng, opts, ndim) if opts is not None else None
    if matrix is None:
        image, mask = _crop(image, start, patch), _crop(mask, start, patch)
    else:
        image, mask = _resample(image, mask, matrix, pivot, pivot - start, patch, continuous)
    if opts is not None:
        image, mask = _random_flips(image, mask, rng, opts, ndim)
        image = augment_intensity(image, rng, opts)
    return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(mask, np.float32)
