"""The task objects: what each says predict writes for a case."""

import numpy as np

from unet_jax import tasks


def test_a_task_says_whether_its_predictions_are_labels_or_float_outputs():
    """`finalize` gives the task's output_dtype: class labels for segmentation,
    float outputs in the target's units (past float16's range too) for regression."""
    for out_channels, blend in ((1, np.full((2, 3, 1), 0.7, np.float32)), (3, np.eye(3, dtype=np.float32)[None])):
        segmentation = tasks.make_task("segmentation", out_channels)
        assert not segmentation.float_outputs and segmentation.output_dtype == np.uint8
        assert segmentation.finalize(blend).dtype == segmentation.output_dtype
    regression = tasks.make_task("regression")
    assert regression.float_outputs and regression.output_dtype == np.float32
    outputs = regression.finalize(np.array([[[70000.5]]], np.float32))
    assert outputs.dtype == regression.output_dtype and outputs.tolist() == [[70000.5]]
