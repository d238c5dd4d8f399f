"""Sliding-window inference over whole volumes: the blend in NumPy on the host,
the windows batched on the device mesh.

`sliding_window` takes the model as a function on NumPy batches and knows
nothing of devices; `window_inference` runs it with a jitted predict step on
the mesh (`predict_windows`), as evaluation and the benchmark do.
Windows are tiled and blended as nnU-Net does (Gaussian importance, evenly
spread starts, symmetric zero padding of axes smaller than the patch), with
optional flip test-time augmentation.

Memory: MONAI's standard path accumulates a float volume of every output class
before anything is reduced, which its users measured peaking near 23 GB for a
100-class 384^3 volume. Here windows are visited in order of their start along
spatial axis 0, and the float accumulators cover only the axis-0 range that
windows in flight touch: about one patch deep, plus the spread of axis-0
starts within one batch. As soon as no window still to come touches an axis-0
index, that slab is divided by its weights, reduced by `finalize` (to uint8
labels, say) and dropped, so the whole volume is held only at `finalize`'s
dtype without the class axis, unless `keep_probabilities` asks for the blended
floats as well.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from unet_jax import parallel

IMPORTANCE = ("gaussian", "constant")


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """float32 weights of shape `patch_size`: a Gaussian centred on the patch with
    sigma = sigma_scale * size per axis (nnU-Net's 1/8), scaled to a maximum of 1.

    Window edges, where the model sees the least context, count least in the
    blend. Unlike nnU-Net's filtered delta at size // 2, the centre is exactly
    (size - 1) / 2, so the map is symmetric. Values that underflow to zero are
    raised to the smallest non-zero one (as nnU-Net does), so every voxel of a
    window carries positive weight.
    """
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = np.ones((), np.float64)
    for size in patch_size:
        x = np.arange(size) - (size - 1) / 2
        weights = np.multiply.outer(weights, np.exp(-0.5 * (x / (sigma_scale * size)) ** 2))
    weights = (weights / weights.max()).astype(np.float32)
    positive = weights > 0
    weights[~positive] = weights[positive].min()
    return weights


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start positions of the windows along one axis of `size` >= `patch` voxels.

    nnU-Net's rule: aim for a step of patch * (1 - overlap) voxels (at least
    one), take ceil((size - patch) / step) + 1 windows and spread their starts
    evenly from 0 to size - patch, each rounded to the nearest voxel. The actual
    step never exceeds the aimed one, so the windows cover every voxel.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if not 1 <= patch <= size:
        raise ValueError(f"patch {patch} must be between 1 and the axis size {size}")
    span = size - patch
    steps = math.ceil(span / max(1.0, patch * (1 - overlap)))
    if steps == 0:
        return [0]
    return [round(i * span / steps) for i in range(steps + 1)]


def sliding_window(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], *,
                   patch_size: Sequence[int], batch_size: int,
                   finalize: Callable[[np.ndarray], np.ndarray], overlap: float = 0.5,
                   importance: str = "gaussian", flip_axes: Sequence[Sequence[int]] = (),
                   keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Blended prediction of `predict` over every window of an [*spatial, C] image.

    `predict` maps a float32 batch [B, *patch_size, C] with B <= batch_size
    (the last batch may be smaller) to float32 [B, *patch_size, K]. Each
    window's output is weighted by the importance map ("gaussian" or
    "constant"), summed and divided by the summed weights. For each tuple of
    spatial axes in `flip_axes` the batch is also predicted flipped on those
    axes and flipped back, and the outputs averaged. Axes smaller than the
    patch are zero-padded symmetrically and cropped back.

    `finalize` maps each finished slab of the blend, [n, *spatial[1:], K]
    float32, to its per-voxel result [n, *spatial[1:]] (argmax labels, a
    regression channel); it sees every axis-0 index of the image once, in order.

    Returns the result [*spatial] in `finalize`'s dtype and, with
    `keep_probabilities`, the blend [*spatial, K] float32 (else None).
    """
    patch = tuple(int(p) for p in patch_size)
    nd = image.ndim - 1
    if not patch or len(patch) != nd:
        raise ValueError(f"patch_size {patch} must have one entry per spatial axis of the {image.shape} image")
    if min(patch) < 1 or min(image.shape[:nd]) < 1:
        raise ValueError(f"patch_size {patch} and image spatial shape {image.shape[:nd]} must be positive")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    for axes in flip_axes:
        if len(set(axes)) != len(axes) or not all(0 <= a < nd for a in axes):
            raise ValueError(f"flip axes {tuple(axes)} must be distinct spatial axes in [0, {nd})")
    flips = [tuple(a + 1 for a in axes) for axes in flip_axes]  # batch axis comes first

    shape = image.shape[:nd]
    before = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    pads = [(b, max(p - s, 0) - b) for b, s, p in zip(before, shape, patch)]
    if any(any(pad) for pad in pads):
        image = np.pad(image, pads + [(0, 0)])
    padded = image.shape[:nd]
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape))

    weight = gaussian_importance(patch) if importance == "gaussian" else np.ones(patch, np.float32)
    windows = list(itertools.product(*(window_starts(n, p, overlap) for n, p in zip(padded, patch))))
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    # Accumulator rows run from the first unfinished axis-0 index, which is the
    # first start of the batch being added; earlier windows end no further out.
    depth = max(batch[-1][0] + patch[0] - batch[0][0] for batch in batches)
    weights = np.zeros((depth, *padded[1:]), np.float32)
    sums = result = probabilities = None
    lo = 0  # axis-0 index of accumulator row 0
    for i, batch in enumerate(batches):
        x = np.stack([image[_window(start, patch)] for start in batch]).astype(np.float32, copy=False)
        out = _predict(predict, x, flips)
        if sums is None:
            sums = np.zeros((depth, *padded[1:], out.shape[-1]), np.float32)
            if keep_probabilities:
                probabilities = np.empty((*shape, out.shape[-1]), np.float32)
        for start, y in zip(batch, out):
            rows = _window((start[0] - lo, *start[1:]), patch)
            sums[rows] += y * weight[..., None]
            weights[rows] += weight
        done = batches[i + 1][0][0] if i + 1 < len(batches) else padded[0]
        if done == lo:
            continue
        # Rows [lo, done) get no more windows: finish the part inside the image.
        a, b = max(lo, before[0]), min(done, before[0] + shape[0])
        if a < b:
            slab = (slice(a - lo, b - lo), *crop[1:])
            blended = sums[slab] / weights[slab][..., None]
            labels = np.asarray(finalize(blended))
            if labels.shape != blended.shape[:-1]:
                raise ValueError(f"finalize returned {labels.shape} for a slab {blended.shape}; "
                                 f"expected {blended.shape[:-1]}")
            if result is None:
                result = np.empty(shape, labels.dtype)
            result[a - before[0]:b - before[0]] = labels
            if keep_probabilities:
                probabilities[a - before[0]:b - before[0]] = blended
        n = done - lo
        sums[:depth - n] = sums[n:]
        sums[depth - n:] = 0
        weights[:depth - n] = weights[n:]
        weights[depth - n:] = 0
        lo = done
    return result, probabilities


