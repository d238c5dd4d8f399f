"""Metrics: empty-mask conventions, dataset vs per-image scores, masking and
merging of clu collections, largest component, per-patient volumes, and
surface and lesion metrics against brute-force references."""


import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from unet_jax import metrics, tasks

POS, NEG = 5.0, -5.0  # logits of a confident positive / negative pixel
compute_metrics = jax.jit(tasks.Segmentation().batch_metrics)


def _logits(pred):
    return np.where(pred, POS, NEG).astype(np.float32)


def test_overlap_stats_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 6, 6, 1)).astype(np.float32)
    targets = (rng.random((5, 6, 6, 1)) > 0.6).astype(np.float32)
    stats = jax.jit(metrics.overlap_stats)(logits, targets)
    p, t = logits[..., 0] > 0, targets[..., 0] > 0.5
    inter = (p & t).sum((1, 2)).astype(np.float64)
    ps, ts = p.sum((1, 2)), t.sum((1, 2))
    np.testing.assert_array_equal(stats["intersection"], inter)
    np.testing.assert_array_equal(stats["pred_sum"], ps)
    np.testing.assert_array_equal(stats["target_sum"], ts)
    np.testing.assert_allclose(stats["dice"], 2 * inter / (ps + ts), rtol=1e-6)
    np.testing.assert_allclose(stats["iou"], (inter + 1e-6) / (ps + ts - inter + 1e-6), rtol=1e-6)
    assert all(v.dtype == jnp.float32 and v.shape == (5,) for v in stats.values())


