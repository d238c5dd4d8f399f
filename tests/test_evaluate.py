"""evaluate: volume records cut back into slices for the per-patient tables; the
slices the figures show."""

import numpy as np

from unet_jax import evaluate, report


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
