"""Augmentation on the device: equal to the host's NumPy path for the same
parameters, drawn from the same distribution, the same under sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from unet_jax.data import augment, augment_device, pathology
from unet_jax.data.augment import AugmentOptions
from unet_jax.data.pathology import PathologyOptions

OFF = AugmentOptions(flip_prob=0.0, rotate_prob=0.0, scale_prob=0.0)
ALL = AugmentOptions(flip_prob=0.5, rotate_prob=0.5, scale_prob=0.5, noise_prob=0.5, brightness_prob=0.5,
                     contrast_prob=0.5, gamma_prob=0.5)
# As a train step would: jitted, the options static (hashable frozen dataclasses).
augment_batch = jax.jit(augment_device.augment_batch, static_argnames=("opts", "continuous", "num_labels", "pathology"))
simulate_pathology = jax.jit(augment_device.simulate_pathology, static_argnames="opts")
warp_with_mask = jax.jit(augment_device.warp_with_mask, static_argnames=("continuous", "num_labels"))
sample_affine = jax.jit(jax.vmap(augment_device.sample_affine, in_axes=(0, None, None)), static_argnums=(1, 2))


def _matrix_2d(angle_deg: float, zoom: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / zoom


def _labels(shape, rng, count):
    """Blocky labels 0..count: nested boxes, as a mask of a lesion and its core."""
    mask = np.zeros(shape, np.float32)
    for label in range(1, count + 1):
        lo = [int(s * 0.1 * label) + int(rng.integers(2)) for s in shape]
        hi = [int(s * (1 - 0.12 * label)) for s in shape]
        mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return mask


def _ties(planes: np.ndarray, binary: bool) -> np.ndarray:
    """Pixels where the host's warped planes [..., P] leave the label to float
    rounding: a plane within 1e-4 of 0.5 (binary) or of the best one (all
    zero, outside the image, is no tie: both take the first)."""
    if binary:
        return np.abs(planes[..., 0] - 0.5) < 1e-4
    top = np.sort(planes, axis=-1)
    return (top[..., -1] - top[..., -2] < 1e-4) & (top[..., -1] > 0)


def _device_warp(image, mask, matrix, **kw):
    return [np.asarray(a) for a in warp_with_mask(
        jnp.asarray(image), jnp.asarray(mask[..., None]), jnp.asarray(matrix, jnp.float32), **kw)]


@pytest.mark.parametrize("spatial", [(32, 32), (16, 16, 8)], ids=["2d", "3d_in_plane"])
@pytest.mark.parametrize("labels", [1, 3], ids=["binary", "three_labels"])
def test_warp_equals_the_host_warp_with_mask(spatial, labels):
    rng = np.random.default_rng(0)
    image = rng.random(spatial + (3,)).astype(np.float32)
    mask = _labels(spatial, rng, labels)
    # Large angles and zooms both ways, so zeros come in from outside.
    for angle, zoom in ((13.0, 1.04), (-40.0, 0.8), (71.0, 1.3)):
        matrix = _matrix_2d(angle, zoom)
        host_image, host_mask = augment.warp_with_mask(image, mask, matrix)
        dev_image, dev_mask = _device_warp(image, mask, matrix, num_labels=labels)
        np.testing.assert_allclose(dev_image, host_image, atol=1e-5)
        planes = mask[..., None] if labels == 1 else np.eye(labels + 1, dtype=np.float32)[mask.astype(int)]
        h, w = spatial[:2]
        warped = augment.warp(planes.reshape(h, w, -1), matrix).reshape(planes.shape)
        clear = ~_ties(warped, labels == 1)
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(dev_mask[..., 0][clear], host_mask[clear])
        assert set(np.unique(dev_mask)) == set(range(labels + 1))
    # A mask holding only label 1 with num_labels=3 is thresholded, as the host decides per mask.
    binary = (mask > 0).astype(np.float32)
    matrix = _matrix_2d(-40.0, 0.8)
    np.testing.assert_array_equal(_device_warp(image, binary, matrix, num_labels=3)[1][..., 0],
                                  augment.warp_with_mask(image, binary, matrix)[1])


@pytest.mark.parametrize("labels", [1, 3, "continuous"])
def test_full_3d_rotation_equals_the_host_resample_about_the_centre(labels):
    rng = np.random.default_rng(1)
    shape = (15, 17, 9)  # odd: the centre is a voxel
    image = rng.random(shape + (2,)).astype(np.float32)
    continuous = labels == "continuous"
    mask = image[..., 0] * 3 if continuous else _labels(shape, rng, labels)
    matrix = augment._rotation(0, 0.3) @ augment._rotation(1, -0.4) @ augment._rotation(2, 0.5) / 0.9
    pivot = (np.array(shape) - 1) / 2
    host_image, host_mask = augment._resample(image, mask, matrix, pivot, pivot, shape, continuous)
    dev_image, dev_mask = _device_warp(image, mask, matrix, continuous=continuous,
                                       num_labels=1 if continuous else labels)
    np.testing.assert_allclose(dev_image, host_image, atol=1e-5)
    if continuous:
        np.testing.assert_allclose(dev_mask[..., 0], host_mask, atol=1e-5)
        return
    planes = mask[..., None] if labels == 1 else np.eye(labels + 1, dtype=np.float32)[mask.astype(int)][..., 1:]
    warped, _ = augment._resample(planes, mask, matrix, pivot, pivot, shape)
    if labels > 1:
        warped = np.concatenate([1 - warped.sum(-1, keepdims=True), warped], axis=-1)
    clear = ~_ties(warped, labels == 1)
    assert clear.mean() > 0.99 and host_mask.max() == labels
    np.testing.assert_array_equal(dev_mask[..., 0][clear], host_mask[clear])


def _batch(shape, seed=0):
    """A smooth image batch [B, *spatial, 2] and its mask (image > 0.5)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, np.pi, s) for s in shape[1:]], indexing="ij")
    phase = rng.random((shape[0],) + (1,) * len(grids))
    grey = 0.5 + 0.5 * np.sin(sum(g * (i + 1) for i, g in enumerate(grids)) + 6 * phase)
    image = np.stack([grey, 1 - grey], axis=-1).astype(np.float32)
    return image, (image[..., :1] > 0.5).astype(np.float32)


