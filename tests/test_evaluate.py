"""evaluate: volume records cut back into slices for the per-patient tables; the
slices the figures show; whole volumes by sliding window, scored in mm."""

import numpy as np
import pytest

from unet_jax import evaluate, metrics, parallel, report, run, tasks, train
from unet_jax.data import pipeline


def test_unstack_depth_cuts_volumes_into_numbered_slices_and_drops_padding():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, size=(2, 4, 5, 3))       # [B, H, W, D]
    output = rng.random((2, 4, 5, 3, 2))               # [B, H, W, D, C]
    slices = np.array([[1, 2, 3], [4, -1, -1]])
    out = evaluate.unstack_depth({"pred": pred, "output": output, "patient_index": np.array([7, 7]),
                                  "slice": np.array([1, 4]), "valid": np.array([True, True])}, slices)
    assert out["pred"].shape == (6, 4, 5) and out["output"].shape == (6, 4, 5, 2)
    np.testing.assert_array_equal(out["slice"], [1, 2, 3, 4, -1, -1])
    np.testing.assert_array_equal(out["valid"], [True, True, True, True, False, False])
    np.testing.assert_array_equal(out["patient_index"], [7] * 6)
    np.testing.assert_array_equal(out["pred"][4], pred[1, :, :, 1])
    np.testing.assert_array_equal(out["output"][2], output[0, :, :, 2])
    # A padding record stays invalid on every slice.
    padded = evaluate.unstack_depth({"pred": pred, "patient_index": np.array([7, -1]), "slice": np.array([1, -1]),
                                     "valid": np.array([True, False])}, np.array([[1, 2, 3], [-1, -1, -1]]))
    assert padded["valid"].tolist() == [True, True, True, False, False, False]


def test_slices_to_show_prefer_foreground_for_uint8_label_volumes():
    target = np.zeros((6, 4, 4), np.uint8)
    pred = np.zeros((6, 4, 4), np.uint8)
    target[4, :2] = 1       # 8 voxels
    pred[1, 0, 0] = 1       # 1 voxel
    target[2, :, :3] = 2    # 12 voxels of class 2
    assert report.slices_to_show(pred, target, 2) == [2, 4]
    assert report.slices_to_show(pred, target, 3) == [1, 2, 4]


def _volume_config(data_dir):
    from configs import default

    config = default.get_config()
    config.data.data_dir = data_dir
    config.data.normalization = "none"
    config.data.patch_size = (16, 16, 4)
    config.data.sliding_window.importance = "constant"
    config.model.features = 4
    config.model.depth = 2
    config.model.norm = "none"
    config.model.kernel_size = ((3, 3, 1), (3, 3, 3), (3, 3, 3))
    config.model.pool_strides = ((2, 2, 1), (2, 2, 2))
    config.batch_size = config.eval_batch_size = 8
    return config


@pytest.fixture(scope="module")
def volume_evaluator(lesion_volume_dir):
    config = _volume_config(lesion_volume_dir)
    mesh, task = parallel.make_mesh(), tasks.get_task(config)
    state = run.initial_state(config, run.build_model(config), mesh, (16, 16, 4, 2), 1)
    evaluator = evaluate.make_evaluator(config, task, train.compile_steps(config, task, mesh), mesh,
                                        lesion_volume_dir, "val")
    return evaluator, state, task


def test_sliding_window_equals_a_direct_forward_pass_where_one_window_covers_the_volume(volume_evaluator):
    evaluator, state, task = volume_evaluator
    assert isinstance(evaluator, evaluate.VolumeEvaluator)
    image = np.random.default_rng(0).normal(size=(16, 16, 4, 2)).astype(np.float32)
    pred, _ = evaluator.case(state, {"image": image})
    logits = state.apply_fn({"params": state.params}, image[None], train=False)
    blend = np.asarray(task.window_output(logits))[0]
    np.testing.assert_array_equal(pred, task.finalize(blend))
    assert pred.shape == (16, 16, 4) and pred.dtype == np.uint8


def test_volume_evaluator_scores_whole_volumes_in_mm(volume_evaluator, lesion_volume_dir):
    evaluator, state, task = volume_evaluator
    ev = evaluator(state)
    element = pipeline.decode(pipeline.split_source(lesion_volume_dir, "val")[0])
    x, y, z = element["image"].shape[:3]
    pred, target, numbers = ev.volumes[0]
    assert pred.shape == target.shape == (z, x, y)  # slices of the volume along its last axis
    np.testing.assert_array_equal(target, np.moveaxis(element["mask"][..., 0], -1, 0))
    np.testing.assert_array_equal(numbers, np.arange(z))
    assert ev.images[0].shape == (z, x, y)
    row = ev.patients[0]
    # Spacing (1, 1, 3) of the record, in the [Z, X, Y] order of the table's volumes.
    assert row["hd95"] == pytest.approx(metrics.hd95(pred > 0, target > 0, (3.0, 1.0, 1.0)))
    assert set(task.metric_names()) <= set(ev.metrics)
    assert np.isnan(ev.metrics["loss"]) and 0 <= ev.metrics["dice"] <= 1
    total = 2 * np.sum((pred > 0) & (target > 0)) / max(np.sum(pred > 0) + np.sum(target > 0), 1)
    assert ev.metrics["dice"] == pytest.approx(total if (pred.any() or target.any()) else 1.0, abs=1e-6)
