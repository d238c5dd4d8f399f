"""Simulated lung pathology (document 003) on a synthetic 96x96 chest slice."""

import dataclasses

import numpy as np
import pytest

from unet_jax.data.pathology import PathologyOptions, estimate_tissue_value, lung_boxes, simulate_pathology

SIZE = 96
BODY, LUNG = 0.7, 0.1


def _ellipse(cy, cx, ry, rx):
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


LEFT = _ellipse(48, 28, 26, 12)   # lungs as the image shows them: left of the image first
RIGHT = _ellipse(46, 68, 24, 13)


def _box(region):
    ys, xs = np.nonzero(region)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def chest(lungs=(LEFT, RIGHT), channels=1):
    """Air 0, a body of 0.7, lungs of 0.1; the mask labels the lungs 1 (and 2)."""
    image = np.where(_ellipse(48, 48, 44, 46), BODY, 0.0)
    mask = np.zeros((SIZE, SIZE), np.float32)
    for label, lung in enumerate(lungs, start=1):
        image[lung] = LUNG
        mask[lung] = label
    return np.repeat(image[..., None], channels, axis=-1).astype(np.float32), mask


def outside_boxes():
    keep = np.ones((SIZE, SIZE), bool)
    for region in (LEFT, RIGHT):
        keep[_box(region)] = False
    return keep


ALWAYS = PathologyOptions(prob=1.0)


def test_lung_boxes_are_the_two_largest_left_first():
    _, mask = chest()
    speck = np.zeros_like(mask)
    speck[2:5, 2:5] = 1  # a third, small component
    assert lung_boxes(np.maximum(mask, speck), min_pixels=50) == [_box(LEFT), _box(RIGHT)]
    assert lung_boxes(mask[..., None], min_pixels=50) == [_box(LEFT), _box(RIGHT)]
    assert lung_boxes(mask, min_pixels=int(RIGHT.sum()) + 1) is None  # the smaller lung is too small
    assert lung_boxes(LEFT.astype(np.float32), min_pixels=50) is None
    assert lung_boxes(np.zeros_like(mask), min_pixels=50) is None


@pytest.mark.parametrize("shape", ["disc", "ellipse", "blob"])
def test_lesions_stay_in_the_lung_boxes_and_move_towards_tissue(shape):
    image, mask = chest(channels=3)
    before, mask_before = image.copy(), mask.copy()
    opts = PathologyOptions(prob=1.0, shapes=(shape,), tissue_value=0.65)
    out, count = simulate_pathology(image, mask, np.random.default_rng(1), opts)
    assert out.dtype == np.float32 and out.shape == image.shape and out is not image
    assert 7 <= count <= 9
    np.testing.assert_array_equal(image, before)  # input untouched
    np.testing.assert_array_equal(mask, mask_before)  # the label stays lung
    keep = outside_boxes()
    np.testing.assert_array_equal(out[keep], image[keep])  # bit-identical outside the boxes
    changed = np.any(out != image, axis=-1)
    assert changed.any() and not changed[keep].any()
    assert np.all(np.abs(out - 0.65) <= np.abs(image - 0.65) + 1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])  # every channel, the same lesions
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_count_is_in_range_and_returned():
    image, mask = chest()
    counts = set()
    for seed in range(40):
        out, count = simulate_pathology(image, mask, np.random.default_rng(seed), ALWAYS)
        assert 7 <= count <= 9
        counts.add(count)
    assert counts == {7, 8, 9}
    opts = PathologyOptions(prob=1.0, min_count=3, max_count=3)
    assert simulate_pathology(image, mask, np.random.default_rng(0), opts)[1] == 3


def test_deterministic_for_a_seed_and_different_for_another():
    image, mask = chest()
    opts = PathologyOptions(prob=1.0, shapes=("disc", "ellipse", "blob"))
    a, na = simulate_pathology(image, mask, np.random.default_rng(7), opts)
    b, nb = simulate_pathology(image, mask, np.random.default_rng(7), opts)
    c, _ = simulate_pathology(image, mask, np.random.default_rng(8), opts)
    np.testing.assert_array_equal(a, b)
    assert na == nb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("lungs", [(LEFT,), ()])
def test_fewer_than_two_lungs_change_nothing(lungs):
    image, mask = chest(lungs)
    out, count = simulate_pathology(image, mask, np.random.default_rng(0), ALWAYS)
    assert count == 0
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_probability_zero_draws_only_the_coin_and_one_always_applies():
    image, mask = chest()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out, count = simulate_pathology(image, mask, rng, PathologyOptions(prob=0.0))
        assert count == 0
        np.testing.assert_array_equal(out, image)
        fresh = np.random.default_rng(seed)
        fresh.random()
        assert rng.random() == fresh.random()
        assert simulate_pathology(image, mask, np.random.default_rng(seed), ALWAYS)[1] > 0


def test_probability_applies_to_about_that_share():
    image, mask = chest()
    rng = np.random.default_rng(0)
    applied = sum(simulate_pathology(image, mask, rng, PathologyOptions(prob=0.5))[1] > 0 for _ in range(200))
    assert 70 < applied < 130


