"""Simulated lung pathology, drawn on the fly into training CT slices.

Source document 003, section 2.2: with no scans of diseased lungs, lesions
are drawn into healthy ones. On a slice, with probability `prob` (0.8 was
the document's best of 0.6/0.8/0.9), the bounding boxes of the two largest
connected lung components of the label mask are found, and 7 to 9 lesions,
each with a random radius and transparency, are drawn at random positions
inside them. The label is never changed: the network learns that lung
under an opacity is still lung, which is what it fails at near the lung's
border when a pathology touches the chest wall. Slices that do not show two
lungs (the top and bottom of the lungs, or lungs that touch and form one
component) are left alone, as in the document.

A lesion with footprint `shape` in [0, 1] and opacity `a` blends the image
towards a soft-tissue intensity:

    image = (1 - a * shape) * image + a * shape * tissue

so every changed pixel moves towards `tissue` and never past it; lesions
that overlap add up (the denser, obstructed areas the document suggests as
an improvement). The document names its circles as its main limitation, so
besides its discs there are ellipses and textured, irregular blobs
(`PathologyOptions.shapes`). Footprints are anti-aliased over about one
pixel, so edges are not jagged, and cut off at the edge of their lung's
box, so nothing outside the two boxes changes.

NumPy and scipy only: this runs inside the grain worker processes.
Deterministic given the `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

SHAPES = ("disc", "ellipse", "blob")

# Ellipse: minor semi-axis uniform in this fraction of the major one (the radius).
_ELLIPSE_MIN_ASPECT = 0.4
# Blob: radius r * (1 + sum_k a_k cos(k theta + phi_k)) over these harmonics, each
# amplitude uniform in [0, _BLOB_MAX_AMPLITUDE] (sum <= 0.36, so the radius stays
# >= 0.64 r and the outline star-shaped and smooth).
_BLOB_HARMONICS = (2, 3, 4)
_BLOB_MAX_AMPLITUDE = 0.12
# Blob texture: Gaussian noise smoothed with sigma = max(1, r / 4) pixels and
# normalised to unit deviation, as a factor clip(1 + _BLOB_TEXTURE * (z - 1), 0, 1)
# (mean about 0.75: patchy, like ground glass, where a disc is uniform).
_BLOB_TEXTURE = 0.25


@dataclasses.dataclass(frozen=True)
class PathologyOptions:
    """Simulated lesions (document 003); `prob` 0 turns them off.

    Radii are fractions of the smaller side of the lesion's lung box, so they
    scale with the image: a lung of a 512x512 CT slice has a box of about
    150-200 x 250-300 pixels, so the defaults give radii of about 6-8 to
    22-30 pixels (roughly 4 to 20 mm at 0.7 mm pixels: nodules up to patches
    of consolidation, the sizes of the document's figure); a 256x256 slice
    gets half as many pixels. Opacities 0.3-0.9: faint ground glass to almost
    solid tissue.
    """

    prob: float = 0.8               # per slice; the document's best (of 0.6, 0.8, 0.9)
    min_count: int = 7              # lesions per slice, uniform in [min_count, max_count]
    max_count: int = 9
    min_radius: float = 0.04        # fraction of the smaller side of the lesion's lung box,
    max_radius: float = 0.15        # uniform in [min_radius, max_radius] (major semi-axis of an ellipse)
    min_opacity: float = 0.3        # the lesion's `a`, uniform in [min_opacity, max_opacity]
    max_opacity: float = 0.9
    shapes: tuple[str, ...] = ("disc",)  # one chosen uniformly per lesion from "disc", "ellipse", "blob"
    # Intensity lesions blend towards, in the image's own (normalised) units;
    # None: `estimate_tissue_value` of each slice and channel.
    tissue_value: float | None = None
    min_lung_pixels: int = 50       # a component smaller than this is not a lung

    def __post_init__(self):
        # Tuples even when a config gives lists: the options stay hashable and comparable.
        shapes = (self.shapes,) if isinstance(self.shapes, str) else tuple(self.shapes)
        object.__setattr__(self, "shapes", shapes)
        if not 0 <= self.prob <= 1:
            raise ValueError(f"prob={self.prob}: a probability, give a value in [0, 1]")
        for name in ("min_count", "max_count", "min_lung_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name}={value!r}: give a whole number")
        if not 0 <= self.min_count <= self.max_count:
            raise ValueError(f"min_count={self.min_count}, max_count={self.max_count}: "
                             "give 0 <= min_count <= max_count")
        if not 0 < self.min_radius <= self.max_radius:
            raise ValueError(f"min_radius={self.min_radius}, max_radius={self.max_radius}: "
                             "give 0 < min_radius <= max_radius (fractions of the lung box's smaller side)")
        if not 0 <= self.min_opacity <= self.max_opacity <= 1:
            raise ValueError(f"min_opacity={self.min_opacity}, max_opacity={self.max_opacity}: "
                             "give 0 <= min_opacity <= max_opacity <= 1")
        if not shapes or any(s not in SHAPES for s in shapes):
            raise ValueError(f"shapes={shapes}: give one or more of {', '.join(SHAPES)}")
        if self.tissue_value is not None and not math.isfinite(self.tissue_value):
            raise ValueError(f"tissue_value={self.tissue_value}: give a finite intensity, or None to estimate it")
        if self.min_lung_pixels < 1:
            raise ValueError(f"min_lung_pixels={self.min_lung_pixels}: give at least 1")


# ---- lungs

def _lungs(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean [H, W] lung pixels (any label > 0) of an [H, W] or [H, W, 1] mask."""
    mask = np.asarray(mask)
    if mask.shape == shape + (1,):
        mask = mask[..., 0]
    if mask.shape != shape:
        raise ValueError(f"mask of shape {mask.shape} does not match the slice's shape {shape}")
    return mask > 0


def lung_boxes(mask: np.ndarray, min_pixels: int) -> list[tuple[slice, slice]] | None:
    """The bounding boxes (row slice, column slice) of the two largest
    connected components of `mask > 0` of an [H, W] (or [H, W, 1]) label mask,
    the leftmost (smaller column start) first, or None when fewer than two
    components have `min_pixels` pixels.

    Components are 8-connected, as skimage's `regionprops` (the document's
    tool) finds them, so a lung joined only through a diagonal stays one.
    All labels count as lung: left and right lungs labelled 1 and 2 are two
    components where they do not touch.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask of shape {mask.shape}: expected [H, W] or [H, W, 1]")
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    if count < 2:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    # The two largest (ties: the lower label, i.e. the first in raster order).
    largest = np.argsort(-sizes, kind="stable")[:2]
    if sizes[largest[1]] < min_pixels:
        return None
    objects = ndimage.find_objects(labels)
    boxes = [objects[i] for i in largest]
    return sorted(boxes, key=lambda b: (b[1].start, b[0].start))


def estimate_tissue_value(image: np.ndarray, mask: np.ndarray) -> float:
    """The soft-tissue intensity of a slice, which lesions blend towards when
    `tissue_value` is None: the median of the pixels outside the lungs that
    are brighter than the mean of the lung pixels, after dropping those above
    the 95th percentile of that set.

    Why: outside the lungs are air (outside the body), fat, muscle, organs
    and bone. Air is darker than aerated lung on average, so the lung's mean
    is a floor that drops it whatever the window or scaling; what is left is
    the body, mostly soft tissue and fat, with bone and contrast in its
    bright tail, which the 95th percentile cuts off. Its median is close to
    soft tissue (muscle, about 40 HU: in a lung window of [-1000, 400] HU
    scaled to [0, 1], about 0.74), the density of consolidation. Only order
    statistics are used, so it works in any units that keep the order of
    intensities: CT after a Hounsfield window, 8-bit PNG scaled to [0, 1],
    z-scores.

    `image` [H, W] or [H, W, C] (channels pooled), `mask` [H, W] or
    [H, W, 1]. Without lung pixels the image's mean is the floor; without
    pixels outside the lungs all pixels are used; with nothing brighter than
    the floor, the image's maximum is returned.
    """
    image = np.asarray(image, np.float32)
    lung = _lungs(mask, image.shape[:2])
    values = image.reshape(image.shape[0] * image.shape[1], -1)
    inside, outside = values[lung.ravel()], values[~lung.ravel()]
    floor = inside.mean(dtype=np.float64) if inside.size else values.mean(dtype=np.float64)
    pool = outside if outside.size else values
    body = pool[pool > floor]
    if body.size == 0:
        return float(values.max())
    body = body[body <= np.percentile(body, 95)]
    return float(np.median(body))


# ---- lesions

def _window(centre: float, extent: float, box: slice) -> slice:
    """Pixels within `extent` (plus one for the soft edge) of `centre`, inside `box`."""
    return slice(max(box.start, math.floor(centre - extent) - 1), min(box.stop, math.ceil(centre + extent) + 2))


def _ellipse(dy: np.ndarray, dx: np.ndarray, a: float, b: float, angle: float) -> np.ndarray:
    """Anti-aliased footprint of an ellipse with semi-axes `a` (along `angle`
    from the row axis) and `b`: clip(signed distance + 1/2, 0, 1), the
    distance to the outline taken to first order (level-set value over its
    gradient; exact for a disc)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dy + s * dx, -s * dy + c * dx
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(grad > 0, (1 - rho) * rho / grad, np.inf)  # inf: the centre itself
    return np.clip(distance + 0.5, 0.0, 1.0)


def _blob(dy: np.ndarray, dx: np.ndarray, r: float, amplitudes: np.ndarray, phases: np.ndarray,
          noise: np.ndarray) -> np.ndarray:
    """Anti-aliased footprint of a star-shaped outline R(theta) = r (1 + sum_k
    a_k cos(k theta + phi_k)), times a smoothed multiplicative texture."""
    dist = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    k = np.array(_BLOB_HARMONICS, np.float64)[:, None, None]
    arg = k * theta + phases[:, None, None]
    radius = r * (1 + np.sum(amplitudes[:, None, None] * np.cos(arg), axis=0))
    slope = -r * np.sum(amplitudes[:, None, None] * k * np.sin(arg), axis=0)  # dR/dtheta
    # Signed distance to first order: (R - dist) over |grad(dist - R(theta))|.
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(dist > 0, (radius - dist) / np.sqrt(1 + (slope / dist) ** 2), np.inf)
    footprint = np.clip(distance + 0.5, 0.0, 1.0)
    smooth = ndimage.gaussian_filter(noise, sigma=max(1.0, r / 4))
    spread = smooth.std()
    z = (smooth - smooth.mean()) / spread if spread > 0 else np.zeros_like(smooth)
    return footprint * np.clip(1 + _BLOB_TEXTURE * (z - 1), 0.0, 1.0)


def _lesion(rng: np.random.Generator, boxes: list[tuple[slice, slice]],
            opts: PathologyOptions) -> tuple[tuple[slice, slice], np.ndarray, float]:
    """Draws one lesion: its window (inside its box), footprint there and opacity.

    Draws, in order: the box, the centre's row and column (uniform over the
    box's pixel centres), the radius, the opacity, the shape, then the
    shape's own parameters.
    """
    rows, cols = boxes[int(rng.integers(len(boxes)))]
    cy = rng.uniform(rows.start, rows.stop - 1)
    cx = rng.uniform(cols.start, cols.stop - 1)
    r = rng.uniform(opts.min_radius, opts.max_radius) * min(rows.stop - rows.start, cols.stop - cols.start)
    opacity = float(rng.uniform(opts.min_opacity, opts.max_opacity))
    kind = opts.shapes[int(rng.integers(len(opts.shapes)))]
    if kind == "blob":
        amplitudes = rng.uniform(0.0, _BLOB_MAX_AMPLITUDE, size=len(_BLOB_HARMONICS))
        phases = rng.uniform(0.0, 2 * np.pi, size=len(_BLOB_HARMONICS))
        extent = r * (1 + amplitudes.sum())
    elif kind == "ellipse":
        b = r * rng.uniform(_ELLIPSE_MIN_ASPECT, 1.0)
        angle = rng.uniform(0.0, np.pi)
        extent = r
    else:
        extent = r
    window = (_window(cy, extent, rows), _window(cx, extent, cols))
    dy = np.arange(window[0].start, window[0].stop, dtype=np.float64)[:, None] - cy
    dx = np.arange(window[1].start, window[1].stop, dtype=np.float64)[None, :] - cx
    dy, dx = np.broadcast_arrays(dy, dx)
    if kind == "blob":
        footprint = _blob(dy, dx, r, amplitudes, phases, rng.standard_normal(dy.shape))
    elif kind == "ellipse":
        footprint = _ellipse(dy, dx, r, b, angle)
    else:
        footprint = _ellipse(dy, dx, r, r, 0.0)
    return window, footprint, opacity


def _simulate_slice(image: np.ndarray, lung: np.ndarray, rng: np.random.Generator,
                    opts: PathologyOptions) -> tuple[np.ndarray, int]:
    """`simulate_pathology` of one [H, W, C] slice with its boolean [H, W] lungs."""
    out = np.array(image, dtype=np.float32, copy=True)
    if rng.random() >= opts.prob:  # the coin first; no other draw when it says no
        return out, 0
    boxes = lung_boxes(lung, opts.min_lung_pixels)
    if boxes is None:
        return out, 0
    if opts.tissue_value is not None:
        tissue = np.full(out.shape[-1], opts.tissue_value, np.float64)
    else:  # per channel: channels may be different windows or modalities
        tissue = np.array([estimate_tissue_value(out[..., c], lung) for c in range(out.shape[-1])])
    count = int(rng.integers(opts.min_count, opts.max_count + 1))
    for _ in range(count):
        window, footprint, opacity = _lesion(rng, boxes, opts)
        weight = (opacity * footprint)[..., None]
        patch = out[window].astype(np.float64)
        out[window] = (patch + weight * (tissue - patch)).astype(np.float32)
    return out, count


def simulate_pathology(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       opts: PathologyOptions) -> tuple[np.ndarray, int]:
    """Simulated lesions (document 003) in a CT slice, or slice by slice in a volume.

    `image` float [H, W, C] with its label mask [H, W] or [H, W, 1] (any
    label > 0 is lung; left/right labels 1 and 2 work as well), or a volume
    [H, W, D, C] with its mask [H, W, D] (or [H, W, D, 1]).

    With probability `opts.prob` (one `rng.random()` drawn first, and nothing
    else drawn when it says no) and only when `lung_boxes` finds two lungs,
    `min_count`..`max_count` lesions are drawn, each in one of the two boxes
    chosen at random, its centre uniform inside the box, with random radius,
    opacity and shape (see `PathologyOptions`), every channel getting the
    same footprints, each blending towards its tissue value (given, or
    `estimate_tissue_value` per channel) as `(1 - a * shape) * image + a *
    shape * tissue`. Footprints are cut at their box's edges: nothing outside
    the two boxes changes. The mask is never changed: the label stays lung.

    A volume is treated as its slices along the last spatial axis (D), in
    order, each with the same `rng` and its own coin: about `prob` of the
    slices get lesions, independent from slice to slice (2-D lesions, not 3-D
    ones), so 3-D configs can use it as well.

    Returns a new float32 array (the input is untouched) and the number of
    lesions drawn (0 when none; summed over the slices of a volume).
    Deterministic given `rng`.
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim == 3:
        return _simulate_slice(image, _lungs(mask, image.shape[:2]), rng, opts)
    if image.ndim != 4:
        raise ValueError(f"image of shape {image.shape}: expected [H, W, C] or [H, W, D, C]")
    spatial = image.shape[:3]
    if mask.shape == spatial + (1,):
        mask = mask[..., 0]
    if mask.shape != spatial:
        raise ValueError(f"mask of shape {mask.shape} does not match the volume's spatial shape {spatial}")
    out = np.empty(image.shape, np.float32)
    total = 0
    for d in range(image.shape[2]):
        out[:, :, d], count = _simulate_slice(image[:, :, d], mask[:, :, d] > 0, rng, opts)
        total += count
    return out, total