@pytest.mark.parametrize("spatial, opts", [
    ((32, 32), dataclasses.replace(OFF, flip_prob=0.5, rotate_prob=1, scale_prob=1, max_scale=0.2)),
    ((16, 16, 8), dataclasses.replace(OFF, flip_prob=0.5, rotate_prob=1, scale_prob=1, flip_axes=(0, 1, 2))),
    ((16, 16, 8), dataclasses.replace(OFF, rotate_prob=1, scale_prob=1, rotate_3d=True)),
], ids=["2d", "3d_in_plane", "3d_full"])
def test_image_and_mask_stay_aligned(spatial, opts):
    image, mask = _batch((4,) + spatial)
    key = jax.random.PRNGKey(0)
    out, target = augment_batch(key, image, image[..., :1], opts, continuous=True)
    np.testing.assert_allclose(target, out[..., :1], atol=1e-6)  # a target equal to the image stays so
    assert not np.allclose(out, image)
    # With the mask as an image channel: the image's threshold is the mask, to the pixel.
    out, labels = augment_batch(key, np.concatenate([mask, image], -1), mask, opts)
    np.testing.assert_array_equal(labels, (out[..., :1] >= 0.5).astype(np.float32))
    agree = (labels == (out[..., 1:2] > 0.5)).mean()  # and the image's own threshold, but for edge pixels
    assert agree > 0.9 and not np.array_equal(labels, mask)


# ---- intensity

