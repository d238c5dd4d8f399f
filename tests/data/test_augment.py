"""Augmentation: geometry against NumPy references, image and mask kept aligned."""

import dataclasses

import numpy as np
import pytest

from unet_jax.data.augment import (AugmentOptions, augment_intensity, augment_slice, random_affine,
                                   random_affine_3d, sample_patch, warp)


def test_warp_by_90_degrees_is_rot90():
    x = np.random.default_rng(0).random((9, 9, 2)).astype(np.float32)
    quarter = np.array([[0.0, -1.0], [1.0, 0.0]])  # output->input map of a 90-degree turn
    out = warp(x, quarter)
    np.testing.assert_allclose(out, np.rot90(x, k=-1, axes=(0, 1)), atol=1e-5)


def test_warp_zoom_about_centre():
    x = np.zeros((33, 33, 1), np.float32)
    x[12:21, 12:21] = 1.0  # 9x9 square centred at 16
    out = warp(x, np.eye(2) / 2.0)  # magnify by 2
    assert out[16, 16, 0] == 1.0
    assert abs(out[..., 0].sum() - 18 * 18) < 20
    ys, xs = np.nonzero(out[..., 0] > 0.5)
    assert abs(ys.mean() - 16) < 0.5 and abs(xs.mean() - 16) < 0.5


def test_probabilities_zero_is_identity_and_one_always_flips():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 3)).astype(np.float32)
    mask = (rng.random((16, 16)) > 0.5).astype(np.float32)
    off = AugmentOptions(flip_prob=0, rotate_prob=0, scale_prob=0)
    i2, m2 = augment_slice(image, mask, rng, off)
    np.testing.assert_array_equal(i2, image)
    np.testing.assert_array_equal(m2, mask)
    i3, m3 = augment_slice(image, mask, rng, AugmentOptions(flip_prob=1, rotate_prob=0, scale_prob=0))
    np.testing.assert_array_equal(i3, image[:, ::-1])
    np.testing.assert_array_equal(m3, mask[:, ::-1])
    assert random_affine(rng, off) is None


def test_rotation_and_scale_stay_in_range():
    rng = np.random.default_rng(1)
    opts = AugmentOptions(rotate_prob=1, scale_prob=1, max_rotate_deg=15, max_scale=0.05)
    for _ in range(200):
        m = random_affine(rng, opts)
        zoom = 1 / np.sqrt(abs(np.linalg.det(m)))
        angle = np.degrees(np.arctan2(m[1, 0], m[0, 0]))
        assert 0.95 - 1e-9 <= zoom <= 1.05 + 1e-9
        assert -15 - 1e-9 <= angle <= 15 + 1e-9


def test_image_and_mask_move_together():
    rng = np.random.default_rng(2)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 10:30] = 1
    mask[45:50, 40:60] = 1
    image = np.repeat(mask[..., None] * 255.0, 3, axis=-1)
    opts = AugmentOptions(flip_prob=0.5, rotate_prob=1, scale_prob=1)
    changed = 0
    for _ in range(20):
        im, m = augment_slice(image, mask, rng, opts)
        assert set(np.unique(m)) <= {0.0, 1.0}
        # The image carries the mask in every channel: thresholding it must give the mask back.
        disagree = ((im[..., 0] >= 127.5) != (m >= 0.5)).mean()
        assert disagree < 2e-3
        np.testing.assert_allclose(im[..., 0], im[..., 2])
        changed += not np.array_equal(m, mask)
    assert changed >= 19


def test_volumes_get_the_same_in_plane_transform_on_every_slice():
    rng = np.random.default_rng(5)
    base = np.zeros((32, 32), np.float32)
    base[8:20, 6:24] = 1
    volume_mask = np.stack([base] * 4, axis=-1)                    # [H, W, D]
    volume = np.repeat(volume_mask[..., None] * 200.0, 2, axis=-1)  # [H, W, D, C]
    opts = AugmentOptions(flip_prob=0.5, rotate_prob=1, scale_prob=1)
    for _ in range(5):
        state = rng.bit_generator.state
        im, m = augment_slice(volume, volume_mask, rng, opts)
        assert im.shape == volume.shape and m.shape == volume_mask.shape
        rng.bit_generator.state = state  # the same draw on one slice
        im2d, m2d = augment_slice(volume[:, :, 0], volume_mask[:, :, 0], rng, opts)
        for d in range(4):
            np.testing.assert_allclose(im[:, :, d], im2d, atol=1e-4)
            np.testing.assert_array_equal(m[:, :, d], m2d)


