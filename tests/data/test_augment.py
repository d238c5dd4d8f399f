"""Augmentation: geometry against NumPy references, image and mask kept aligned."""

import numpy as np

from unet_jax.data.augment import AugmentOptions, augment_slice, random_affine, warp


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