def test_overlap_stats_empty_mask_conventions():
    target = np.zeros((3, 4, 4, 1), np.float32)
    target[2, 1:3, 1:3] = 1.0
    pred = np.zeros((3, 4, 4, 1), bool)
    pred[1, 0, 0] = True   # empty mask, non-empty prediction
    pred[2] = target[2] > 0  # perfect prediction
    stats = jax.jit(metrics.overlap_stats)(_logits(pred), target)
    np.testing.assert_allclose(stats["dice"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(stats["iou"], [1.0, 0.0, 1.0], atol=1e-5)
    assert 0 < stats["iou"][1] < 1e-5


def test_overlap_stats_threshold_and_3d():
    logits = np.array([-1.0, 0.5, 1.5, 3.0], np.float32).reshape(1, 2, 2, 1, 1)
    target = np.ones_like(logits)
    assert metrics.overlap_stats(logits, target)["pred_sum"][0] == 3
    assert metrics.overlap_stats(logits, target, threshold=0.9)["pred_sum"][0] == 1  # logit 2.2


def _crafted_batch():
    """Example 0: 8 pixels, predicted exactly. Example 1: 2 pixels, both missed and
    2 false positives. Example 2: padding, every pixel wrong."""
    target = np.zeros((3, 4, 4, 1), np.float32)
    pred = np.zeros((3, 4, 4, 1), bool)
    target[0, :2] = 1.0
    pred[0, :2] = True
    target[1, 0, :2] = 1.0
    pred[1, 3, :2] = True
    pred[2] = True
    return _logits(pred), target, np.array([True, True, False])


def test_dataset_level_and_per_image_scores_differ_as_computed_by_hand():
    logits, target, valid = _crafted_batch()
    result = compute_metrics(logits, target, valid, jnp.float32(0.25)).compute()
    np.testing.assert_allclose(result["dice"], 2 * 8 / (10 + 10), rtol=1e-6)  # 0.8
    np.testing.assert_allclose(result["iou"], 8 / (20 - 8), rtol=1e-6)  # 2/3
    np.testing.assert_allclose(result["dice_per_image"], (1.0 + 0.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(result["iou_per_image"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(result["loss"], 0.25)


def test_mask_excludes_padding():
    logits, target, valid = _crafted_batch()
    masked = compute_metrics(logits, target, valid, 0.0).compute()
    dropped = compute_metrics(logits[:2], target[:2], valid[:2], 0.0).compute()
    unmasked = compute_metrics(logits, target, np.ones(3, bool), 0.0).compute()
    for key in masked:
        np.testing.assert_allclose(masked[key], dropped[key], rtol=1e-6)
    assert unmasked["dice"] < masked["dice"] - 0.1


def test_empty_everything_scores_one():
    zeros = np.zeros((2, 4, 4, 1), np.float32)
    result = compute_metrics(_logits(zeros > 0), zeros, np.ones(2, bool), 0.0).compute()
    np.testing.assert_allclose([result[k] for k in ("dice", "iou")], [1.0, 1.0])
    empty = metrics.SegmentationMetrics.empty().compute()
    np.testing.assert_allclose([empty[k] for k in ("dice", "iou")], [1.0, 1.0])


def test_merging_batches_equals_one_batch_under_jit():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(7, 6, 6, 1)).astype(np.float32)
    target = (rng.random((7, 6, 6, 1)) > 0.5).astype(np.float32)
    target[2] = 0.0
    valid = np.array([True] * 6 + [False])
    merged = (metrics.SegmentationMetrics.empty()
              .merge(compute_metrics(logits[:3], target[:3], valid[:3], 0.2))
              .merge(compute_metrics(logits[3:], target[3:], valid[3:], 0.4))
              # A batch of padding only changes nothing, the loss included.
              .merge(compute_metrics(logits[3:], target[3:], np.zeros(4, bool), 9.0))).compute()
    whole = compute_metrics(logits, target, valid, 0.3).compute()
    assert set(merged) == {"loss", "dice", "iou", "dice_per_image", "iou_per_image"}
    for key in ("dice", "iou", "dice_per_image", "iou_per_image"):
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-6)
    np.testing.assert_allclose(merged["loss"], 0.3, rtol=1e-6)


def test_loss_is_weighted_by_the_valid_examples_of_each_batch():
    """A padded last batch of one valid example weighs one example, not a full batch."""
    logits, target = np.zeros((4, 2, 2, 1), np.float32), np.zeros((4, 2, 2, 1), np.float32)
    full = compute_metrics(logits, target, np.ones(4, bool), 0.2)
    last = compute_metrics(logits, target, np.array([True, False, False, False]), 0.8)
    np.testing.assert_allclose(full.merge(last).compute()["loss"], (4 * 0.2 + 0.8) / 5, rtol=1e-6)


def test_largest_component_uses_full_3d_connectivity():
    volume = np.zeros((10, 10, 10), bool)
    volume[0:2, 0:2, 0:2] = True  # 8 voxels
    volume[2:4, 2:4, 2:4] = True  # 8 voxels touching the first at one corner only
    volume[6:8, 6:8, 6:9] = True  # 12 voxels, apart
    expected = np.zeros_like(volume)
    expected[0:4, 0:4, 0:4] = volume[0:4, 0:4, 0:4]
    np.testing.assert_array_equal(metrics.largest_connected_component(volume), expected)


def test_largest_component_2d_ties_and_empty():
    image = np.zeros((6, 6), bool)
    image[0, 0] = image[1, 1] = True  # diagonal neighbours: one component of 2
    image[4, 4:6] = True  # another component of 2, labelled later
    np.testing.assert_array_equal(metrics.largest_connected_component(image),
                                  np.eye(6, dtype=bool) & (np.arange(6) < 2)[:, None])
    empty = metrics.largest_connected_component(np.zeros((3, 3, 3), bool))
    assert empty.dtype == bool and not empty.any()


def test_dice_score():
    assert metrics.dice_score(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert metrics.dice_score(np.eye(2), np.zeros((2, 2))) == 0.0
    assert metrics.dice_score(np.eye(2), np.ones((2, 2))) == pytest.approx(2 * 2 / 6)


def _patients():
    """Four patients of 8x8 slices with non-contiguous slice numbers: a shifted blob
    with a stray false positive, a perfect prediction, empty on empty, and false
    positives on an empty mask."""
    numbers = np.array([2, 3, 10, 11, 12])
    shape = (len(numbers), 8, 8)
    target0 = np.zeros(shape, bool)
    target0[1:4, 2:5, 2:5] = True
    pred0_lcc = np.zeros(shape, bool)
    pred0_lcc[1:4, 2:5, 3:6] = True
    pred0 = pred0_lcc.copy()
    pred0[4, 0, 7] = True
    target1 = np.zeros(shape, bool)
    target1[2:, 4:7, 1:3] = True
    pred3 = np.zeros(shape, bool)
    pred3[0, 0, 0] = True
    empty = np.zeros(shape, bool)
    return numbers, {0: (pred0, target0, pred0_lcc), 1: (target1, target1, target1),
                     2: (empty, empty, empty), 3: (pred3, empty, pred3)}


def _ref_dice(pred, target):
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else 2.0 * (pred & target).sum() / total


def _fill(accumulator, numbers, patients, batch_size=4, seed=0):
    rows = [(p, i) for p in patients for i in range(len(numbers))]
    rows = [rows[k] for k in np.random.default_rng(seed).permutation(len(rows))]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        pad = batch_size - len(chunk)
        pred = np.stack([patients[p][0][i] for p, i in chunk] + [np.ones((8, 8), bool)] * pad)
        target = np.stack([patients[p][1][i] for p, i in chunk] + [np.zeros((8, 8))] * pad)
        accumulator.add(pred, target.astype(np.float32),
                        np.array([p for p, _ in chunk] + [-1] * pad, np.int32),
                        np.array([numbers[i] for _, i in chunk] + [-1] * pad, np.int32),
                        np.array([True] * len(chunk) + [False] * pad))


def test_volume_accumulator_reassembles_volumes_in_slice_order():
    numbers, patients = _patients()
    accumulator = metrics.VolumeAccumulator()
    _fill(accumulator, numbers, patients)
    volumes = accumulator.volumes()
    assert sorted(volumes) == [0, 1, 2, 3]
    for p, (pred, target, slices) in volumes.items():
        np.testing.assert_array_equal(slices, numbers)
        np.testing.assert_array_equal(pred, patients[p][0])
        np.testing.assert_array_equal(target, patients[p][1])


def test_volume_accumulator_per_patient_dice_with_and_without_lcc():
    numbers, patients = _patients()
    accumulator = metrics.VolumeAccumulator()
    _fill(accumulator, numbers, patients)
    names = ["TCGA_A", "TCGA_B", "TCGA_C", "TCGA_D"]
    table = metrics.segmentation_table(accumulator.volumes(), names=names)
    assert [row["patient"] for row in table] == names
    for row in table:
        pred, target, pred_lcc = patients[row["patient_index"]]
        assert row["num_slices"] == len(numbers)
        assert row["tumor_voxels"] == target.sum() and row["pred_voxels"] == pred.sum()
        assert row["dice_3d"] == pytest.approx(_ref_dice(pred, target))
        assert row["dice_3d_lcc"] == pytest.approx(_ref_dice(pred_lcc, target))
    by_patient = {row["patient_index"]: row for row in table}
    assert by_patient[0]["dice_3d"] < by_patient[0]["dice_3d_lcc"] < 1.0
    assert by_patient[2]["dice_3d"] == by_patient[2]["dice_3d_lcc"] == 1.0
    assert by_patient[3]["dice_3d"] == 0.0
    summary = metrics.mean_over_patients(table, ("dice_3d", "dice_3d_lcc"))
    assert summary["dice_3d"] == pytest.approx(np.mean([r["dice_3d"] for r in table]))
    assert summary["dice_3d_lcc"] == pytest.approx(
        np.mean([_ref_dice(lcc, t) for _, t, lcc in patients.values()]))
    assert metrics.segmentation_table(accumulator.volumes())[1]["patient"] == "1"


def test_volume_accumulator_rejects_duplicate_slices():
    accumulator = metrics.VolumeAccumulator()
    batch = np.zeros((2, 4, 4), bool)
    accumulator.add(batch, batch, np.array([0, 0]), np.array([5, 5]), np.array([True, True]))
    with pytest.raises(ValueError, match="slice number more than once"):
        accumulator.volumes()


def test_overlap_stats_softmax_micro_averages_foreground_classes():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(4, 6, 6, 1)).astype(np.float32)
    stats = jax.jit(metrics.overlap_stats)(logits, labels)
    pred, target = logits.argmax(-1), labels[..., 0]
    inter = sum(((pred == k) & (target == k)).sum((1, 2)) for k in (1, 2))
    ps, ts = (pred > 0).sum((1, 2)), (target > 0).sum((1, 2))
    np.testing.assert_array_equal(stats["intersection"], inter)
    np.testing.assert_array_equal(stats["pred_sum"], ps)
    np.testing.assert_array_equal(stats["target_sum"], ts)
    np.testing.assert_allclose(stats["dice"], 2 * inter / (ps + ts), rtol=1e-6)
    np.testing.assert_array_equal(metrics.predict_labels(logits), pred)


def test_predict_by_task():
    logits = np.array([[[-1.0], [2.0]]], np.float32)  # [1, 2, 1]
    np.testing.assert_array_equal(tasks.Segmentation().predict(logits), [[0, 1]])
    assert tasks.Segmentation().predict(logits).dtype == jnp.uint8
    np.testing.assert_array_equal(tasks.Regression().predict(logits), logits)
    with pytest.raises(ValueError, match="300 output classes do not fit uint8 labels"):
        metrics.predict_labels(np.zeros((1, 2, 300), np.float32))


def test_regression_metrics_match_numpy_with_padding():
    rng = np.random.default_rng(4)
    outputs = rng.normal(0.4, 0.3, size=(4, 5, 5, 1)).astype(np.float32)
    targets = rng.random((4, 5, 5, 1)).astype(np.float32)
    valid = np.array([True, True, True, False])
    result = jax.jit(tasks.Regression().batch_metrics)(outputs, targets, valid, jnp.float32(0.5)).compute()
    y, t = outputs[:3].astype(np.float64), targets[:3].astype(np.float64)
    yc = np.maximum(y, 0)
    assert set(result) == {"loss", "mae", "rmse", "soft_jaccard", "soft_jaccard_per_image"}
    np.testing.assert_allclose(result["mae"], np.abs(y - t).mean(), rtol=1e-5)
    np.testing.assert_allclose(result["rmse"], np.sqrt(np.square(y - t).mean()), rtol=1e-5)
    np.testing.assert_allclose(result["soft_jaccard"], np.minimum(yc, t).sum() / np.maximum(yc, t).sum(), rtol=1e-5)
    per_image = np.minimum(yc, t).sum((1, 2, 3)) / np.maximum(yc, t).sum((1, 2, 3))
    np.testing.assert_allclose(result["soft_jaccard_per_image"], per_image.mean(), rtol=1e-5)
    zeros = np.zeros((1, 3, 3, 1), np.float32)
    assert metrics.regression_stats(zeros, zeros)["jaccard"][0] == 1.0  # all zero on all zero
    assert tasks.Regression().metric_names()[:len(result)] == list(result)


def test_volume_accumulator_scores_each_foreground_class():
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, :2, :2] = 1
    target[1, 2:, 2:] = 2
    pred = target.copy()
    pred[1, 3, 3] = 1  # one voxel of class 2 called class 1
    accumulator = metrics.VolumeAccumulator()
    accumulator.add(pred, target, np.zeros(2, np.int32), np.array([0, 1]), np.ones(2, bool))
    (row,) = metrics.segmentation_table(accumulator.volumes(), num_classes=3)
    assert row["dice_3d_class1"] == pytest.approx(2 * 4 / (5 + 4))
    assert row["dice_3d_class2"] == pytest.approx(2 * 3 / (3 + 4))
    assert row["dice_3d"] == pytest.approx((row["dice_3d_class1"] + row["dice_3d_class2"]) / 2)
    assert row["tumor_voxels"] == 8 and row["pred_voxels"] == 8


def test_regression_table_matches_numpy_per_patient():
    rng = np.random.default_rng(5)
    accumulator = metrics.VolumeAccumulator()
    outputs = rng.normal(0.3, 0.4, (2, 3, 4, 4)).astype(np.float32)  # [patient, slice, H, W]
    targets = rng.random((2, 3, 4, 4)).astype(np.float32)
    for s in (2, 0, 1):  # slices arrive out of order, with display images
        accumulator.add(outputs[:, s], targets[:, s], np.array([0, 1]), np.array([s, s]), np.ones(2, bool),
                        image=np.full((2, 4, 4), s, np.float32))
    table = metrics.regression_table(accumulator.volumes(), names=["A", "B"])
    for p, row in enumerate(table):
        y, t = outputs[p].astype(np.float64), targets[p].astype(np.float64)
        assert row["patient"] == "AB"[p] and row["num_slices"] == 3
        assert row["mae_3d"] == pytest.approx(np.abs(y - t).mean())
        assert row["rmse_3d"] == pytest.approx(np.sqrt(np.square(y - t).mean()))
        assert row["soft_jaccard_3d"] == pytest.approx(np.minimum(np.maximum(y, 0), t).sum()
                                                       / np.maximum(np.maximum(y, 0), t).sum())
    np.testing.assert_array_equal(accumulator.images()[1][:, 0, 0], [0, 1, 2])  # slice order
    assert metrics.grey_level_jaccard(np.zeros(3), np.zeros(3)) == 1.0  # all zero on all zero


@pytest.mark.parametrize("shape", [(9, 9), (12, 17), (3, 8, 11), (2, 6, 9)])
def test_psnr_and_ssim_match_skimage(shape):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(sum(shape))
    target = rng.normal(0.5, 0.4, shape)
    output = target + rng.normal(0.0, 0.2, shape)
    data_range = target.max() - target.min()  # of the whole case, for every slice
    expected_psnr = skimage_metrics.peak_signal_noise_ratio(target, output, data_range=data_range)
    assert metrics.psnr(output, target) == pytest.approx(expected_psnr, rel=1e-6)
    window = 5 if 6 in shape else 7  # 6-pixel slices: the largest odd window that fits
    slices = np.reshape(target, (-1, *shape[-2:])), np.reshape(output, (-1, *shape[-2:]))
    expected_ssim = np.mean([skimage_metrics.structural_similarity(t, y, data_range=data_range, win_size=window,
                                                                   gaussian_weights=False) for t, y in zip(*slices)])
    assert metrics.mean_ssim(output, target) == pytest.approx(expected_ssim, rel=1e-6)


def test_regression_table_psnr_and_ssim_columns():
    rng = np.random.default_rng(6)
    target = rng.random((2, 8, 8)).astype(np.float16)
    output = (target + rng.normal(0, 0.1, target.shape)).astype(np.float16)
    volumes = {0: (output, target, np.arange(2)), 1: (target, target, np.arange(2))}
    noisy, perfect = metrics.regression_table(volumes)
    assert noisy["psnr_3d"] == pytest.approx(metrics.psnr(output, target))
    assert noisy["ssim_3d"] == pytest.approx(metrics.mean_ssim(output, target)) and noisy["ssim_3d"] < 1
    assert perfect["psnr_3d"] == float("inf") and perfect["ssim_3d"] == pytest.approx(1.0)
    assert {"psnr_3d", "ssim_3d"} <= set(tasks.Regression().case_metrics)
    assert tasks.Regression().best_mode("val_psnr_3d") == tasks.Regression().best_mode("val_ssim_3d") == "max"
    constant = np.ones((1, 8, 8))
    assert np.isnan(metrics.psnr(constant + 1, constant)) and np.isnan(metrics.mean_ssim(constant + 1, constant))
    assert np.isnan(metrics.mean_ssim(np.zeros((4, 2)), np.eye(4, 2)))  # under 3 pixels


SPACING = (0.5, 1.0, 3.0)


def _blob(shape, seed, level=0.6):
    """A smoothed-noise boolean mask of a few blobs."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 1.5, mode="constant")
    return noise > np.quantile(noise, level)


def _ref_surface(mask):
    """Foreground voxels with a background (or outside) face neighbour, by an explicit loop."""
    padded = np.pad(mask, 1)
    surface = np.zeros_like(mask)
    for index in np.argwhere(mask):
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = index + 1
                neighbour[axis] += step
                surface[tuple(index)] |= not padded[tuple(neighbour)]
    return surface


def _ref_surface_distances(pred, target, spacing):
    a = np.argwhere(_ref_surface(pred)) * np.asarray(spacing)
    b = np.argwhere(_ref_surface(target)) * np.asarray(spacing)
    pairwise = np.sqrt(np.square(a[:, None] - b[None]).sum(-1))
    return pairwise.min(1), pairwise.min(0)


def _masks():
    """Random blobby masks, some filling an array border, and a small pair far
    from every border of a larger mostly empty volume (cropped in the metrics)."""
    pairs = [(_blob((12, 10, 8), seed), _blob((12, 10, 8), seed + 10)) for seed in range(3)]
    pairs[0][0][:, :, 0] = True  # a whole border face
    small = np.zeros((2, 24, 20, 16), bool)
    small[0, 10:13, 8:11, 6:9] = True
    small[1, 11:15, 9:10, 7:12] = True
    return pairs + [tuple(small)]


def test_surface_distances_hd95_assd_match_brute_force():
    for pred, target in _masks():
        for spacing in (SPACING, None):
            ref_pred, ref_target = _ref_surface_distances(pred, target, spacing or (1.0, 1.0, 1.0))
            to_target, to_pred = metrics.surface_distances(pred, target, spacing)
            np.testing.assert_allclose(to_target, ref_pred, rtol=1e-12)
            np.testing.assert_allclose(to_pred, ref_target, rtol=1e-12)
            assert metrics.hd95(pred, target, spacing) == pytest.approx(
                max(np.percentile(ref_pred, 95), np.percentile(ref_target, 95)))
            assert metrics.assd(pred, target, spacing) == pytest.approx(np.concatenate([ref_pred, ref_target]).mean())
    assert _masks()[0][0][:, :, 0].all() and metrics.hd95(*_masks()[0]) > 0


def test_surface_distances_2d_uses_4_connected_surface_and_border():
    pred = np.zeros((7, 9), bool)
    pred[0:5, 0:5] = True  # touches two borders: those edges are surface
    target = _blob((7, 9), 4)
    to_target, to_pred = metrics.surface_distances(pred, target, (2.0, 0.5))
    ref_pred, ref_target = _ref_surface_distances(pred, target, (2.0, 0.5))
    np.testing.assert_allclose(to_target, ref_pred)
    np.testing.assert_allclose(to_pred, ref_target)
    assert len(to_target) == 5 * 5 - 3 * 3  # the square's ring, border sides included


def test_surface_metrics_empty_conventions():
    empty, blob = np.zeros((12, 10, 8), bool), _blob((12, 10, 8), 0)
    diagonal = np.sqrt((11 * 0.5) ** 2 + (9 * 1.0) ** 2 + (7 * 3.0) ** 2)
    for metric in (metrics.hd95, metrics.assd):
        assert metric(empty, empty, SPACING) == 0.0
        assert metric(empty, blob, SPACING) == pytest.approx(diagonal)
        assert metric(blob, empty, SPACING) == pytest.approx(diagonal)
        assert metric(blob, empty) == pytest.approx(np.sqrt(11 ** 2 + 9 ** 2 + 7 ** 2))
        assert metric(blob, blob, SPACING) == 0.0
    to_empty, from_empty = metrics.surface_distances(blob, empty, SPACING)
    assert len(to_empty) == _ref_surface(blob).sum() and np.isinf(to_empty).all() and from_empty.size == 0
    assert all(d.size == 0 for d in metrics.surface_distances(empty, empty))


def test_iou_score():
    empty, one = np.zeros((3, 4)), np.eye(3, 4)
    assert metrics.iou_score(empty, empty) == 1.0
    assert metrics.iou_score(one, empty) == metrics.iou_score(empty, one) == 0.0
    assert metrics.iou_score(one, np.ones((3, 4))) == pytest.approx(3 / 12)


def test_avd_hand_computed_and_empty_conventions():
    target = np.zeros((4, 5, 6), bool)
    target[1, :2, :4] = True  # 8 voxels
    more, fewer = target.copy(), target.copy()
    more[3, 0, :2] = True  # 10 voxels
    fewer[1, 0, :2] = False  # 6 voxels
    assert metrics.avd(more, target) == pytest.approx(25.0)
    assert metrics.avd(fewer, target) == pytest.approx(25.0)
    assert metrics.avd(target, target) == 0.0
    assert metrics.avd(np.zeros_like(target), target) == 100.0
    assert metrics.avd(np.zeros_like(target), np.zeros_like(target)) == 0.0
    assert np.isnan(metrics.avd(target, np.zeros_like(target)))


def test_lesion_detection_on_crafted_volume():
    target, pred = np.zeros((12, 10, 8), bool), np.zeros((12, 10, 8), bool)
    target[1:3, 1:3, 1:3] = True
    target[3:5, 3:5, 3:5] = True  # touches the first cube at one corner only: one lesion
    target[8:10, 1:3, 1:3] = True  # missed
    target[8:11, 6:9, 4:7] = True  # detected by two predicted components
    pred[3:5, 3:5, 3:5] = True
    pred[8, 6:9, 4] = True
    pred[10, 6:9, 6] = True
    pred[0:2, 7:9, 6:8] = True  # false positive
    assert ndimage.label(target)[1] == 4  # face connectivity would split the corner-touching lesion
    result = metrics.lesion_detection(pred, target)
    assert result["num_lesions"] == 3 and result["num_pred_lesions"] == 4
    assert result["lesion_recall"] == pytest.approx(2 / 3)
    assert result["lesion_precision"] == pytest.approx(3 / 4)
    assert result["lesion_f1"] == pytest.approx(12 / 17)


def test_lesion_detection_empty_conventions():
    empty, blob = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    blob[1, 1] = blob[2, 2] = True  # diagonal in 2-D: one 8-connected lesion
    both = metrics.lesion_detection(empty, empty)
    assert (both["lesion_recall"], both["lesion_precision"], both["lesion_f1"]) == (1.0, 1.0, 1.0)
    missed = metrics.lesion_detection(empty, blob)
    assert (missed["lesion_recall"], missed["lesion_precision"], missed["lesion_f1"]) == (0.0, 1.0, 0.0)
    assert missed["num_lesions"] == 1 and missed["num_pred_lesions"] == 0
    false = metrics.lesion_detection(blob, empty)
    assert (false["lesion_recall"], false["lesion_precision"], false["lesion_f1"]) == (1.0, 0.0, 0.0)


def test_case_scores_per_class_and_means():
    target, pred = np.zeros((12, 10, 8), np.uint8), np.zeros((12, 10, 8), np.uint8)
    target[_blob((12, 10, 8), 1)] = 1
    pred[_blob((12, 10, 8), 2, level=0.7)] = 1
    pred[0:2, 0:2, 0:2] = 2  # class 2 predicted but absent from the target
    scores = metrics.case_scores(pred, target, SPACING, num_classes=3)
    p1, t1 = pred == 1, target == 1
    expected1 = dict(dice_3d=metrics.dice_score(p1, t1), iou_3d=metrics.iou_score(p1, t1),
                     hd95=metrics.hd95(p1, t1, SPACING), assd=metrics.assd(p1, t1, SPACING),
                     avd=metrics.avd(p1, t1), **{k: metrics.lesion_detection(p1, t1)[k]
                                                  for k in ("lesion_recall", "lesion_f1")})
    diagonal = np.sqrt((11 * 0.5) ** 2 + 9 ** 2 + (7 * 3.0) ** 2)
    expected2 = dict(dice_3d=0.0, iou_3d=0.0, hd95=diagonal, assd=diagonal, avd=np.nan,
                     lesion_recall=1.0, lesion_f1=0.0)
    assert set(scores) == set(expected1) | {f"{k}_class{c}" for k in expected1 for c in (1, 2)}
    for key in expected1:
        assert scores[f"{key}_class1"] == pytest.approx(expected1[key])
        assert scores[f"{key}_class2"] == pytest.approx(expected2[key], nan_ok=True)
        if key != "avd":
            assert scores[key] == pytest.approx((expected1[key] + expected2[key]) / 2)
    assert scores["avd"] == pytest.approx(expected1["avd"])  # the undefined class is skipped
    assert 0 < scores["dice_3d"] < 1 and 0 < expected1["avd"]
    two = metrics.case_scores(pred == 1, target == 1)
    assert set(two) == set(expected1) and two["hd95"] == pytest.approx(metrics.hd95(p1, t1))


def test_case_scores_avd_undefined_everywhere_is_nan_without_warning():
    pred, target = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    pred[1, 1, 1] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = metrics.case_scores(pred, target)
    assert np.isnan(scores["avd"]) and scores["lesion_recall"] == 1.0 and scores["lesion_f1"] == 0.0


def test_segmentation_table_adds_case_scores_with_spacing():
    numbers, patients = _patients()
    accumulator = metrics.VolumeAccumulator()
    _fill(accumulator, numbers, patients)
    spacing = (3.0, 0.5, 0.5)  # [S, H, W]: slice thickness first
    table = metrics.segmentation_table(accumulator.volumes(), spacings={p: spacing for p in patients})
    voxels = metrics.segmentation_table(accumulator.volumes())
    keys = ("dice_3d", "iou_3d", "hd95", "assd", "avd", "lesion_recall", "lesion_f1")
    for row, row_voxels in zip(table, voxels):
        pred, target, _ = patients[row["patient_index"]]
        assert set(row) == {"patient_index", "patient", "num_slices", "tumor_voxels", "pred_voxels",
                            "dice_3d_lcc", *keys}
        assert row["dice_3d"] == _ref_dice(pred, target)
        assert row["hd95"] == pytest.approx(metrics.hd95(pred, target, spacing))
        assert row["assd"] == pytest.approx(metrics.assd(pred, target, spacing))
        assert row_voxels["hd95"] == pytest.approx(metrics.hd95(pred, target))
    assert table[0]["hd95"] != pytest.approx(voxels[0]["hd95"])
    assert table[3]["hd95"] == pytest.approx(np.sqrt(12.0 ** 2 + 3.5 ** 2 + 3.5 ** 2))  # false positives only
    assert np.isnan(table[3]["avd"])
    summary = metrics.mean_over_patients(table, keys)
    assert summary["avd"] == pytest.approx(np.mean([row["avd"] for row in table[:3]]))
    assert summary["hd95"] == pytest.approx(np.mean([row["hd95"] for row in table]))


def test_mean_over_patients_skips_nan():
    table = [dict(a=1.0, b=float("nan"), c=float("nan")), dict(a=3.0, b=2.0, c=float("nan"))]
    summary = metrics.mean_over_patients(table, ("a", "b", "c"))
    assert summary["a"] == 2.0 and summary["b"] == 2.0 and np.isnan(summary["c"])
    assert np.isnan(metrics.mean_over_patients([], ("a",))["a"])