def test_multi_label_masks_keep_their_labels():
    rng = np.random.default_rng(6)
    mask = np.zeros((48, 48), np.float32)
    mask[10:30, 10:30] = 1
    mask[15:25, 15:25] = 2  # a core inside a rim
    image = mask[..., None] * 100.0
    opts = AugmentOptions(flip_prob=0.5, rotate_prob=1, scale_prob=1)
    for _ in range(10):
        im, m = augment_slice(image, mask, rng, opts)
        assert set(np.unique(m)) == {0.0, 1.0, 2.0}
        # The image carries the labels: rounding it gives the mask back nearly everywhere.
        assert (np.round(im[..., 0] / 100.0) != m).mean() < 0.02


# ---- 3-D patches: sample_patch

GEOMETRY_OFF = dict(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0)


def _blob_volume(shape=(40, 36, 20)):
    """A mask with a label-1 ball holding a label-2 core, and a second label-1
    ball; image channel 0 is the label value, channels 1 and 2 its one-hot
    planes of labels 1 and 2."""
    grid = np.indices(shape)
    def ball(centre, radius):
        return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2
    mask = np.zeros(shape, np.float32)
    mask[ball((14, 12, 9), 7)] = 1
    mask[ball((14, 12, 9), 3.5)] = 2
    mask[ball((28, 25, 11), 5)] = 1
    image = np.stack([mask, (mask == 1).astype(np.float32), (mask == 2).astype(np.float32)], axis=-1)
    return image, mask


def test_sample_patch_shapes_dtypes_and_centred_padding():
    rng = np.random.default_rng(0)
    volume = rng.random((10, 12, 5, 2)).astype(np.float32) + 1  # no zeros of its own
    mask = (volume[..., 0] > 1.5).astype(np.uint8)
    for opts in (None, AugmentOptions(flip_axes=(0, 1, 2), rotate_prob=1, scale_prob=1, rotate_3d=True)):
        im, m = sample_patch(volume, mask, (8, 8, 8), rng, opts, foreground_prob=0.5)
        assert im.shape == (8, 8, 8, 2) and m.shape == (8, 8, 8)
        assert im.dtype == np.float32 and m.dtype == np.float32
    # Depth 5 < 8: the whole axis, centred: (8 - 5) // 2 = 1 slice of zeros before, 2 after.
    for _ in range(5):
        im, m = sample_patch(volume, mask, (8, 8, 8), rng, None, foreground_prob=0)
        assert not im[:, :, [0, 6, 7]].any() and not m[:, :, [0, 6, 7]].any()
        assert (im[:, :, 1:6] > 0).all()
        # The rest is a window of the volume.
        hits = [(x, y) for x in range(3) for y in range(5)
                if np.array_equal(im[:, :, 1:6], volume[x:x + 8, y:y + 8])]
        assert len(hits) == 1 and np.array_equal(m[:, :, 1:6], mask[hits[0][0]:hits[0][0] + 8,
                                                                       hits[0][1]:hits[0][1] + 8])
    # 2-D, with a trailing mask axis of 1; width 6 < 8: one column of zeros either side.
    image2d = rng.random((12, 6, 3)).astype(np.float32) + 1
    im, m = sample_patch(image2d, np.ones((12, 6, 1), np.float32), (8, 8), rng, None)
    assert im.shape == (8, 8, 3) and m.shape == (8, 8) and im.dtype == m.dtype == np.float32
    assert not im[:, [0, 7]].any() and (im[:, 1:7] > 0).all() and m[:, 1:7].all()
    im, m = sample_patch(image2d, np.ones((12, 6)), (8, 8), rng, AugmentOptions(rotate_prob=1))
    assert im.shape == (8, 8, 3) and m.shape == (8, 8)


def test_sample_patch_rejects_bad_arguments():
    image, mask = np.zeros((8, 8, 8, 1), np.float32), np.zeros((8, 8, 8), np.float32)
    rng = np.random.default_rng(0)
    for bad in [(4, 4), (4, 4, 4, 4), (4, 0, 4), (4, -2, 4), (4, 2.5, 4)]:
        with pytest.raises(ValueError, match="patch_size"):
            sample_patch(image, mask, bad, rng, None)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="foreground_prob"):
            sample_patch(image, mask, (4, 4, 4), rng, None, foreground_prob=bad)
    with pytest.raises(ValueError, match="flip_axes"):
        sample_patch(image[..., 0, :], mask[..., 0], (4, 4), rng, AugmentOptions(flip_axes=(0, 1, 2)))
    with pytest.raises(ValueError, match="mask"):
        sample_patch(image, mask[:4], (4, 4, 4), rng, None)


