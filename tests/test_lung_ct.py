"""Lung CT end to end (document 003): chest phantoms in Hounsfield units
prepared as axial slices in the lung window, simulated pathology in the
training pipeline (deterministic, inside the lung boxes only, labels
untouched) and on evaluation, and both lung configs trained for a step."""

import json
import os

import numpy as np
import pytest
from run_configs import tiny_config

from configs import lung_ct, lung_ct_no_pathology
from data_prep import volumes
from data_prep.phantoms import chest
from unet_jax import builders, config_checks, evaluate, train
from unet_jax.data import pipeline
from unet_jax.data.pathology import PathologyOptions, lung_boxes
from unet_jax.errors import ConfigError


@pytest.fixture(scope="module")
def chest_dir(tmp_path_factory):
    """Four 32x32x8 chest phantoms as axial slices, HU window scaled to [0, 1]: 2 train, 1 val, 1 test cases."""
    root = tmp_path_factory.mktemp("chest")
    chest.write_chest_phantoms(root / "cases", num_cases=4, shape=(32, 32, 8), spacing=(8.0, 8.0, 20.0), seed=0,
                               progress=False)
    out = root / "prepared"
    volumes.prepare(str(root / "cases"), str(out), channels="ct*", label="lungs*", intensity="ct", crop=False,
                    slices="axial", slice_size="32,32", val_fraction=0.25, test_fraction=0.25, progress=False,
                    command="test")
    return str(out)


def lung_config(module, data_dir):
    """A lung config at the size of tiny_config: 2 micro-batches of 4 per update."""
    config = module.get_config()
    tiny = tiny_config(data_dir)
    for key in ("log_every_steps", "num_preview_images"):
        config[key] = tiny[key]
    config.data.data_dir, config.data.num_workers = data_dir, 0
    config.data.normalization = "none"
    config.model.features, config.model.depth = 4, 2
    config.batch_size, config.grad_accum_steps, config.eval_batch_size = 8, 2, 8
    config.num_epochs = 1
    return config


def _train_images(data_dir, pathology, seed=0, n=4):
    ds = pipeline.train_dataset(data_dir, batch_size=4, seed=seed, normalization="none", augment_options=None,
                                pathology=pathology)
    return [ds[i] for i in range(n)]


def test_pathology_in_the_pipeline_changes_only_lung_boxes_and_is_deterministic(chest_dir):
    opts = PathologyOptions(prob=1.0)
    clean, sick, again = (_train_images(chest_dir, p) for p in (None, opts, opts))
    changed_slices = 0
    for a, b, c in zip(clean, sick, again):
        np.testing.assert_array_equal(b["image"], c["image"])  # the same seed: the same lesions
        np.testing.assert_array_equal(a["mask"], b["mask"])  # the label stays the lung
        for image, lesioned, mask in zip(a["image"], b["image"], a["mask"]):
            boxes = lung_boxes(mask[..., 0], opts.min_lung_pixels)
            inside = np.zeros(mask.shape[:2], bool)
            for box in boxes or []:
                inside[box] = True
            np.testing.assert_array_equal(image[~inside], lesioned[~inside])
            changed_slices += not np.array_equal(image, lesioned)
            if boxes is None:
                np.testing.assert_array_equal(image, lesioned)  # fewer than two lungs: left alone
    assert changed_slices >= 4
    other = _train_images(chest_dir, opts, seed=1)
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(sick, other))


def test_evaluation_pathology_is_the_same_every_pass(chest_dir):
    opts = PathologyOptions(prob=1.0)
    first, second = (list(pipeline.eval_dataset(chest_dir, "val", batch_size=4, normalization="none",
                                                pathology=opts, seed=3)) for _ in range(2))
    clean = list(pipeline.eval_dataset(chest_dir, "val", batch_size=4, normalization="none"))
    for a, b, c in zip(first, second, clean):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], c["mask"])
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(first, clean))


def test_pathology_config_is_checked_in_one_line(chest_dir):
    config = lung_config(lung_ct, chest_dir)
    manifest = pipeline.read_manifest(chest_dir)
    config.data.pathology.colour = 1.0
    with pytest.raises(ConfigError, match="config.data.pathology.colour: no such field; choose from prob, "):
        config_checks.validate_config(config, manifest, num_devices=1)
    config = lung_config(lung_ct, chest_dir)
    config.data.pathology.shapes = ("square",)
    with pytest.raises(ConfigError, match="config.data.pathology: .*square"):
        config_checks.validate_config(config, manifest, num_devices=1)
    assert builders.pathology_options(lung_config(lung_ct_no_pathology, chest_dir)) is None
    assert builders.pathology_options(lung_config(lung_ct, chest_dir)).prob == 0.8


@pytest.mark.slow
@pytest.mark.parametrize("module", [lung_ct, lung_ct_no_pathology], ids=lambda m: m.__name__.split(".")[-1])
def test_lung_configs_train_and_evaluate_with_pathology(module, chest_dir, tmp_path):
    """One epoch of each lung config (Dice + CE, AdamW, accumulation), then the
    robustness evaluation with lesions in every test slice, written beside the clean one."""
    config = lung_config(module, chest_dir)
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(config, workdir)
    assert np.isfinite(summary["metrics"]["dice"])
    config.data.eval_pathology = True
    result = evaluate.evaluate_workdir(config, workdir, chest_dir, "test")
    name = f"evaluate_{os.path.basename(chest_dir)}_test_pathology"
    with open(os.path.join(workdir, f"{name}_metrics.json")) as f:
        assert json.load(f)["metrics"]["dice"] == pytest.approx(result["metrics"]["dice"])
    assert os.path.exists(os.path.join(workdir, "figures", f"{name}_best_worst.png"))
