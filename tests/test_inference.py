"""Sliding-window inference: window placement and blending against a NumPy
reference that holds the whole float volume, padding, flip TTA, and the
bounded accumulator."""

import itertools
import tracemalloc

import numpy as np
import pytest

from unet_jax import inference
from unet_jax.inference import gaussian_importance, sliding_window, window_starts


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _pointwise_model(channels, classes, seed=0):
    """Per-voxel softmax of the input: equivariant to flips and shifts."""
    mix = np.random.default_rng(seed).normal(size=(channels, classes)).astype(np.float32)
    return lambda x: _softmax(3 * np.tanh(x @ mix)).astype(np.float32)


def _patterned_model(patch, channels, classes, seed=0):
    """The input mixed with a fixed random pattern per position in the patch:
    a window placed or weighted wrongly changes the result."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(channels, classes)).astype(np.float32)
    pattern = rng.normal(size=(*patch, classes)).astype(np.float32)
    return lambda x: _softmax(3 * np.tanh(x @ mix) + pattern).astype(np.float32)


def _flipped(predict, axes):
    batch_axes = tuple(a + 1 for a in axes)
    return lambda x: np.flip(predict(np.flip(x, batch_axes)), batch_axes)


def _argmax(probs):
    return np.argmax(probs, -1).astype(np.uint8)


def _reference(image, predict, patch, overlap, importance="gaussian"):
    """Blend over the symmetrically zero-padded volume with a float64
    accumulator of the whole volume, cropped back."""
    nd = image.ndim - 1
    shape = image.shape[:nd]
    before = [max(p - s, 0) // 2 for s, p in zip(shape, patch)]
    image = np.pad(image, [(b, max(p - s, 0) - b) for b, s, p in zip(before, shape, patch)] + [(0, 0)])
    weight = gaussian_importance(patch) if importance == "gaussian" else np.ones(patch)
    total, weights = 0, np.zeros(image.shape[:nd])
    for start in itertools.product(*(window_starts(n, p, overlap) for n, p in zip(image.shape, patch))):
        window = tuple(slice(s, s + p) for s, p in zip(start, patch))
        y = predict(image[window][None].astype(np.float32))[0]
        full = np.zeros(image.shape[:nd] + y.shape[-1:])
        full[window] = y * weight[..., None]
        total = total + full
        weights[window] += weight
    blended = total / weights[..., None]
    return blended[tuple(slice(b, b + s) for b, s in zip(before, shape))]


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------------------
# Importance map and window starts
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(8, 8, 4), (7, 12), (5,)])
def test_gaussian_importance(patch):
    w = gaussian_importance(patch)
    assert w.shape == patch and w.dtype == np.float32
    assert w.max() == 1.0 and w.min() > 0
    for axis in range(len(patch)):
        np.testing.assert_array_equal(w, np.flip(w, axis))
    centre = tuple(p // 2 for p in patch)  # a central voxel for odd and even sizes
    assert w[centre] == w.max()


def test_gaussian_importance_raises_underflow_to_smallest_positive():
    x = np.arange(64) - 31.5
    raw = np.exp(-0.5 * (x / 0.64) ** 2)  # sigma 0.01 * 64: the tails underflow in float32
    raw = (raw / raw.max()).astype(np.float32)
    assert (raw == 0).any()
    w = gaussian_importance((64,), sigma_scale=0.01)
    np.testing.assert_array_equal(w, np.where(raw > 0, raw, raw[raw > 0].min()))


@pytest.mark.parametrize("size,patch,overlap", [(23, 8, 0.5), (19, 8, 0.5), (11, 4, 0.5), (100, 7, 0.3),
                                                (9, 8, 0.9), (50, 16, 0.0), (13, 1, 0.5)])
def test_window_starts_cover_the_axis(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(b > a for a, b in zip(starts, starts[1:]))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()
    assert max(np.diff(starts), default=0) <= max(1, np.ceil(patch * (1 - overlap)))


def test_window_starts_special_cases():
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(32, 8, 0.0) == [0, 8, 16, 24]
    assert window_starts(23, 8, 0.5) == [0, 4, 8, 11, 15]  # nnU-Net: 5 steps spread over 15


# ---------------------------------------------------------------------------
# Blending
# ---------------------------------------------------------------------------

def test_single_window_equals_direct_prediction():
    image, patch = _random((8, 8, 4, 2)), (8, 8, 4)
    predict = _patterned_model(patch, 2, 3)
    direct = predict(image[None])[0]
    labels, probs = sliding_window(image, predict, patch_size=patch, batch_size=2, finalize=_argmax,
                                   importance="constant", keep_probabilities=True)
    np.testing.assert_array_equal(probs, direct)
    np.testing.assert_array_equal(labels, _argmax(direct))
    labels, probs = sliding_window(image, predict, patch_size=patch, batch_size=2, finalize=_argmax,
                                   keep_probabilities=True)
    np.testing.assert_allclose(probs, direct, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(labels, _argmax(direct))


def test_volume_smaller_than_patch_is_padded_symmetrically_and_cropped():
    image, patch = _random((5, 6, 3, 2)), (8, 8, 4)
    predict = _patterned_model(patch, 2, 3)
    padded = np.pad(image, ((1, 2), (1, 1), (0, 1), (0, 0)))
    direct = predict(padded[None])[0][1:6, 1:7, 0:3]
    labels, probs = sliding_window(image, predict, patch_size=patch, batch_size=1, finalize=_argmax,
                                   importance="constant", keep_probabilities=True)
    assert labels.shape == (5, 6, 3) and labels.dtype == np.uint8
    np.testing.assert_array_equal(probs, direct)
    np.testing.assert_array_equal(labels, _argmax(direct))


def test_3d_matches_full_volume_reference():
    image, patch = _random((23, 19, 11, 2)), (8, 8, 4)
    model = _patterned_model(patch, 2, 3)
    batch_sizes = []

    def predict(x):
        batch_sizes.append(x.shape[0])
        assert x.shape[1:] == (*patch, 2) and x.dtype == np.float32
        return model(x)

    labels, probs = sliding_window(image, predict, patch_size=patch, batch_size=3, finalize=_argmax,
                                   overlap=0.5, keep_probabilities=True)
    expected = _reference(image, model, patch, 0.5)
    assert probs.shape == (23, 19, 11, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, _argmax(expected))
    assert max(batch_sizes) == 3 and sum(batch_sizes) == 5 * 4 * 5


@pytest.mark.parametrize("shape,patch,overlap,batch_size,importance", [
    ((37, 29, 1), (16, 12), 0.25, 4, "gaussian"),
    ((37, 5, 1), (16, 8), 0.5, 2, "constant"),   # axis 1 padded, axis 0 slides
    ((4, 40, 1), (8, 8), 0.0, 3, "gaussian"),    # axis 0 padded
])
def test_2d_matches_full_volume_reference(shape, patch, overlap, batch_size, importance):
    image = _random(shape, seed=1)
    model = _patterned_model(patch, 1, 4, seed=1)
    result, probs = sliding_window(image, model, patch_size=patch, batch_size=batch_size,
                                   finalize=lambda p: p[..., 0], overlap=overlap, importance=importance,
                                   keep_probabilities=True)
    expected = _reference(image, model, patch, overlap, importance)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert result.dtype == np.float32 and result.shape == shape[:2]
    np.testing.assert_array_equal(result, probs[..., 0])


def test_probabilities_are_none_unless_kept():
    image, patch = _random((12, 10, 1)), (8, 8)
    labels, probs = sliding_window(image, _pointwise_model(1, 2), patch_size=patch, batch_size=2,
                                   finalize=_argmax)
    assert probs is None and labels.shape == (12, 10)


# ---------------------------------------------------------------------------
# Flip test-time augmentation
# ---------------------------------------------------------------------------

FLIPS = ((0,), (1,), (0, 2))


def test_flips_of_an_equivariant_model_change_nothing():
    image, patch = _random((17, 13, 6, 2)), (8, 8, 4)
    predict = _pointwise_model(2, 3)
    kwargs = dict(patch_size=patch, batch_size=3, finalize=_argmax, keep_probabilities=True)
    labels, probs = sliding_window(image, predict, **kwargs)
    tta_labels, tta_probs = sliding_window(image, predict, flip_axes=FLIPS, **kwargs)
    np.testing.assert_allclose(tta_probs, probs, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tta_labels, labels)


def test_flips_average_the_flipped_predictions():
    image, patch = _random((17, 13, 6, 2)), (8, 8, 4)
    model = _patterned_model(patch, 2, 3)
    labels, probs = sliding_window(image, model, patch_size=patch, batch_size=3, finalize=_argmax,
                                   flip_axes=FLIPS, keep_probabilities=True)
    expected = np.mean([_reference(image, model, patch, 0.5)]
                       + [_reference(image, _flipped(model, axes), patch, 0.5) for axes in FLIPS], axis=0)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, _argmax(expected))
    plain = _reference(image, model, patch, 0.5)
    assert np.abs(plain - expected).max() > 1e-2  # the flips did make a difference


# ---------------------------------------------------------------------------
# Bounded memory
# ---------------------------------------------------------------------------

def test_finalize_sees_thin_slabs_in_order_while_predicting():
    # Channel 0 holds the axis-0 index, so each blended slab says which rows it is.
    image = np.broadcast_to(np.arange(64, dtype=np.float32)[:, None, None, None], (64, 8, 8, 1)).copy()
    events, seen = [], []

    def predict(x):
        events.append("predict")
        return x

    def finalize(slab):
        events.append("finalize")
        seen.append(np.round(slab[:, 0, 0, 0]).astype(int))
        return slab[..., 0]

    result, _ = sliding_window(image, predict, patch_size=(8, 8, 8), batch_size=2, finalize=finalize)
    sizes = [len(rows) for rows in seen]
    assert max(sizes) <= 8 + 4  # one patch deep plus the axis-0 spread of a batch (one step of 4)
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(64))
    assert events.index("finalize") < len(events) - 1 - events[::-1].index("predict")
    np.testing.assert_allclose(result, image[..., 0], rtol=1e-6)


def test_peak_memory_far_below_a_float_volume_of_every_class():
    classes, image, patch = 16, _random((512, 16, 16, 1)), (8, 16, 16)
    predict = lambda x: np.repeat(x, classes, axis=-1)  # noqa: E731
    full_volume = image.size * classes * 4
    tracemalloc.start()
    try:
        labels, _ = sliding_window(image, predict, patch_size=patch, batch_size=2, finalize=_argmax)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert labels.shape == (512, 16, 16)
    assert peak < full_volume / 4, (peak, full_volume)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(patch_size=(8, 8)),
    dict(batch_size=0),
    dict(overlap=1.0),
    dict(overlap=-0.1),
    dict(importance="linear"),
    dict(flip_axes=((3,),)),
    dict(flip_axes=((0, 0),)),
    dict(predict=lambda x: x[:, :4]),
    dict(finalize=lambda p: p),
])
def test_bad_inputs_raise(kwargs):
    args = dict(patch_size=(8, 8, 4), batch_size=2, predict=lambda x: x, finalize=_argmax) | kwargs
    with pytest.raises(ValueError):
        sliding_window(_random((10, 9, 5, 1)), **args)


@pytest.mark.parametrize("size,patch,overlap", [(4, 8, 0.5), (8, 8, 1.0), (8, 0, 0.5)])
def test_window_starts_bad_inputs_raise(size, patch, overlap):
    with pytest.raises(ValueError):
        window_starts(size, patch, overlap)


def test_gaussian_importance_bad_sigma_raises():
    with pytest.raises(ValueError):
        gaussian_importance((8, 8), sigma_scale=0.0)


def test_windows_are_padded_to_the_smallest_power_of_two_multiple_of_the_devices():
    assert [inference.padded_size(n, 8, 1) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [inference.padded_size(n, 16, 4) for n in (1, 4, 5, 9, 16)] == [4, 4, 8, 16, 16]
    assert inference.padded_size(6, 12, 4) == 8 and inference.padded_size(9, 12, 4) == 12
