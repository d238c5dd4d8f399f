"""configs/auto_3d.py: a plan fills the unset fields, given values win, and the
auto config trains a fold end to end."""

import json
import os

import pytest

from configs import auto_3d
from data_prep import volumes
from data_prep.phantoms import lesions
from unet_jax import auto_config, postprocessing, train
from unet_jax.errors import DataError

PLAN = {"target_spacing": [1.0, 1.0, 3.0], "shape_at_target": [24, 24, 8], "normalization": ["zscore"],
        "ct_window": None, "patch_size": [16, 16, 4], "depth": 2, "pool_strides": [[2, 2, 1], [2, 2, 2]],
        "kernel_size": [[3, 3, 1], [3, 3, 3], [3, 3, 3]], "features": 4, "batch_size": 6, "deep_supervision": 1,
        "memory_gb": 1.0, "estimated_memory_gb": 0.5}


@pytest.fixture(scope="module")
def planned_dir(tmp_path_factory):
    """Five lesion phantoms prepared with a hand-written plan, in 2 folds."""
    root = tmp_path_factory.mktemp("auto")
    lesions.write_lesion_phantoms(root / "cases", num_cases=5, shape=(24, 24, 8), spacing=(1.0, 1.0, 3.0),
                                  seed=2, progress=False)
    plans = root / "plans.json"
    plans.write_text(json.dumps({"version": 1, "fingerprint": {}, "plan": PLAN}))
    out = str(root / "prepared")
    volumes.prepare(str(root / "cases"), out, channels="FLAIR*", label="lesions*", plans=str(plans), cv_folds=2,
                    test_fraction=0, progress=False, command="test")
    return out


def _config(data_dir):
    config = auto_3d.get_config()
    config.data.data_dir = data_dir
    config.data.num_workers = 0
    return config


def test_the_plan_fills_unset_fields_and_given_ones_win(planned_dir):
    manifest = json.load(open(os.path.join(planned_dir, "manifest.json")))
    assert manifest["preprocessing"]["spacing"] == [1.0, 1.0, 3.0]  # the plan's target spacing was used
    assert os.path.exists(os.path.join(planned_dir, "plans.json"))
    config = auto_config.apply_plans(_config(planned_dir))
    assert config.data.patch_size == (16, 16, 4) and config.model.depth == 2 and config.model.features == 4
    assert config.model.kernel_size == ((3, 3, 1), (3, 3, 3), (3, 3, 3))
    assert config.model.pool_strides == ((2, 2, 1), (2, 2, 2))
    assert config.batch_size == 4  # 6 rounded down to a multiple of the 4 simulated devices
    assert config.eval_batch_size == 8 and config.model.out_channels == 2 and config.mixed_precision is False
    assert config.model.deep_supervision == 1 and config.deep_supervision_weights == (0.5,)
    # nnU-Net's 250 steps an epoch: patches per volume over fold 0's training cases.
    train_cases = len(json.load(open(os.path.join(planned_dir, "splits.json")))["folds"][0]["train"])
    assert config.data.patches_per_volume == -(-250 * 4 // train_cases)

    given = _config(planned_dir)
    given.batch_size, given.model.deep_supervision = 8, 0
    given = auto_config.apply_plans(given)
    assert given.batch_size == 8 and given.model.deep_supervision == 0 and given.deep_supervision_weights == ()


def test_missing_or_broken_plans_are_one_line(planned_dir, lesion_volume_dir, tmp_path):
    with pytest.raises(DataError, match=r"plans.json: no such plans file; make it with python -m data_prep.plan"):
        auto_config.apply_plans(_with_fold(lesion_volume_dir, None))
    broken = tmp_path / "plans.json"
    broken.write_text("{")
    config = _config(planned_dir)
    config.plans = str(broken)
    with pytest.raises(DataError, match=r"plans.json: not a readable plans file"):
        auto_config.apply_plans(config)


def _with_fold(data_dir, fold):
    config = _config(data_dir)
    config.data.fold = fold
    return config


@pytest.mark.slow
def test_auto_config_trains_a_fold_end_to_end(planned_dir, tmp_path):
    config = _config(planned_dir)
    config.num_epochs = 1
    config.data.patches_per_volume = 2  # 2 or 3 training cases x 2 patches: one step of 4
    config.log_every_steps = 1
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["data"]["patch_size"] == [16, 16, 4] and saved["model"]["depth"] == 2
    assert saved["model"]["kernel_size"] == [[3, 3, 1], [3, 3, 3], [3, 3, 3]] and saved["optimizer"] == "adamw"
    val = json.load(open(os.path.join(workdir, "val_metrics.json")))
    fold = json.load(open(os.path.join(planned_dir, "splits.json")))["folds"][0]
    assert val["fold"] == 0 and sorted(row["patient"] for row in val["patients"]) == fold["val"]
    choice = postprocessing.read(workdir)
    assert choice is not None and "fold 0" in choice["chosen_on"]
    rows = open(os.path.join(workdir, "metrics.csv")).read().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,1,")  # one epoch of one step
