"""Post-processing chosen on validation: a class keeps its largest connected
component only when that raises its mean Dice, from hand-written tables and
from real segmentation_table rows; applying a choice against a SciPy
reference; the ensemble's majority; postprocessing.json read and written."""

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from unet_jax import metrics, postprocessing
from unet_jax.errors import ConfigError


def test_choose_keeps_a_class_only_when_the_largest_component_raises_its_mean_dice():
    table = [{"dice_3d": 0.5, "dice_3d_lcc": 0.7}, {"dice_3d": 0.9, "dice_3d_lcc": 0.8}]
    choice = postprocessing.choose(table, 2, chosen_on="validation: 2 cases")
    assert choice["keep_largest_component"] == [1]  # 0.75 > 0.70
    assert choice["classes"]["1"] == {"dice": pytest.approx(0.7), "dice_lcc": pytest.approx(0.75), "cases": 2}
    assert choice["chosen_on"] == "validation: 2 cases"
    equal = [{"dice_3d": 0.5, "dice_3d_lcc": 0.6}, {"dice_3d": 0.6, "dice_3d_lcc": 0.5}]
    assert postprocessing.choose(equal, 2, "")["keep_largest_component"] == []  # not strictly greater
    # NaN and null (a NaN through JSON) skip the case for both means.
    skipped = [*table, {"dice_3d": float("nan"), "dice_3d_lcc": 0.0}, {"dice_3d": 1.0, "dice_3d_lcc": None}]
    assert postprocessing.choose(skipped, 2, "")["classes"] == choice["classes"]
    several = [{"dice_3d_class1": 0.4, "dice_3d_lcc_class1": 0.6, "dice_3d_class2": 0.8, "dice_3d_lcc_class2": 0.7,
                "dice_3d": 0.0, "dice_3d_lcc": 1.0},  # the means over classes are not read
               {"dice_3d_class1": 0.6, "dice_3d_lcc_class1": 0.6, "dice_3d_class2": 0.6, "dice_3d_lcc_class2": 0.6}]
    choice = postprocessing.choose(several, 3, "")
    assert choice["keep_largest_component"] == [1]
    assert choice["classes"]["2"]["dice"] == pytest.approx(0.7)
    assert choice["classes"]["2"]["dice_lcc"] == pytest.approx(0.65)
    empty = postprocessing.choose([], 3, "no cases")
    assert empty["keep_largest_component"] == [] and empty["classes"]["1"]["cases"] == 0


def _blob(shape, box):
    mask = np.zeros(shape, bool)
    mask[box] = True
    return mask


def test_choose_on_segmentation_table_rows_of_a_stray_blob():
    shape = (6, 12, 12)
    target = np.zeros(shape, np.uint8)
    target[_blob(shape, np.s_[1:4, 1:5, 1:5])] = 1
    target[_blob(shape, np.s_[1:3, 7:10, 7:10]) | _blob(shape, np.s_[4:6, 7:10, 1:3])] = 2  # two true lesions
    pred = target.copy()
    pred[_blob(shape, np.s_[4:6, 8:11, 8:11])] = 1  # a stray blob of class 1: cutting it helps
    volumes = {0: (pred, target, np.arange(shape[0]))}
    (row,) = metrics.segmentation_table(volumes, num_classes=3)
    structure = np.ones((3, 3, 3), bool)
    for k in (1, 2):
        labelled, _ = ndimage.label(pred == k, structure)
        largest = labelled == np.argmax(np.bincount(labelled.ravel())[1:]) + 1
        reference = 2 * (largest & (target == k)).sum() / (largest.sum() + (target == k).sum())
        assert row[f"dice_3d_lcc_class{k}"] == pytest.approx(reference)
    assert row["dice_3d_lcc_class1"] == 1.0 > row["dice_3d_class1"]
    assert row["dice_3d_lcc_class2"] < row["dice_3d_class2"] == 1.0  # the smaller true lesion is lost
    assert row["dice_3d_lcc"] == pytest.approx((row["dice_3d_lcc_class1"] + row["dice_3d_lcc_class2"]) / 2)
    choice = postprocessing.choose([row], 3, "one case")
    assert choice["keep_largest_component"] == [1]
    # One foreground class: dice_3d_lcc is class 1's, with no per-class columns.
    (binary,) = metrics.segmentation_table({0: ((pred == 1).astype(np.uint8), (target == 1).astype(np.uint8),
                                                np.arange(shape[0]))})
    assert "dice_3d_lcc_class1" not in binary and binary["dice_3d_lcc"] == 1.0
    assert postprocessing.choose([binary], 2, "")["keep_largest_component"] == [1]


def _reference_apply(labels, classes):
    out = labels.copy()
    for k in classes:
        labelled, count = ndimage.label(labels == k, np.ones((3,) * labels.ndim, bool))
        if count:
            sizes = np.bincount(labelled.ravel())[1:]
            out[(labels == k) & (labelled != np.argmax(sizes) + 1)] = 0
    return out


@pytest.mark.parametrize("shape", [(24, 24), (10, 12, 8)])
def test_apply_equals_a_scipy_reference_and_leaves_other_classes_alone(shape):
    labels = (np.random.default_rng(len(shape)).random(shape) * 4).astype(np.uint8)  # classes 0..3, many blobs
    before = labels.copy()
    out = postprocessing.apply(labels, {"keep_largest_component": [1, 3]})
    np.testing.assert_array_equal(out, _reference_apply(labels, [1, 3]))
    np.testing.assert_array_equal(labels, before)  # a new array
    np.testing.assert_array_equal(out[labels == 2], 2)  # unchosen: untouched
    assert metrics.connected_components(out == 1)[1] == 1 and (out == 1).sum() < (labels == 1).sum()
    assert postprocessing.apply(labels, None) is labels
    assert postprocessing.apply(labels, {"keep_largest_component": []}) is labels


def test_an_ensemble_applies_the_classes_a_majority_chose():
    one, two, none = ({"keep_largest_component": [1], "chosen_on": "a"},
                      {"keep_largest_component": [1, 2], "chosen_on": "b"}, {"keep_largest_component": []})
    assert postprocessing.vote([two]) is two
    assert postprocessing.vote([None, None]) is None
    assert postprocessing.vote([]) is None
    choice = postprocessing.vote([one, two, None])  # class 1: 2 of 3, class 2: 1 of 3
    assert choice["keep_largest_component"] == [1] and choice["votes"] == {"1": 2, "2": 1} and choice["runs"] == 3
    assert postprocessing.vote([one, none])["keep_largest_component"] == []  # 1 of 2 is no majority


def test_read_and_write_round_trip_and_a_malformed_file_is_one_line(tmp_path):
    assert postprocessing.read(str(tmp_path)) is None
    choice = postprocessing.choose([{"dice_3d": 0.5, "dice_3d_lcc": float("nan")}], 2, "one case")
    postprocessing.write(str(tmp_path), choice)
    assert postprocessing.read(str(tmp_path)) == json.loads(json.dumps(choice).replace("NaN", "null"))
    assert not [n for n in os.listdir(tmp_path) if n != postprocessing.FILE]  # no temporary file left
    path = tmp_path / postprocessing.FILE
    for text in ("{not json", "[1]", '{"keep_largest_component": ["1"]}', '{"keep_largest_component": [0]}',
                 '{"chosen_on": "x"}'):
        path.write_text(text)
        with pytest.raises(ConfigError, match=str(path)) as error:
            postprocessing.read(str(tmp_path))
        assert "\n" not in str(error.value) and "delete it" in str(error.value)
