"""validate_config: every bad value is refused before anything is created, in
one line naming the key; main.py turns it into `error: ...` and exit 2."""

import copy
import json
import os

import pytest

from configs import default, lgg_3d, lgg_transunet
from test_configs import CONFIGS, load_config
from unet_jax.config_checks import check_run_config, config_changes, validate_config
from unet_jax.errors import ConfigError, DataError

MANIFEST = {"image_shape": [32, 32, 3], "num_classes": 2, "intensity_stats": "per patient",
            "splits": {"train": {"num_examples": 48}, "val": {"num_examples": 12}, "test": {"num_examples": 0}}}


def base():
    config = default.get_config()
    config.model.features = 4
    config.model.depth = 2
    config.batch_size = config.eval_batch_size = 8
    return config


def test_the_defaults_and_the_real_configs_pass():
    validate_config(base(), MANIFEST, num_devices=4)
    validate_config(lgg_transunet.get_config(), {**MANIFEST, "image_shape": [256, 256, 3]}, num_devices=1)
    validate_config(lgg_3d.get_config(), {**MANIFEST, "image_shape": [128, 128, 16, 3]}, num_devices=1)


@pytest.mark.parametrize("key,value,message", [
    ("task", "classification", "config.task='classification': choose one of segmentation, regression"),
    ("loss", "l1", "config.loss='l1' is not a segmentation loss; choose one of bce, ce, dice"),
    ("best_metric", "val_dice3d", "config.best_metric='val_dice3d' is not a segmentation metric"),
    ("best_mode", "largest", "config.best_mode='largest': choose one of max, min"),
    ("num_epochs", 0, "config.num_epochs=0: must be at least 1"),
    ("grad_accum_steps", 0, "config.grad_accum_steps=0: must be at least 1"),
    ("learning_rate", -1.0, "config.learning_rate=-1.0: must be positive"),
    ("lr_schedule", "linear", "config.lr_schedule='linear': choose one of cosine, constant"),
    ("weight_decay", -0.1, "config.weight_decay=-0.1: must be 0 or more"),
    ("batch_size", 6, "config.batch_size=6 must be a positive multiple of the 4 devices"),
    ("eval_batch_size", 2, "config.eval_batch_size=2 must be a positive multiple of the 4 devices"),
    ("model.norm", "layer", "config.model: norm='layer': choose one of batch, group, instance, none"),
    ("model.block", "dense", "config.model: block='dense': choose one of plain, residual"),
    ("model.upsample", "nearest", "config.model: upsample='nearest': choose one of transpose, resize"),
    ("model.bottleneck", "mamba", "config.model: bottleneck='mamba': choose one of conv, transformer"),
    ("model.depth", 6, "config.model: input size (32, 32) is not divisible by the total pooling factor (64, 64)"),
    ("model.num_convs", (2, 2), "config.model: num_convs has 2 entries; need depth + 1 = 3"),
    ("model.kernel_size", ((3, 3), (3, 3)), "config.model: kernel_size has 2 levels; need depth + 1 = 3"),
    ("model.kernel_size", (3, 3, 1), "config.model: kernel_size=[(3, 3, 1), (3, 3, 1), (3, 3, 1)]: give 2 "
                                     "positive sizes per level for 2-D inputs"),
    ("model.deep_supervision", 2, "config.model: deep_supervision=2 must lie in [0, depth=2)"),
    ("model.decoder_num_convs", 0, "config.model: decoder_num_convs=0: must be at least 1"),
    ("model.transformer.num_heads", 5, "config.model: transformer.hidden=768 must be a multiple of "
                                       "transformer.num_heads=5"),
    ("data.normalization", "minmax", "config.data.normalization='minmax': choose one of patient_zscore, zscore"),
    ("data.num_workers", -1, "config.data.num_workers=-1: must be 0 or more"),
    ("data.augment.flip_prob", 1.5, "config.data.augment.flip_prob=1.5: a probability in [0, 1]"),
    ("data.augment.max_scale", 1.0, "config.data.augment.max_scale=1.0: a fraction in [0, 1)"),
    ("data.augment.max_rotate_deg", 200.0, "config.data.augment.max_rotate_deg=200.0: degrees in [0, 180]"),
    ("data.augment.gamma_range", (1.5, 0.7), "config.data.augment.gamma_range=(1.5, 0.7): give (low, high)"),
    ("data.augment.noise_std", -0.1, "config.data.augment.noise_std=-0.1: must be 0 or more"),
    ("data.augment.flip_axes", (1, 2), "config.data.augment.flip_axes=(1, 2): axes of the 2-D input lie in 0..1"),
])
def test_a_bad_value_is_one_line_naming_its_key(key, value, message):
    config = base()
    if key == "model.transformer.num_heads":
        config.model.bottleneck = "transformer"
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    with config.ignore_type():
        node[leaf] = value
    with pytest.raises(ConfigError) as error:
        validate_config(config, MANIFEST, num_devices=4)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_checks_against_the_data():
    config = base()
    config.model.deep_supervision = 1
    with pytest.raises(ConfigError, match="deep_supervision_weights has 0 entries but model.deep_supervision=1"):
        validate_config(config, MANIFEST, num_devices=4)
    config = base()
    config.batch_size = 64
    with pytest.raises(ConfigError, match="batch_size=64 is larger than the 48 training examples"):
        validate_config(config, MANIFEST, num_devices=4)
    no_val = copy.deepcopy(MANIFEST)
    no_val["splits"]["val"]["num_examples"] = 0
    with pytest.raises(ConfigError, match="no validation examples, so no best epoch can be chosen"):
        validate_config(base(), no_val, num_devices=4)
    validate_config(base(), no_val, num_devices=4, mode="evaluate")  # evaluation needs no val split
    with pytest.raises(ConfigError, match="out_channels=1: cannot predict the 4 classes of the data; set it to 4"):
        validate_config(base(), {**MANIFEST, "num_classes": 4}, num_devices=4)
    with pytest.raises(DataError, match="prepared without per-patient intensity statistics; rerun data_prep"):
        validate_config(base(), {**MANIFEST, "intensity_stats": None}, num_devices=4)
    config = base()
    config.task, config.loss, config.model.out_channels = "regression", "l1", 2
    with pytest.raises(ConfigError, match="out_channels=2: regression targets have 1 channel here"):
        validate_config(config, MANIFEST, num_devices=4)
    with pytest.raises(ConfigError, match="--mode=predict: choose one of train, evaluate"):
        validate_config(base(), MANIFEST, num_devices=4, mode="predict")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_as_a_run_writes_it_is_a_run_config(path):
    """Each config file, plan-decided fields filled and saved as config.json
    saves it, passes the check that evaluate and predict make."""
    config = load_config(path)
    check_run_config(json.loads(json.dumps(config.to_dict())), "w/config.json")


