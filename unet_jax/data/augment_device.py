"""Training augmentation on the accelerator: `augment.py`'s flips, rotation,
scaling and intensity transforms and `pathology.py`'s simulated lesions, in
jax.numpy on a whole batch inside the jitted train step.

Why: on a few CPU cores the grain workers' NumPy warps, not the step, can bound
training; on the device they are a few gathers per pixel. The options
(`AugmentOptions`, `PathologyOptions`) and conventions are the host's, so both
paths draw from the same distribution: the same order (flips, rotation and
scaling about the centre, intensity, then lesions), the same zeros outside,
the same masks (a 0/1 mask thresholded at 0.5, several labels by their
one-hot planes and an argmax, a regression's float target interpolated like
the image).

Every example draws from its own key, `jax.random.fold_in(key, i)` for its
index i in the global batch, so the result does not depend on how the batch
is sharded over devices or hosts. A transform an example does not draw leaves
it unchanged (a select: under `vmap` both sides are computed anyway). Shapes
and options are static; `augment_batch` jits with them bound by
`functools.partial`.

Where it differs from the host path: a patch is turned about its own centre
after it was cut, so zeros come in at its corners where `sample_patch` reads
the whole volume; the two lungs are the sides of an empty row or column of
the lung mask rather than its two largest connected components
(`lung_boxes`); blob lesions run only on the host.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp

from unet_jax.data.augment import AugmentOptions, _flip_axes
from unet_jax.data.pathology import _ELLIPSE_MIN_ASPECT, PathologyOptions

# (transform, drawn, parameter): noise's parameter is its field [C, pixels], the
# others' one value per channel [C].
Draw = tuple[str, jax.Array, jax.Array]


def augment_batch(key: jax.Array, image: jax.Array, mask: jax.Array, opts: AugmentOptions, *,
                  continuous: bool = False, num_labels: int = 1,
                  pathology: PathologyOptions | None = None) -> tuple[jax.Array, jax.Array]:
    """Augments a batch: image float32 [B, *spatial, C], mask float32
    [B, *spatial, 1] (labels 0..`num_labels`, or a `continuous` float
    target), spatial [H, W] or [X, Y, Z]. Example i uses
    `jax.random.fold_in(key, i)`; see `augment_example`."""
    if image.ndim not in (4, 5) or mask.shape != image.shape[:-1] + (1,):
        raise ValueError(f"image {image.shape} and mask {mask.shape}: expected [B, *spatial, C] and "
                         "[B, *spatial, 1] with 2 or 3 spatial axes")
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(image.shape[0]))
    def one(k, x, m):
        return augment_example(k, x, m, opts, continuous=continuous, num_labels=num_labels, pathology=pathology)
    return jax.vmap(one)(keys, image, mask)


def augment_example(key: jax.Array, image: jax.Array, mask: jax.Array, opts: AugmentOptions, *,
                    continuous: bool = False, num_labels: int = 1,
                    pathology: PathologyOptions | None = None) -> tuple[jax.Array, jax.Array]:
    """One image [*spatial, C] and its mask [*spatial, 1] as `augment.augment_slice`
    augments them (flips, rotation and scaling, then intensity on the image;
    3-D in-plane, or as `random_affine_3d` with `opts.rotate_3d`), then
    `simulate_pathology` with `pathology`."""
    ndim = image.ndim - 1
    flip_key, affine_key, intensity_key, pathology_key = jax.random.split(key, 4)
    axes = _flip_axes(opts, ndim)
    if opts.flip_prob > 0 and axes:
        flips = jax.random.uniform(flip_key, (len(axes),)) < opts.flip_prob
        for flip, axis in zip(flips, axes):
            image = jnp.where(flip, jnp.flip(image, axis), image)
            mask = jnp.where(flip, jnp.flip(mask, axis), mask)
    if opts.rotate_prob > 0 or opts.scale_prob > 0:
        matrix, drawn = sample_affine(affine_key, opts, ndim)
        warped = warp_with_mask(image, mask, matrix, continuous=continuous, num_labels=num_labels)
        image, mask = jnp.where(drawn, warped[0], image), jnp.where(drawn, warped[1], mask)
    image = intensity(image, intensity_key, opts)
    if pathology is not None and pathology.prob > 0:
        image, _ = simulate_pathology(pathology_key, image, mask, pathology)
    return image, mask


# ---- geometry

def _rotation(axis: int, angle: jax.Array) -> jax.Array:
    """3x3 rotation by `angle` about `axis`, as `augment._rotation`."""
    i, j = [a for a in range(3) if a != axis]
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.eye(3).at[i, i].set(c).at[i, j].set(-s).at[j, i].set(s).at[j, j].set(c)


def sample_affine(key: jax.Array, opts: AugmentOptions, ndim: int) -> tuple[jax.Array, jax.Array]:
    """An output->input matrix and whether it was drawn (False: identity):
    2x2 as `augment.random_affine` for 2-D images and for volumes in-plane,
    3x3 as `augment.random_affine_3d` for volumes with `opts.rotate_3d`.
    Angles uniform in [-max_rotate_deg, max_rotate_deg] with `rotate_prob`,
    one isotropic zoom uniform in [1 - max_scale, 1 + max_scale] with
    `scale_prob`; the matrix is rotation / zoom."""
    full = ndim == 3 and opts.rotate_3d
    rotate_key, angle_key, scale_key, zoom_key = jax.random.split(key, 4)
    rotate = jax.random.uniform(rotate_key) < opts.rotate_prob
    scale = jax.random.uniform(scale_key) < opts.scale_prob
    angles = jax.random.uniform(angle_key, (3 if full else 1,), minval=-opts.max_rotate_deg,
                                maxval=opts.max_rotate_deg)
    angles = jnp.where(rotate, jnp.deg2rad(angles), 0.0)
    zoom = jnp.where(scale, jax.random.uniform(zoom_key, minval=1 - opts.max_scale, maxval=1 + opts.max_scale), 1.0)
    if full:
        highest = jax.lax.Precision.HIGHEST  # a GPU's default float32 matmul rounds to TF32
        matrix = jnp.matmul(jnp.matmul(_rotation(0, angles[0]), _rotation(1, angles[1]), precision=highest),
                            _rotation(2, angles[2]), precision=highest)
    else:
        c, s = jnp.cos(angles[0]), jnp.sin(angles[0])
        matrix = jnp.array([[c, -s], [s, c]])
    return matrix / zoom, rotate | scale


def _interpolate(stack: jax.Array, matrix: jax.Array) -> jax.Array:
    """(Bi/tri)linear samples of `stack` [*spatial, K] (n = matrix.shape[0]
    spatial axes) at input = centre + matrix @ (output - centre), centre
    (size - 1) / 2 per axis, zero outside, as `augment.warp` does it:
    coordinates clip onto one pixel of zeros around the array, so points
    further out read zero, not part of the edge pixel.

    One gather per corner from the zero-padded array flattened to rows, every
    channel at once; coordinates are sums of products, not a matmul, which a
    GPU would round to TF32 by default.
    """
    n = matrix.shape[0]
    sizes = stack.shape[:n]
    channels = stack.shape[-1]
    padded = jnp.pad(stack, [(1, 1)] * n + [(0, 0)]).reshape(-1, channels)
    strides = [math.prod(s + 2 for s in sizes[i + 1:]) for i in range(n)]
    offsets = [(jnp.arange(s, dtype=jnp.float32) - (s - 1) / 2).reshape([-1 if k == j else 1 for k in range(n)])
               for j, s in enumerate(sizes)]
    lows, highs, weights = [], [], []
    for i, size in enumerate(sizes):
        coord = sum(matrix[i, j] * offsets[j] for j in range(n)) + (size - 1) / 2
        coord = jnp.clip(coord, -1, size)
        floor = jnp.floor(coord)
        weights.append(jnp.broadcast_to(coord - floor, sizes).reshape(-1, 1))
        low = floor.astype(jnp.int32) + 1  # in the padded array: 0 .. size + 1
        lows.append(low * strides[i])
        highs.append(jnp.minimum(low + 1, size + 1) * strides[i])
    corners = []
    for bits in itertools.product((0, 1), repeat=n):  # the last axis fastest
        index = jnp.broadcast_to(sum(highs[i] if b else lows[i] for i, b in enumerate(bits)), sizes).reshape(-1)
        corners.append(padded.at[index].get(mode="promise_in_bounds"))
    for w in reversed(weights):  # interpolate the last axis first, pairs of corners at a time
        corners = [a + (b - a) * w for a, b in zip(corners[::2], corners[1::2])]
    return corners[0].reshape(*sizes, channels)


def warp_with_mask(image: jax.Array, mask: jax.Array, matrix: jax.Array, *, continuous: bool = False,
                   num_labels: int = 1) -> tuple[jax.Array, jax.Array]:
    """One example's image [*spatial, C] and mask [*spatial, 1] sampled
    through an output->input `matrix` about the centre, in one interpolation.

    2x2: `augment.warp_with_mask` (2-D; a volume in-plane, every slice alike,
    its trailing axes folded into channels). 3x3: `augment._resample` of the
    whole volume with the pivot at its centre. The mask goes through linear
    planes: a `continuous` target is interpolated as the image is; labels
    0/1 are thresholded at 0.5; with `num_labels` > 1 the planes of labels
    1..L and an argmax, the background's score being its own plane (2x2, as
    `warp_with_mask`) or what the labels leave (3x3, as `_resample`; the two
    differ only in the border pixel's fade). A mask whose largest label is 1
    is thresholded, as the host decides per mask.
    """
    n = matrix.shape[0]
    if n not in (2, 3) or image.ndim - 1 < n:
        raise ValueError(f"matrix {matrix.shape} for an image of shape {image.shape}: expected 2x2, or 3x3 "
                         "for a volume")
    spatial = image.shape[:-1]
    if continuous or num_labels <= 1:
        planes = mask
    else:
        planes = jax.nn.one_hot(mask[..., 0].astype(jnp.int32), num_labels + 1, dtype=jnp.float32)
        planes = planes if n == 2 else planes[..., 1:]
    lead = spatial[:n]
    stack = jnp.concatenate([image.reshape(*lead, -1), planes.reshape(*lead, -1)], axis=-1)
    out = _interpolate(stack, matrix)
    split = math.prod(image.shape[n:])
    image_out = out[..., :split].reshape(image.shape)
    planes = out[..., split:].reshape(*spatial, -1)
    if continuous:
        return image_out, planes
    if num_labels <= 1:
        return image_out, (planes >= 0.5).astype(jnp.float32)
    if n == 3:
        planes = jnp.concatenate([1 - planes.sum(-1, keepdims=True), planes], axis=-1)
    labels = jnp.where(mask.max() <= 1, planes[..., 1] >= 0.5, jnp.argmax(planes, axis=-1))
    return image_out, labels[..., None].astype(jnp.float32)


# ---- intensity

def _nnunet_factor(key: jax.Array, bounds: tuple[float, float], n: int) -> jax.Array:
    """`augment._nnunet_factor`: when [lo, hi] straddles 1, half of the factors
    uniform below 1 and half above."""
    lo, hi = (float(b) for b in bounds)
    side_key, below_key, above_key = jax.random.split(key, 3)
    if not lo < 1 < hi:
        return jax.random.uniform(below_key, (n,), minval=lo, maxval=hi)
    return jnp.where(jax.random.uniform(side_key, (n,)) < 0.5,
                     jax.random.uniform(below_key, (n,), minval=lo, maxval=1.0),
                     jax.random.uniform(above_key, (n,), minval=1.0, maxval=hi))


def _intensity_draws(key: jax.Array, opts: AugmentOptions, shape: tuple[int, ...]) -> list[Draw]:
    """The draws of `augment.augment_intensity` for an image of `shape`, in its
    order; a transform of probability 0 is left out (it costs nothing)."""
    channels = shape[-1]
    keys = iter(jax.random.split(key, 9))
    def happens(prob):
        return jax.random.uniform(next(keys)) < prob
    draws = []
    if opts.noise_prob > 0:
        drawn = happens(opts.noise_prob)
        sigma = jax.random.uniform(next(keys), (channels, 1), maxval=opts.noise_std)
        draws.append(("noise", drawn, jax.random.normal(next(keys), (channels, math.prod(shape[:-1]))) * sigma))
    if opts.brightness_prob > 0:
        drawn = happens(opts.brightness_prob)
        lo, hi = opts.brightness_range
        draws.append(("brightness", drawn, jax.random.uniform(next(keys), (channels,), minval=lo, maxval=hi)))
    if opts.contrast_prob > 0:
        draws.append(("contrast", happens(opts.contrast_prob), _nnunet_factor(next(keys), opts.contrast_range,
                                                                              channels)))
    if opts.gamma_prob > 0:
        draws.append(("gamma", happens(opts.gamma_prob), _nnunet_factor(next(keys), opts.gamma_range, channels)))
    return draws


def _apply_intensity(image: jax.Array, draws: list[Draw]) -> jax.Array:
    """`augment.augment_intensity`'s arithmetic given its draws, channel by
    channel: on [C, pixels], whose reductions along the minor axis ran 5-7x
    faster on a CPU than over the spatial axes of [..., C]."""
    if not draws:
        return image
    planes = jnp.moveaxis(image, -1, 0).reshape(image.shape[-1], -1)
    for name, drawn, value in draws:
        value = value.reshape(planes.shape[0], -1)  # [C, pixels] or [C, 1]
        if name == "noise":
            new = planes + value
        elif name == "brightness":
            new = planes * value
        elif name == "contrast":
            low, high = planes.min(-1, keepdims=True), planes.max(-1, keepdims=True)
            mean = planes.mean(-1, keepdims=True)
            new = jnp.clip((planes - mean) * value + mean, low, high)
        else:  # gamma; a constant channel stays as it is
            low = planes.min(-1, keepdims=True)
            span = planes.max(-1, keepdims=True) - low
            scaled = jnp.clip((planes - low) / jnp.where(span > 0, span, 1), 0, 1)
            new = jnp.where(span > 0, scaled ** value * span + low, planes)
        planes = jnp.where(drawn, new, planes)
    return jnp.moveaxis(planes.reshape(image.shape[-1], *image.shape[:-1]), 0, -1)


def intensity(image: jax.Array, key: jax.Array, opts: AugmentOptions) -> jax.Array:
    """`augment.augment_intensity` of one image [..., C]: noise, brightness,
    contrast and gamma, each with its probability, one parameter per channel;
    contrast clipped to the channel's min/max before it, gamma leaving a
    constant channel alone. All probabilities 0: `image` itself."""
    return _apply_intensity(image, _intensity_draws(key, opts, image.shape))


# ---- simulated pathology

def _check_pathology(opts: PathologyOptions) -> None:
    if "blob" in opts.shapes:
        raise ValueError(f"pathology shapes={opts.shapes}: 'blob' lesions run only on the host path "
                         "(data/pathology.py, its textures need a Gaussian filter of a random width); "
                         "give disc and/or ellipse for augmentation on the device")


def _best_split(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The empty line (row or column) that splits the lung pixels, `counts`
    per line, most evenly, and the smaller side's pixel count (0 if none)."""
    before = jnp.cumsum(counts)  # pixels on lines up to and including each
    smaller = jnp.where(counts == 0, jnp.minimum(before, before[-1] - before), -1)
    line = jnp.argmax(smaller)
    return line, smaller[line]


def _extent(present: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First and last index where `present` [N] is True."""
    index = jnp.arange(present.shape[0])
    return jnp.where(present, index, present.shape[0]).min(), jnp.where(present, index, -1).max()


def lung_boxes(mask: jax.Array, min_pixels: int) -> tuple[jax.Array, jax.Array]:
    """The two lungs' boxes of an [H, W] (or [H, W, 1]) label mask (any label
    > 0 is lung): int32 [2, 2, 2] (lung, axis, first/last pixel), and whether
    there are two lungs of at least `min_pixels` pixels.

    Connected components do not run on the device, so this approximates
    `pathology.lung_boxes` (the two largest components): the lungs are the
    two sides of the empty row or column that splits the lung pixels most
    evenly, whichever axis that is (the mediastinum lies between the lungs
    along the left-right axis: axis 1 of a kaggle-style [H, W] slice, axis 0
    of a volume's axial slice); there are two when the smaller side has
    `min_pixels`. Unlike the host, lungs that no straight row or column
    separates count as one, and a speck joins its side's box.
    """
    lung = (mask[..., 0] if mask.ndim == 3 else mask) > 0
    row, by_rows = _best_split(lung.sum(1, dtype=jnp.int32))
    col, by_cols = _best_split(lung.sum(0, dtype=jnp.int32))
    first = jnp.where(by_cols >= by_rows, jnp.arange(lung.shape[1])[None, :] <= col,
                      jnp.arange(lung.shape[0])[:, None] <= row)
    boxes = []
    for side in (lung & first, lung & ~first):
        (a0, a1), (b0, b1) = _extent(side.any(1)), _extent(side.any(0))
        boxes.append(jnp.array([[a0, a1], [b0, b1]], jnp.int32))
    return jnp.stack(boxes), jnp.maximum(by_rows, by_cols) >= min_pixels


def estimate_tissue_value(image: jax.Array, lung: jax.Array) -> jax.Array:
    """`pathology.estimate_tissue_value` per channel of an [H, W, C] slice with
    its boolean [H, W] lungs, [C]: the median of the pixels outside the lungs
    brighter than the lungs' mean, above their 95th percentile dropped; one
    sort per channel (no sets of data-dependent size on the device)."""
    lung = lung.reshape(-1)
    def one(values):
        inside = lung.sum()
        floor = jnp.where(inside > 0, jnp.where(lung, values, 0).sum() / jnp.maximum(inside, 1), values.mean())
        pool = jnp.where(lung.all(), True, ~lung)
        body = pool & (values > floor)
        n = body.sum()
        ordered = jnp.sort(jnp.where(body, values, jnp.inf))
        position = 0.95 * (jnp.maximum(n, 1) - 1)  # np.percentile's linear interpolation
        below = jnp.floor(position).astype(jnp.int32)
        low, high = ordered[below], ordered[jnp.minimum(below + 1, jnp.maximum(n, 1) - 1)]
        cut = low + (high - low) * (position - below)
        kept = (ordered <= cut).sum()
        median = (ordered[(kept - 1) // 2] + ordered[kept // 2]) / 2
        return jnp.where(n > 0, median, values.max())
    return jax.vmap(one, in_axes=-1)(image.reshape(-1, image.shape[-1]))


def _lesion_weights(key: jax.Array, boxes: jax.Array, shape: tuple[int, int],
                    opts: PathologyOptions) -> tuple[jax.Array, jax.Array]:
    """1 - prod(1 - a_k * footprint_k) [H, W] of `max_count` lesion slots (the
    first `count` active) drawn as `pathology._lesion` draws them, and
    `count`: blending lesion after lesion towards the tissue value is
    `image + weight * (tissue - image)` with this weight."""
    k = opts.max_count
    keys = jax.random.split(key, 8)
    count = jax.random.randint(keys[0], (), opts.min_count, opts.max_count + 1)
    box = boxes[jax.random.randint(keys[1], (k,), 0, 2)]  # [K, axis, first/last]
    first, last = box[..., 0].astype(jnp.float32), box[..., 1].astype(jnp.float32)
    centre = jax.random.uniform(keys[2], (k, 2), minval=first, maxval=last)  # over the box's pixel centres
    r = jax.random.uniform(keys[3], (k,), minval=opts.min_radius, maxval=opts.max_radius) * (last - first + 1).min(-1)
    opacity = jax.random.uniform(keys[4], (k,), minval=opts.min_opacity, maxval=opts.max_opacity)
    ellipse = jnp.array([s == "ellipse" for s in opts.shapes])[jax.random.randint(keys[5], (k,), 0, len(opts.shapes))]
    b = jnp.where(ellipse, r * jax.random.uniform(keys[6], (k,), minval=_ELLIPSE_MIN_ASPECT, maxval=1.0), r)
    angle = jnp.where(ellipse, jax.random.uniform(keys[7], (k,), maxval=math.pi), 0.0)

    grid = [jnp.arange(n, dtype=jnp.float32) for n in shape]
    def window(axis):  # `pathology._window`: within r + 1 of the centre, inside the box; [K, n] along `axis`
        p, c = grid[axis][None, :], centre[:, axis, None]
        return ((p >= jnp.maximum(first[:, axis, None], jnp.floor(c - r[:, None]) - 1))
                & (p <= jnp.minimum(last[:, axis, None], jnp.ceil(c + r[:, None]) + 1)))
    inside = window(0)[:, :, None] & window(1)[:, None, :]
    dy = grid[0][None, :, None] - centre[:, 0, None, None]
    dx = grid[1][None, None, :] - centre[:, 1, None, None]
    a, b, angle = r[:, None, None], b[:, None, None], angle[:, None, None]
    c, s = jnp.cos(angle), jnp.sin(angle)
    u, v = c * dy + s * dx, -s * dy + c * dx
    rho = jnp.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = jnp.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    # `pathology._ellipse`: the signed distance to the outline to first order (exact for a disc).
    distance = jnp.where(grad > 0, (1 - rho) * rho / jnp.where(grad > 0, grad, 1), jnp.inf)
    footprint = jnp.clip(distance + 0.5, 0, 1) * inside
    active = jnp.arange(k) < count
    weight = jnp.where(active, opacity, 0)[:, None, None] * footprint
    return 1 - jnp.prod(1 - weight, axis=0), count


def _pathology_slice(key: jax.Array, image: jax.Array, lung_mask: jax.Array,
                     opts: PathologyOptions) -> tuple[jax.Array, jax.Array]:
    """`pathology._simulate_slice` of one [H, W, C] slice and its [H, W] mask."""
    coin_key, lesion_key = jax.random.split(key)
    boxes, found = lung_boxes(lung_mask, opts.min_lung_pixels)
    applies = (jax.random.uniform(coin_key) < opts.prob) & found
    if opts.tissue_value is not None:
        tissue = jnp.full(image.shape[-1], opts.tissue_value, jnp.float32)
    else:
        tissue = estimate_tissue_value(image, lung_mask > 0)
    weight, count = _lesion_weights(lesion_key, boxes, image.shape[:2], opts)
    out = image + weight[..., None] * (tissue - image)
    return jnp.where(applies, out, image), jnp.where(applies, count, 0)


def simulate_pathology(key: jax.Array, image: jax.Array, mask: jax.Array,
                       opts: PathologyOptions) -> tuple[jax.Array, jax.Array]:
    """`pathology.simulate_pathology` of one example: image [H, W, C] with its
    mask [H, W, 1], or a volume [X, Y, Z, C] slice by slice along Z (slice z
    with `fold_in(key, z)`, its own coin). With `opts.prob`, where
    `lung_boxes` finds two lungs, `min_count`..`max_count` disc or ellipse
    lesions blend the image towards the tissue value (`opts.tissue_value`,
    or `estimate_tissue_value` per channel), nothing changing outside the two
    boxes; the mask is not returned, it never changes. Returns the image and
    the number of lesions drawn (summed over a volume's slices)."""
    _check_pathology(opts)
    if image.ndim == 3:
        return _pathology_slice(key, image, mask[..., 0], opts)
    keys = jax.vmap(lambda z: jax.random.fold_in(key, z))(jnp.arange(image.shape[2]))
    out, counts = jax.vmap(lambda k, x, m: _pathology_slice(k, x, m, opts), in_axes=(0, 2, 2), out_axes=(2, 0))(
        keys, image, mask[..., 0])
    return out, counts.sum()