def test_forced_patches_always_contain_foreground():
    image = np.random.default_rng(1).random((48, 40, 24, 1)).astype(np.float32)
    mask = np.zeros((48, 40, 24), np.uint8)
    mask[2:4, 37:39, 1:3] = 1  # one small blob in a corner, far from the centre
    rng = np.random.default_rng(2)
    augment = AugmentOptions(flip_prob=0.5, flip_axes=(0, 1, 2), rotate_prob=1, max_rotate_deg=40,
                             scale_prob=1, max_scale=0.2, rotate_3d=True)
    for opts in (None, augment, dataclasses.replace(augment, rotate_3d=False)):
        for _ in range(30):
            _, m = sample_patch(image, mask, (16, 16, 8), rng, opts, foreground_prob=1.0)
            assert m.sum() > 0
    # No foreground at all: a random patch instead.
    _, m = sample_patch(image, np.zeros_like(mask), (16, 16, 8), rng, augment, foreground_prob=1.0)
    assert m.shape == (16, 16, 8) and not m.any()


def test_foreground_share_follows_foreground_prob():
    shape, patch = (64, 64, 32), (16, 16, 8)
    image = np.zeros(shape + (1,), np.float32)
    mask = np.zeros(shape, np.float32)
    blob = [(40, 42), (10, 12), (20, 22)]  # 2x2x2 voxels
    mask[40:42, 10:12, 20:22] = 1
    # Random windows: per axis the starts in [0, size - patch] that overlap the blob.
    expected = np.prod([len([s for s in range(n - p + 1) if s < b1 and s + p > b0]) / (n - p + 1)
                        for n, p, (b0, b1) in zip(shape, patch, blob)])
    rng = np.random.default_rng(3)
    def share(prob, draws=300):
        return np.mean([sample_patch(image, mask, patch, rng, None, prob)[1].any() for _ in range(draws)])
    unforced, forced, third = share(0.0), share(1.0), share(1 / 3)
    assert abs(unforced - expected) < 0.04 and unforced < 0.15, (unforced, expected)
    assert forced == 1.0
    assert third >= 0.3 and third > unforced + 0.15