def _window(start: Sequence[int], patch: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s, s + p) for s, p in zip(start, patch))


def _predict(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
             flips: Sequence[tuple[int, ...]]) -> np.ndarray:
    """`predict` on the batch, averaged with its predictions on each flip of the
    batch flipped back."""
    def call(batch):
        out = np.asarray(predict(batch), np.float32)
        if out.ndim != batch.ndim or out.shape[:-1] != batch.shape[:-1]:
            raise ValueError(f"predict returned {out.shape} for a batch {batch.shape}; "
                             f"expected [B, *patch_size, K]")
        return out

    out = call(x)
    if not flips:
        return out
    total = out.copy()  # never add into an array the caller may still hold
    for axes in flips:
        total += np.flip(call(np.ascontiguousarray(np.flip(x, axes))), axes)
    return total / (1 + len(flips))


@dataclasses.dataclass(frozen=True)
class WindowOptions:
    """Sliding-window inference: windows of `patch_size` overlapping by
    `overlap`, blended with `importance` weights, and with `flip_tta` also
    predicted flipped on every combination of axes (8 passes in 3-D)."""

    patch_size: tuple[int, ...]
    overlap: float = 0.5
    importance: str = "gaussian"
    flip_tta: bool = False

    def flip_axes(self) -> list[tuple[int, ...]]:
        if not self.flip_tta:
            return []
        axes = range(len(self.patch_size))
        return [c for n in range(1, len(self.patch_size) + 1) for c in itertools.combinations(axes, n)]


def padded_size(n: int, batch_size: int, num_devices: int) -> int:
    """The batch that `n` windows are padded to: the smallest of num_devices *
    2^k that holds them, at most `batch_size` (a multiple of num_devices). A
    small volume's one window then costs one window, not a whole batch of
    padding, and only those few sizes (and `batch_size`) ever compile."""
    size = num_devices
    while size < n:
        size *= 2
    return min(size, batch_size)


def predict_windows(predict_step: Callable, state, x: np.ndarray, *, batch_size: int, mesh) -> np.ndarray:
    """`predict_step` on a host batch of up to `batch_size` (global) windows,
    padded to `padded_size`; every process passes its share of the same
    windows and gets every output back."""
    size = padded_size(len(x), batch_size, mesh.size)
    local = size // jax.process_count()
    # Process p's rows are global rows [p * local, (p + 1) * local): `make_mesh` lists
    # the devices process by process.
    padded = np.zeros((size, *x.shape[1:]), np.float32)
    padded[:len(x)] = x
    start = jax.process_index() * local
    image = parallel.to_global({"image": padded[start:start + local]}, mesh)["image"]
    return np.asarray(multihost_utils.process_allgather(predict_step(state, image), tiled=True))[:len(x)]


def window_inference(predict_step: Callable, state, image: np.ndarray, window: WindowOptions,
                     finalize: Callable, *, batch_size: int, mesh,
                     keep_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Sliding-window prediction of a whole [*spatial, C] image on the mesh:
    `sliding_window` with `predict_windows` as its model."""
    return sliding_window(
        image, functools.partial(predict_windows, predict_step, state, batch_size=batch_size, mesh=mesh),
        patch_size=window.patch_size, batch_size=batch_size, finalize=finalize, overlap=window.overlap,
        importance=window.importance, flip_axes=window.flip_axes(), keep_probabilities=keep_probabilities)