@pytest.mark.parametrize("values,message", [
    ({}, "no key batch_size"),
    ([1, 2], "holds a JSON list, not a config"),
    ({**default.get_config().to_dict(), "epochs": 3}, "unknown key epochs"),
    ({**default.get_config().to_dict(), "model": 4}, "no key model"),
])
def test_a_foreign_config_json_is_one_line(values, message):
    with pytest.raises(ConfigError) as raised:
        check_run_config(values, "w/config.json")
    text = str(raised.value)
    assert text.startswith("w/config.json: ") and message in text and "\n" not in text
    assert text.endswith("this is not a unet_jax workdir or it was written by another version; point --workdir at "
                         "a run folder")


def test_an_older_run_without_the_keys_read_with_a_default_passes():
    values = default.get_config().to_dict()
    for key in ("optimizer", "momentum", "allow_changed_config"):
        del values[key]
    del values["data"]["augment_on"]
    check_run_config(values, "w/config.json")


def test_config_changes_lists_what_changed_but_not_where_the_run_stops():
    before = json.loads(json.dumps(default.get_config().to_dict()))  # as config.json holds it: lists for tuples
    config = default.get_config()
    config.halt_after_steps, config.log_every_steps = 8, 1
    assert config_changes(before, config.to_dict()) == []
    config.num_epochs, config.model.depth = 20, 3
    assert config_changes(before, config.to_dict()) == ["model.depth: 4 -> 3", "num_epochs: 100 -> 20"]


def test_plan_filled_fields_are_no_change_on_a_resume():
    """configs/auto_3d.py's fields that plans.json decides, filled the same
    way on both starts of a run, compare equal to what config.json kept."""
    path = [p for p in CONFIGS if p.endswith("auto_3d.py")][0]
    started = json.loads(json.dumps(load_config(path).to_dict()))  # the config.json of the first start
    assert started["model"]["kernel_size"] and started["batch_size"]
    assert config_changes(started, load_config(path).to_dict()) == []
