"""The objects a config builds: the metric and mode that pick the best epoch, the model's input shape."""

import pytest

from configs import default
from unet_jax.builders import best_metric, input_shape
from unet_jax.errors import ConfigError


def test_best_metric_defaults_to_the_task_and_mode_to_its_direction():
    config = default.get_config()
    assert best_metric(config) == ("val_dice", "max")
    config.best_metric = "val_loss"
    assert best_metric(config) == ("val_loss", "min")
    config.best_mode = "max"
    assert best_metric(config) == ("val_loss", "max")  # an explicit mode wins
    config = default.get_config()
    config.task = "regression"
    assert best_metric(config) == ("val_soft_jaccard", "max")
    config.best_metric = "val_mae_3d"
    assert best_metric(config) == ("val_mae_3d", "min")


def test_input_shape_is_the_records_shape_else_one_line():
    config = default.get_config()
    config.data.data_dir = "data/mixed"
    assert input_shape(config, {"image_shape": [32, 32, 3]}) == (32, 32, 3)
    with pytest.raises(ConfigError, match="data/mixed holds volumes of different sizes; set config.data.patch_size"):
        input_shape(config, {"image_shape": None})