def _host_draws(rng, opts, channels, pixels):
    """What `augment_intensity` draws with probabilities 1 (or 0), in its order,
    as the device's draws."""
    draws = []
    if opts.noise_prob:
        rng.random()
        sigma = rng.uniform(0.0, opts.noise_std, size=channels).astype(np.float32)
        draws.append(("noise", rng.standard_normal((channels, pixels), dtype=np.float32) * sigma[:, None]))
    if opts.brightness_prob:
        rng.random()
        draws.append(("brightness", rng.uniform(*opts.brightness_range, size=channels)))
    if opts.contrast_prob:
        rng.random()
        draws.append(("contrast", augment._nnunet_factor(rng, opts.contrast_range, channels)))
    if opts.gamma_prob:
        rng.random()
        draws.append(("gamma", augment._nnunet_factor(rng, opts.gamma_range, channels)))
    return [(name, jnp.bool_(True), jnp.asarray(v, jnp.float32)) for name, v in draws]


@pytest.mark.parametrize("on", [("noise", "brightness", "contrast", "gamma"), ("contrast",), ("gamma",)])
def test_intensity_equals_the_host_arithmetic_for_the_same_draws(on):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(12, 10, 4, 3)).astype(np.float32)
    image[..., 2] = 0.25  # gamma leaves a constant channel alone
    opts = dataclasses.replace(OFF, **{f"{name}_prob": 1.0 for name in on})
    host = augment.augment_intensity(image, np.random.default_rng(7), opts)
    draws = _host_draws(np.random.default_rng(7), opts, 3, image[..., 0].size)
    device = np.asarray(augment_device._apply_intensity(jnp.asarray(image), draws))
    np.testing.assert_allclose(device, host, atol=2e-6)
    assert not np.allclose(device[..., :2], image[..., :2])


def test_intensity_transforms_follow_their_probabilities_and_ranges():
    image = np.stack([np.linspace(0.2, 1.0, 64).reshape(8, 8)] * 2, axis=-1).astype(np.float32)
    batch = np.broadcast_to(image, (400,) + image.shape)
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    run = jax.jit(jax.vmap(augment_device.intensity, in_axes=(0, 0, None)), static_argnums=2)
    out = np.asarray(run(batch, keys, dataclasses.replace(OFF, brightness_prob=0.3)))
    factors = out[:, 0, 0] / image[0, 0]  # [N, C]: one factor per channel
    np.testing.assert_allclose(out, batch * factors[:, None, None, :], rtol=1e-5)
    changed = (factors != 1).any(-1)
    np.testing.assert_array_equal(out[~changed], batch[~changed])
    assert abs(changed.mean() - 0.3) < 0.07 and (factors[changed, 0] != factors[changed, 1]).all()
    assert ((factors[changed] >= 0.75) & (factors[changed] <= 1.25)).all()
    noisy = np.asarray(run(np.full((400, 16, 16, 2), 3.0, np.float32), keys, dataclasses.replace(OFF, noise_prob=1.0)))
    stds = noisy.std((1, 2))  # sigma uniform in [0, noise_std], per channel
    assert stds.max() <= 0.1 * 1.25 and abs(stds.mean() - 0.05) < 0.01 and abs(noisy.mean() - 3) < 1e-3
    gamma = np.asarray(run(batch, keys, dataclasses.replace(OFF, gamma_prob=1.0)))
    np.testing.assert_allclose(gamma.min((1, 2)), batch.min((1, 2)), atol=1e-6)  # min and max stay
    np.testing.assert_allclose(gamma.max((1, 2)), batch.max((1, 2)), atol=1e-6)
    middle = (gamma[:, 4, 4, 0] - 0.2) / 0.8  # u ** g at u = (x - min) / span
    u = (image[4, 4, 0] - 0.2) / 0.8
    g = np.log(middle) / np.log(u)
    assert 0.7 - 1e-3 <= g.min() and g.max() <= 1.5 + 1e-3
    assert abs((g < 1).mean() - 0.5) < 0.1  # nnU-Net's draw: half below 1, half above


# ---- distribution