def test_opacity_of_a_lesion_interior():
    image, mask = chest()
    tissue = 0.6
    for seed in range(5):
        opts = PathologyOptions(prob=1.0, min_count=1, max_count=1, min_opacity=0.4, max_opacity=0.4,
                                min_radius=0.2, max_radius=0.2, tissue_value=tissue)
        out, count = simulate_pathology(image, mask, np.random.default_rng(seed), opts)
        assert count == 1
        old, new = image[..., 0].astype(np.float64), out[..., 0].astype(np.float64)
        far = np.abs(tissue - old) > 0.05  # lung (0.1) and air: where the blend shows
        fraction = (new - old)[far] / (tissue - old)[far]
        assert fraction.min() >= -1e-6 and fraction.max() <= 0.4 + 1e-5
        # The lesion's interior (its centre among it) is blended with exactly a = 0.4.
        interior = np.abs(fraction - 0.4) < 1e-5
        assert interior.sum() >= 9
        np.testing.assert_allclose(new[far][interior], 0.6 * old[far][interior] + 0.4 * tissue, atol=1e-6)


def test_soft_edges():
    image, mask = chest()
    opts = PathologyOptions(prob=1.0, min_count=1, max_count=1, min_opacity=1.0, max_opacity=1.0,
                            min_radius=0.2, max_radius=0.2, tissue_value=0.6)
    out, _ = simulate_pathology(image, mask, np.random.default_rng(3), opts)
    old, new = image[..., 0], out[..., 0]
    lung = mask > 0
    fraction = (new - old)[lung] / (0.6 - old)[lung]
    partial = (fraction > 0.02) & (fraction < 0.98)
    assert partial.sum() > 4  # edge pixels blended in part, not a jagged 0/1 outline


def test_blob_is_textured_and_irregular():
    image, mask = chest()
    opts = PathologyOptions(prob=1.0, min_count=1, max_count=1, min_opacity=1.0, max_opacity=1.0,
                            min_radius=0.25, max_radius=0.25, shapes=("blob",), tissue_value=0.6)
    out, _ = simulate_pathology(image, mask, np.random.default_rng(2), opts)
    lung = mask > 0
    fraction = ((out[..., 0] - image[..., 0])[lung] / (0.6 - image[..., 0])[lung])
    inside = fraction[fraction > 0.05]
    assert inside.std() > 0.05  # texture: not a uniform fill


def test_labelled_mask_and_trailing_axis():
    image, mask = chest()
    binary = (mask > 0).astype(np.float32)
    a, _ = simulate_pathology(image, mask[..., None], np.random.default_rng(4), ALWAYS)
    b, _ = simulate_pathology(image, binary, np.random.default_rng(4), ALWAYS)
    np.testing.assert_array_equal(a, b)


def test_volume_is_done_slice_by_slice_with_the_same_rng():
    slices = [chest(), chest((LEFT,)), chest()]
    volume = np.stack([s[0] for s in slices], axis=2)  # [H, W, D, C]
    masks = np.stack([s[1] for s in slices], axis=2)   # [H, W, D]
    out, total = simulate_pathology(volume, masks, np.random.default_rng(5), ALWAYS)
    rng = np.random.default_rng(5)
    expected = [simulate_pathology(i, m, rng, ALWAYS) for i, m in slices]
    np.testing.assert_array_equal(out, np.stack([e[0] for e in expected], axis=2))
    assert total == sum(e[1] for e in expected) and expected[1][1] == 0 and total >= 14


def test_estimate_tissue_value():
    image, mask = chest()
    assert estimate_tissue_value(image, mask) == pytest.approx(BODY, abs=0.02)
    assert estimate_tissue_value(image[..., 0], mask[..., None]) == pytest.approx(BODY, abs=0.02)
    # Bone (a few bright pixels) and 8-bit scaling do not move it.
    bony = image.copy()
    bony[10:14, 40:56] = 1.0
    assert estimate_tissue_value(bony, mask) == pytest.approx(BODY, abs=0.02)
    png = np.round(image * 255) / 255
    assert estimate_tissue_value(png, mask) == pytest.approx(BODY, abs=0.02)
    # Estimated when tissue_value is None: lesions move lungs towards the body's value.
    out, _ = simulate_pathology(image, mask, np.random.default_rng(0), ALWAYS)
    assert np.all(np.abs(out - BODY) <= np.abs(image - BODY) + 1e-6)
    assert out[mask > 0].mean() > LUNG + 0.01


@pytest.mark.parametrize("field, value", [
    ("prob", 1.5), ("prob", -0.1), ("min_count", -1), ("max_count", 2), ("min_count", 2.5),
    ("min_radius", 0.0), ("max_radius", 0.01), ("min_opacity", -0.1), ("max_opacity", 1.1),
    ("shapes", ("disc", "square")), ("shapes", ()), ("tissue_value", float("nan")), ("min_lung_pixels", 0),
])
def test_bad_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        PathologyOptions(**{field: value})


def test_options_are_hashable_with_lists():
    opts = PathologyOptions(shapes=["disc", "blob"])
    assert opts.shapes == ("disc", "blob")
    assert hash(opts) == hash(dataclasses.replace(opts))
    assert PathologyOptions(shapes="ellipse").shapes == ("ellipse",)
