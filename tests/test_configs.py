"""Every config file loads, builds its model, and its data section drives the
input pipeline, so no config rots."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from unet_jax import auto_config, builders, run
from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "*.py")))


# What configs/auto_3d.py takes from a data folder's plans.json, for a small 3-D folder.
PLAN = {"patch_size": [16, 16, 4], "batch_size": 2, "depth": 2, "features": 8, "deep_supervision": 1,
        "kernel_size": [[3, 3, 1], [3, 3, 3], [3, 3, 3]], "pool_strides": [[2, 2, 1], [2, 2, 2]]}


def load_config(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if config.get("plans"):  # the fields a plan decides, as auto_config fills them at the start of a run
        manifest = {"splits": {"train": {"num_patients": 4}}, "num_classes": 2}
        auto_config.fill_unset(config, auto_config.planned_values(PLAN, manifest, 1, "cpu"))
    return config


def spatial_dims(model) -> int:
    """2 for slice models, 3 for volume models (from the configured kernels)."""
    return len(model.level_kernels(2)[0])


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_its_model(path):
    config = load_config(path)
    model = run.build_model(config)
    shape = (1, 64, 64, 16, 3) if spatial_dims(model) == 3 else (1, 64, 64, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) > 0
    assert jax.eval_shape(model.apply, variables, jnp.zeros(shape)).shape == shape[:-1] + (
        config.model.out_channels,)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_the_input_pipeline(path, prepared_dir, volume_dir, lesion_volume_dir):
    config = load_config(path)
    volumes = spatial_dims(run.build_model(config)) == 3
    patches = builders.patch_options(config)
    data_dir = lesion_volume_dir if patches else volume_dir if volumes else prepared_dir
    ds = pipeline.train_dataset(data_dir, batch_size=2, seed=config.seed, normalization=config.data.normalization,
                                augment_options=AugmentOptions(**config.data.augment), patches=patches)
    it = pipeline.make_iterator(ds, pipeline.LoaderOptions(
        num_workers=0, prefetch_buffer_size=config.data.prefetch_buffer_size))
    expected = (2, *patches.size, 2) if patches else (2, 32, 32, 8, 3) if volumes else (2, 32, 32, 3)
    assert next(it)["image"].shape == expected