def test_affine_draws_stay_in_range_and_follow_the_probabilities():
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    opts = dataclasses.replace(OFF, rotate_prob=0.5, scale_prob=0.25, max_rotate_deg=15.0, max_scale=0.05)
    matrices, drawn = sample_affine(keys, opts, 2)
    matrices, drawn = np.asarray(matrices), np.asarray(drawn)
    angle = np.degrees(np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0]))
    zoom = 1 / np.sqrt(np.linalg.det(matrices))
    rotated, scaled = np.abs(angle) > 1e-4, np.abs(zoom - 1) > 1e-5
    assert abs(rotated.mean() - 0.5) < 0.04 and abs(scaled.mean() - 0.25) < 0.04
    np.testing.assert_array_equal(matrices[~drawn], np.broadcast_to(np.eye(2), matrices[~drawn].shape))
    assert (drawn >= (rotated | scaled)).all() and abs(drawn.mean() - (1 - 0.5 * 0.75)) < 0.04
    assert np.abs(angle).max() <= 15 + 1e-4 and np.abs(zoom - 1).max() <= 0.05 + 1e-6
    counts, _ = np.histogram(angle[rotated], bins=6, range=(-15, 15))  # uniform: about equal bins
    assert counts.min() > 0.75 * counts.mean()
    counts, _ = np.histogram(zoom[scaled], bins=4, range=(0.95, 1.05))
    assert counts.min() > 0.7 * counts.mean()
    # 3-D: in-plane 2x2 unless rotate_3d, then three angles and one zoom.
    assert augment_device.sample_affine(keys[0], opts, 3)[0].shape == (2, 2)
    full = dataclasses.replace(opts, rotate_prob=1, scale_prob=1, rotate_3d=True)
    m3 = np.asarray(sample_affine(keys[:500], full, 3)[0])
    zoom3 = np.linalg.det(m3) ** (-1 / 3)
    assert np.abs(zoom3 - 1).max() <= 0.05 + 1e-5
    rotation = m3 * zoom3[:, None, None]
    np.testing.assert_allclose(rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), m3.shape),
                               atol=1e-5)
    # R0(a) @ R1(b) @ R2(c) as the host builds it: each angle back out of it, within range and spread over it.
    r = rotation
    angles = np.degrees([np.arctan2(-r[:, 1, 2], r[:, 2, 2]), -np.arcsin(r[:, 0, 2]),
                         np.arctan2(-r[:, 0, 1], r[:, 0, 0])])
    assert np.abs(angles).max() <= 15 + 1e-3 and (np.abs(angles).max(1) > 14).all()
    assert (np.abs(angles.mean(1)) < 1.5).all()


