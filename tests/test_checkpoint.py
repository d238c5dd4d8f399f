"""The checkpoint manager keeps the best epoch by its metric, never a NaN one."""

import math

import grain
import numpy as np
import pytest

from unet_jax import checkpoint


@pytest.mark.parametrize("mode,values,best", [("min", [math.nan, 5.0, 7.0], 2), ("max", [0.2, math.nan, 0.1], 1)])
def test_a_nan_metric_is_never_the_best(tmp_path, mode, values, best):
    manager = checkpoint.make_manager(str(tmp_path / "ckpt"), best_metric="val_avd", best_mode=mode)
    data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
    for step, value in enumerate(values, start=1):
        checkpoint.save(manager, step, {"w": np.full(2, step, np.float32)}, data_iter, [], {"val_avd": value})
    manager.wait_until_finished()
    assert manager.best_step() == best