def test_sample_patch_is_deterministic():
    image, mask = _blob_volume()
    opts = AugmentOptions(flip_axes=(0, 1, 2), rotate_prob=1, scale_prob=1, rotate_3d=True,
                          brightness_prob=1, contrast_prob=1, gamma_prob=1, noise_prob=1)
    a = sample_patch(image, mask, (16, 16, 12), np.random.default_rng(7), opts, 0.5)
    b = sample_patch(image, mask, (16, 16, 12), np.random.default_rng(7), opts, 0.5)
    c = sample_patch(image, mask, (16, 16, 12), np.random.default_rng(8), opts, 0.5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("rotate_3d", [False, True])
def test_image_and_mask_stay_aligned_in_patches(rotate_3d):
    image, mask = _blob_volume()
    opts = AugmentOptions(flip_prob=0.5, flip_axes=(0, 1, 2), rotate_prob=1, max_rotate_deg=30,
                          scale_prob=1, max_scale=0.15, rotate_3d=rotate_3d)
    rng = np.random.default_rng(4)
    interpolated = 0
    for _ in range(12):
        im, m = sample_patch(image, mask, (24, 24, 16), rng, opts, foreground_prob=0.5)
        assert set(np.unique(m)) <= {0.0, 1.0, 2.0}
        # Channel 0 carries the label value: rounding it gives the mask back nearly everywhere.
        assert (np.round(im[..., 0]) != m).mean() < 0.02
        # Channels 1 and 2 carry the label planes, interpolated the same way: argmax gives the mask.
        planes = np.concatenate([1 - im[..., 1:].sum(-1, keepdims=True), im[..., 1:]], axis=-1)
        assert (np.argmax(planes, axis=-1) != m).mean() < 1e-3
        interpolated += bool((np.abs(im[..., 0] - np.round(im[..., 0])) > 0.05).any())
    assert interpolated >= 10  # the patches were turned, not just cut


@pytest.mark.parametrize("ndim", [2, 3])
def test_flips_on_every_axis(ndim):
    rng = np.random.default_rng(5)
    shape = (20, 18, 10)[:ndim]
    image = rng.random(shape + (2,)).astype(np.float32)
    mask = (rng.random(shape) > 0.7).astype(np.float32)
    patch = (12, 10, 8)[:ndim]
    axes = tuple(range(ndim))
    opts = AugmentOptions(flip_prob=1.0, flip_axes=axes, rotate_prob=0.0, scale_prob=0.0)
    for seed in range(5):  # the same seed puts the window in the same place
        im, m = sample_patch(image, mask, patch, np.random.default_rng(seed), opts, 0.5)
        crop_im, crop_m = sample_patch(image, mask, patch, np.random.default_rng(seed), None, 0.5)
        np.testing.assert_array_equal(im, np.flip(crop_im, axes))
        np.testing.assert_array_equal(m, np.flip(crop_m, axes))


def test_in_plane_rotation_keeps_voxels_in_their_slice():
    mask = np.zeros((32, 32, 8), np.float32)
    mask[10:22, 8:20, 3] = 1  # foreground in slice 3 only
    image = mask[..., None] * 10.0
    rng = np.random.default_rng(6)
    spread = 0
    for rotate_3d in (False, True):
        opts = AugmentOptions(flip_prob=0.0, rotate_prob=1, max_rotate_deg=45, scale_prob=1, max_scale=0.2,
                              rotate_3d=rotate_3d)
        for _ in range(10):
            im, m = sample_patch(image, mask, (24, 24, 8), rng, opts, foreground_prob=1.0)
            others = [z for z in range(8) if z != 3]
            if not rotate_3d:
                assert m[..., 3].any() and not m[..., others].any() and not im[..., others, :].any()
            else:
                spread += bool(m[..., others].any())
    assert spread >= 8  # 3-D rotation does carry voxels across slices


def test_random_affine_3d_stays_in_range():
    rng = np.random.default_rng(7)
    opts = AugmentOptions(rotate_prob=1, scale_prob=1, max_rotate_deg=15, max_scale=0.05)
    for _ in range(100):
        m = random_affine_3d(rng, opts)
        zoom = 1 / np.cbrt(np.linalg.det(m))
        assert 0.95 - 1e-9 <= zoom <= 1.05 + 1e-9
        np.testing.assert_allclose((m * zoom) @ (m * zoom).T, np.eye(3), atol=1e-9)  # a rotation
        # Three angles of at most 15 degrees: the whole turn is at most 3 * 15 degrees.
        assert np.degrees(np.arccos(np.clip((np.trace(m * zoom) - 1) / 2, -1, 1))) <= 45 + 1e-6
    assert random_affine_3d(rng, AugmentOptions(rotate_prob=0, scale_prob=0)) is None


# ---- intensity

def _channels(x):
    return np.moveaxis(x, -1, 0).reshape(x.shape[-1], -1)


def test_intensity_off_changes_nothing():
    rng = np.random.default_rng(8)
    image = rng.normal(size=(6, 7, 5, 3)).astype(np.float32)
    state = rng.bit_generator.state
    np.testing.assert_array_equal(augment_intensity(image, rng, AugmentOptions()), image)
    assert rng.bit_generator.state == state  # nothing drawn
    mask = np.zeros((6, 7, 5), np.float32)
    a = sample_patch(image, mask, (4, 4, 4), np.random.default_rng(1), AugmentOptions(**GEOMETRY_OFF))
    b = sample_patch(image, mask, (4, 4, 4), np.random.default_rng(1), None)
    np.testing.assert_array_equal(a[0], b[0])


def test_brightness_scales_each_channel_within_its_range():
    rng = np.random.default_rng(9)
    image = rng.random((8, 8, 4, 3)).astype(np.float32) + 0.5
    factors = []
    for _ in range(20):
        out = augment_intensity(image, rng, AugmentOptions(brightness_prob=1))
        ratio = _channels(out) / _channels(image)
        np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)  # per channel
        factors.extend(ratio[:, 0])
    assert 0.75 - 1e-6 <= min(factors) and max(factors) <= 1.25 + 1e-6
    assert np.ptp(factors) > 0.2  # and they vary


def test_contrast_keeps_min_and_max_and_scales_about_the_mean():
    rng = np.random.default_rng(10)
    image = rng.normal(size=(8, 8, 4, 2)).astype(np.float32)
    factors = []
    for _ in range(20):
        out = augment_intensity(image, rng, AugmentOptions(contrast_prob=1))
        for x, y in zip(_channels(image), _channels(out)):
            assert x.min() - 1e-6 <= y.min() and y.max() <= x.max() + 1e-6
            # Away from the mean (a steady ratio) and not clipped: one factor.
            used = (np.abs(x - x.mean()) > 0.2) & (y > x.min() + 1e-5) & (y < x.max() - 1e-5)
            factor = (y[used] - x.mean()) / (x[used] - x.mean())
            np.testing.assert_allclose(factor, np.median(factor), rtol=1e-3)
            factors.append(np.median(factor))
    assert 0.75 - 1e-3 <= min(factors) < 1 < max(factors) <= 1.25 + 1e-3  # both sides of 1