def test_flips_follow_flip_prob_per_axis_and_examples_differ():
    image = np.broadcast_to(np.arange(16 * 3, dtype=np.float32).reshape(4, 4, 3), (800, 4, 4, 3))
    mask = np.broadcast_to((np.arange(16) % 3 == 0).astype(np.float32).reshape(4, 4, 1), (800, 4, 4, 1))
    opts = dataclasses.replace(OFF, flip_prob=0.3, flip_axes=(0, 1))
    out, labels = augment_batch(jax.random.PRNGKey(2), image, mask, opts)
    out, labels = np.asarray(out), np.asarray(labels)
    flipped = [np.array([np.array_equal(o, np.flip(image[0], axis)) for o in out]) for axis in (0, 1)]
    both = np.array([np.array_equal(o, image[0, ::-1, ::-1]) for o in out])
    for axis in (0, 1):
        share = (flipped[axis] | both).mean()
        assert abs(share - 0.3) < 0.06
    assert abs(both.mean() - 0.09) < 0.04  # independent per axis
    for o, m in zip(out, labels):  # the mask went with its image
        np.testing.assert_array_equal(m[..., 0], (o[..., 0] // 3 % 3 == 0).astype(np.float32))


# Every transform, lesions included, each example drawing its own; shared by the tests below (one compilation).
LESIONS = PathologyOptions(prob=0.5, shapes=("disc", "ellipse"), min_lung_pixels=10)
run_all = functools.partial(augment_batch, opts=ALL, pathology=LESIONS)


def test_no_probabilities_give_the_input_back_and_keys_decide():
    image, mask = _batch((8, 32, 32))
    none = AugmentOptions(flip_prob=0, rotate_prob=0, scale_prob=0)
    out, labels = augment_batch(jax.random.PRNGKey(0), image, mask, none)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(labels, mask)
    same, same_mask = np.repeat(image[:1], 8, axis=0), np.repeat(mask[:1], 8, axis=0)
    a, b, c = (np.asarray(run_all(jax.random.PRNGKey(k), same, same_mask)[0]) for k in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({x.tobytes() for x in a}) == 8  # every example its own transform
    # Probabilities above 0: an example that draws nothing is left exactly as it was.
    sparse = dataclasses.replace(ALL, flip_prob=0.05, rotate_prob=0.05, scale_prob=0.05, noise_prob=0.05,
                                 brightness_prob=0.05, contrast_prob=0.05, gamma_prob=0.05)
    out = np.asarray(augment_batch(jax.random.PRNGKey(0), np.repeat(image, 4, axis=0), np.repeat(mask, 4, axis=0),
                                   sparse)[0])
    assert any(np.array_equal(x, y) for x, y in zip(out, np.repeat(image, 4, axis=0)))


def test_a_sharded_batch_gives_what_one_device_gives():
    devices = jax.devices()
    assert len(devices) == 4, "conftest simulates four CPU devices"
    sharded = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    image, mask = _batch((8, 32, 32), seed=1)
    key = jax.random.PRNGKey(4)
    many = run_all(key, jax.device_put(image, sharded), jax.device_put(mask, sharded))
    one = run_all(key, image, mask)
    assert many[0].sharding.spec == PartitionSpec("data")
    for a, b in zip(many, one):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(one[0]), image)


# ---- pathology

SIZE = 64


def _chest():
    """Air 0, a body of 0.7, two lungs of 0.1 labelled 1; returns the image
    [64, 64, 2], mask [64, 64] and the lungs' boxes (first/last row, column)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    def ellipse(cy, cx, ry, rx):
        return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    image = np.where(ellipse(32, 32, 30, 31), 0.7, 0.0)
    lungs = [ellipse(32, 18, 17, 8), ellipse(30, 45, 16, 9)]
    mask = np.zeros((SIZE, SIZE), np.float32)
    boxes = []
    for lung in lungs:
        image[lung], mask[lung] = 0.1, 1.0
        ys, xs = np.nonzero(lung)
        boxes.append([[ys.min(), ys.max()], [xs.min(), xs.max()]])
    return np.stack([image, image * 0.5], -1).astype(np.float32), mask, np.array(boxes)


def test_lung_boxes_are_the_two_sides_along_either_axis():
    _, mask, boxes = _chest()
    found, ok = augment_device.lung_boxes(jnp.asarray(mask), 50)
    assert bool(ok)
    np.testing.assert_array_equal(found, boxes)
    host = pathology.lung_boxes(mask, 50)
    np.testing.assert_array_equal(found[:, :, 0], [[b.start for b in box] for box in host])
    found, ok = augment_device.lung_boxes(jnp.asarray(mask.T), 50)  # a volume's axial slice: x first
    np.testing.assert_array_equal(found, boxes[:, ::-1])
    speck = mask.copy()
    speck[60:62, 60:62] = 1  # a third component joins the nearer side's box (the host drops it)
    found, ok = augment_device.lung_boxes(jnp.asarray(speck), 50)
    assert bool(ok) and found[0].tolist() == boxes[0].tolist() and found[1].tolist() == [[14, 61], [36, 61]]
    assert not augment_device.lung_boxes(jnp.asarray(mask), int(mask.sum()) // 2 + 1)[1]  # too small
    one = mask * (np.arange(SIZE) < 30)[None, :]
    assert not augment_device.lung_boxes(jnp.asarray(one), 50)[1]  # one lung
    touching = mask.copy()
    touching[30:33, 20:45] = 1
    assert not augment_device.lung_boxes(jnp.asarray(touching), 50)[1]  # one component, as the host finds
    assert pathology.lung_boxes(touching, 50) is None


def test_tissue_value_matches_the_host_estimate():
    image, mask, _ = _chest()
    image = image + np.random.default_rng(0).normal(0, 0.05, image.shape).astype(np.float32)
    device = augment_device.estimate_tissue_value(jnp.asarray(image), jnp.asarray(mask > 0))
    host = [pathology.estimate_tissue_value(image[..., c], mask) for c in range(2)]
    np.testing.assert_allclose(device, host, atol=1e-5)


def test_lesions_brighten_only_the_lung_boxes_and_leave_the_mask():
    image, mask, boxes = _chest()
    opts = PathologyOptions(prob=1.0, min_count=2, max_count=5, shapes=("disc", "ellipse"))
    inside = np.zeros((SIZE, SIZE), bool)
    for (r0, r1), (c0, c1) in boxes:
        inside[r0:r1 + 1, c0:c1 + 1] = True
    run = jax.jit(jax.vmap(lambda k, x, m: augment_device.simulate_pathology(k, x, m, opts), in_axes=(0, None, None)))
    outs, counts = run(jax.random.split(jax.random.PRNGKey(0), 32), image, mask[..., None])
    outs, counts = np.asarray(outs), np.asarray(counts)
    assert set(counts) == {2, 3, 4, 5}
    changed = np.abs(outs - image).max(-1) > 0
    assert not changed[:, ~inside].any() and changed.any((1, 2)).all()
    assert (outs >= image - 1e-6).all() and (outs <= 0.7 + 1e-6).all()  # lung 0.1 towards tissue 0.7, never past
    lungs = mask > 0
    assert (outs[:, lungs] > image[lungs] + 0.05).any((1, 2)).all()  # every example brightened its lungs
    batch_opts = dataclasses.replace(OFF)
    out, labels = augment_batch(jax.random.PRNGKey(1), np.stack([image] * 2),
                                               np.stack([mask[..., None]] * 2), batch_opts, pathology=opts)
    np.testing.assert_array_equal(labels, np.stack([mask[..., None]] * 2))
    assert not np.array_equal(out, np.stack([image] * 2))
    out, _ = augment_batch(jax.random.PRNGKey(1), np.stack([image] * 2),
                                          np.stack([mask[..., None]] * 2), batch_opts,
                                          pathology=dataclasses.replace(opts, prob=0.0))
    np.testing.assert_array_equal(out, np.stack([image] * 2))


def test_one_lesion_blends_by_its_opacity_towards_tissue_value_in_every_slice_of_a_volume():
    image, mask, _ = _chest()
    opts = PathologyOptions(prob=1.0, min_count=1, max_count=1, min_opacity=0.5, max_opacity=0.5, tissue_value=1.0,
                            min_radius=0.1, max_radius=0.1)
    volume = np.stack([image] * 3, axis=2)  # [64, 64, 3, 2], each slice its own lesion
    out, count = simulate_pathology(jax.random.PRNGKey(3), volume, np.stack([mask] * 3, 2)[..., None],
                                                   opts)
    out = np.asarray(out)
    assert int(count) == 3
    for d in range(3):
        change = (out[:, :, d] - volume[:, :, d]) / (1.0 - volume[:, :, d])  # weight = opacity * footprint
        assert abs(change.max() - 0.5) < 1e-5 and (change >= -1e-6).all()
    assert not np.array_equal(out[:, :, 0], out[:, :, 1])
    with pytest.raises(ValueError, match="blob"):
        augment_device.simulate_pathology(jax.random.PRNGKey(0), image, mask[..., None],
                                          PathologyOptions(shapes=("disc", "blob")))