def test_gamma_keeps_min_and_max_and_order():
    rng = np.random.default_rng(11)
    image = rng.normal(size=(8, 8, 4, 2)).astype(np.float32)
    gammas = []
    for _ in range(20):
        out = augment_intensity(image, rng, AugmentOptions(gamma_prob=1))
        for x, y in zip(_channels(image), _channels(out)):
            np.testing.assert_allclose([y.min(), y.max()], [x.min(), x.max()], atol=1e-5)
            np.testing.assert_array_equal(np.argsort(x), np.argsort(y))
            u, v = (x - x.min()) / np.ptp(x), (y - x.min()) / np.ptp(x)
            middle = (u > 0.05) & (u < 0.95)
            gamma = np.log(np.clip(v[middle], 1e-12, None)) / np.log(u[middle])
            assert np.ptp(gamma) < 1e-2
            gammas.append(np.median(gamma))
    assert 0.7 - 1e-3 <= min(gammas) < 1 < max(gammas) <= 1.5 + 1e-3  # both sides of 1
    constant = np.ones((4, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(augment_intensity(constant, rng, AugmentOptions(gamma_prob=1)), constant)


def test_noise_adds_gaussian_noise_of_at_most_noise_std():
    rng = np.random.default_rng(12)
    image = np.full((16, 16, 8, 2), 3.0, np.float32)
    stds = []
    for _ in range(40):
        out = augment_intensity(image, rng, AugmentOptions(noise_prob=1, noise_std=0.1))
        for y in _channels(out):
            assert abs(y.mean() - 3.0) < 0.01
            stds.append(y.std())
    assert max(stds) <= 0.1 * 1.05 and min(stds) < 0.03
    assert abs(np.mean(stds) - 0.05) < 0.015  # sigma uniform in [0, 0.1]


def test_augment_slice_applies_intensity_after_geometry():
    rng = np.random.default_rng(13)
    image = rng.random((16, 16, 2)).astype(np.float32) + 0.5
    mask = np.zeros((16, 16), np.float32)
    im, m = augment_slice(image, mask, rng, AugmentOptions(**GEOMETRY_OFF, brightness_prob=1))
    ratio = im / image
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:1, :1], ratio.shape), rtol=1e-5)
    assert not np.allclose(ratio, 1) and (0.75 <= ratio).all() and (ratio <= 1.25).all()


def test_warp_reads_zeros_beyond_the_border_not_the_edge_pixel():
    image = np.zeros((8, 8, 1), np.float32)
    image[0] = 1.0  # a bright top row
    out = warp(image, np.eye(2) * 2.0)  # zoom out 2x about the centre (3.5, 3.5)
    # Output rows 0 and 1 sample rows -3.5 and -1.5: outside, so zero; row 2 samples 0.5, half the edge.
    np.testing.assert_allclose(out[:3, 4, 0], [0.0, 0.0, 0.5])


def test_continuous_targets_are_warped_like_the_image_never_thresholded():
    """A regression target equal to the image's first channel stays equal to it
    through flips, rotation and scaling of slices and of 2-D and 3-D patches."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:48, 0:40]
    grey = (np.sin(yy / 5.0) * np.cos(xx / 7.0) + 1.0).astype(np.float32)  # smooth, many grey levels
    image = np.stack([grey, 2 * grey], axis=-1)
    opts = AugmentOptions(flip_prob=0.5, rotate_prob=1, scale_prob=1, max_scale=0.2)
    for _ in range(5):
        im, target = augment_slice(image, grey, rng, opts, continuous=True)
        np.testing.assert_allclose(target, im[..., 0], atol=1e-6)
        assert np.unique(target).size > 100  # grey levels, not a 0/1 mask
    volume = np.stack([grey] * 6, axis=-1)  # [48, 40, 6]
    for rotate_3d in (False, True):
        o = dataclasses.replace(opts, flip_axes=(0, 1, 2), rotate_3d=rotate_3d)
        for _ in range(3):
            im, target = sample_patch(volume[..., None], volume, (24, 24, 4), rng, o, continuous=True)
            np.testing.assert_allclose(target, im[..., 0], atol=1e-6)
            assert np.unique(target).size > 50
    im, target = sample_patch(image, grey, (32, 32), rng, opts, continuous=True)
    np.testing.assert_allclose(target, im[..., 0], atol=1e-6)
