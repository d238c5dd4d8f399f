"""data_prep.pictures: picture pairs to records for segmentation and regression,
splits by patient, --lung_sides, --double, and every bad-input case."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_prep import common, pictures
from unet_jax.data import pipeline
from unet_jax.data.medical_io import write_image
from unet_jax.data.tfrecord import decode_example, iter_records
from unet_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
LUNGSEGDB = ROOT.parent / "shared" / "data" / "lung_ct_lungsegdb"


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path)


def _grey_rgb(rng, size=32):
    """An RGB picture with three identical channels, as LungSegDB stores CT."""
    grey = rng.integers(1, 256, (size, size), dtype=np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _mask(left=True, right=True, size=32):
    """A 0/255 mask with a block on the picture's left and/or right."""
    mask = np.zeros((size, size), np.uint8)
    if left:
        mask[8:20, 3:12] = 255
    if right:
        mask[10:24, 20:29] = 255
    return mask


def _segmentation(root, names, seed=0):
    rng = np.random.default_rng(seed)
    for n in names:
        _png(root / "images" / f"{n}.png", _grey_rgb(rng))
        _png(root / "masks" / f"{n}.png", _mask())
    return root


def _regression(root, names, seed=0):
    """Target = input / 255: a copy's alignment is then visible exactly."""
    rng = np.random.default_rng(seed)
    for n in names:
        grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        grey[:, :4] = 0  # some background
        _png(root / "inputs" / f"{n}.png", grey)
        _png(root / "targets" / f"{n}.png", grey)
    return root


def _prepare(src, out, **kw):
    kw = {"val_fraction": 0.25, "test_fraction": 0.25, "progress": False, "command": "test", **kw}
    return pictures.prepare(str(src), str(out), **kw)


def _records(out, split, decoded=True):
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    raw = [r for s in manifest["splits"][split]["shards"] for r in iter_records(os.path.join(out, s["file"]))]
    return [pipeline.decode(r) if decoded else decode_example(r) for r in raw]


def _all_records(out, decoded=True):
    return [r for split in common.SPLITS for r in _records(out, split, decoded)]


def test_segmentation_records_decode_to_the_pictures(tmp_path):
    src = _segmentation(tmp_path / "src", range(8))
    m = _prepare(src, tmp_path / "out")
    assert m["dataset"] == "pictures" and m["task"] == "segmentation" and m["layout"] == "slices"
    assert m["image_shape"] == [32, 32, 1] and m["num_channels"] == 1 and m["num_classes"] == 2
    assert m["skipped"] == [] and m["source_files"] == 16 and len(m["source_checksum"]) == 64
    assert [m["splits"][s]["num_examples"] for s in common.SPLITS] == [4, 2, 2]
    pipeline.check_normalization(str(tmp_path / "out"), m, "patient_zscore")  # intensity stats present
    raw = _all_records(tmp_path / "out", decoded=False)
    for rec, ex in zip(_all_records(tmp_path / "out"), raw):
        name = ex["picture"].decode()
        assert ex["patient_id"].decode() == name and int(ex["slice"][0]) == 0  # each picture its own patient
        assert "mask_dtype" not in ex and ex["shape"].tolist() == [32, 32, 1]
        png = np.asarray(Image.open(src / "images" / f"{name}.png"))
        np.testing.assert_array_equal(rec["image"][..., 0], png[..., 0])
        np.testing.assert_array_equal(rec["mask"][..., 0], _mask() > 127)
        assert int(ex["tumor_pixels"][0]) == int(ex["foreground_voxels"][0]) == int((_mask() > 127).sum())
        np.testing.assert_allclose(rec["channel_mean"], [png[..., 0].astype(np.float64).mean()], rtol=1e-5)


def test_mask_threshold_is_strictly_above_127(tmp_path):
    src = tmp_path / "src"
    mask = np.zeros((32, 32), np.uint8)
    mask[0, 0], mask[0, 1], mask[0, 2], mask[0, 3] = 127, 128, 255, 1
    _png(src / "images" / "a.png", np.full((32, 32), 50, np.uint8))
    _png(src / "masks" / "a.png", mask)
    _prepare(src, tmp_path / "out", val_fraction=0, test_fraction=0)
    got = _all_records(tmp_path / "out")[0]["mask"][..., 0]
    assert got[0, :4].tolist() == [0, 1, 1, 0] and got.sum() == 2
    _prepare(src, tmp_path / "t", val_fraction=0, test_fraction=0, mask_threshold=0)
    assert _all_records(tmp_path / "t")[0]["mask"][0, :4, 0].tolist() == [1, 1, 1, 1]


def test_masks_of_zero_and_one_are_kept(tmp_path):
    src = tmp_path / "src"
    _png(src / "images" / "a.png", np.full((32, 32), 50, np.uint8))
    _png(src / "masks" / "a.png", (_mask() > 0).astype(np.uint8))
    _prepare(src, tmp_path / "out", val_fraction=0, test_fraction=0)
    np.testing.assert_array_equal(_all_records(tmp_path / "out")[0]["mask"][..., 0], _mask() > 0)


def test_colour_pictures_keep_three_channels_unless_told(tmp_path):
    src = _segmentation(tmp_path / "src", range(3))
    colour = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _png(src / "images" / "1.png", colour)
    m = _prepare(src, tmp_path / "auto", val_fraction=0, test_fraction=0)
    assert m["image_shape"] == [32, 32, 3]
    recs = {int(r["patient_index"]): r for r in _all_records(tmp_path / "auto")}
    np.testing.assert_array_equal(recs[1]["image"], colour)
    grey0 = np.asarray(Image.open(src / "images" / "0.png"))[..., 0]
    np.testing.assert_array_equal(recs[0]["image"], np.repeat(grey0[..., None], 3, -1))
    m = _prepare(src, tmp_path / "one", val_fraction=0, test_fraction=0, channels="1")
    assert m["image_shape"] == [32, 32, 1]
    luma = np.asarray(Image.fromarray(colour).convert("L"))
    np.testing.assert_array_equal(_all_records(tmp_path / "one")[1]["image"][..., 0], luma)


def test_regression_target_is_the_png_over_255(tmp_path):
    src = _regression(tmp_path / "src", range(4))
    m = _prepare(src, tmp_path / "out", task="regression")
    assert m["task"] == "regression" and "num_classes" not in m
    assert m["target"] == {"method": "scale", "divisor": 255.0, "channels": 1}
    assert m["image_shape"] == [32, 32, 1]
    for rec, ex in zip(_all_records(tmp_path / "out"), _all_records(tmp_path / "out", decoded=False)):
        assert ex["mask_dtype"] == b"float32"
        png = np.asarray(Image.open(src / "targets" / f"{ex['picture'].decode()}.png"))
        np.testing.assert_array_equal(rec["mask"][..., 0], png.astype(np.float32) / np.float32(255))
        assert int(ex["foreground_voxels"][0]) == int(np.count_nonzero(png))
    assert pipeline.continuous_targets(m)


def test_sixteen_bit_targets_are_divided_by_65535(tmp_path):
    src = tmp_path / "src"
    target = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60
    _png(src / "inputs" / "a.png", np.full((32, 32), 9, np.uint8))
    write_image(str(src / "targets" / "a.png"), target)
    m = _prepare(src, tmp_path / "out", task="regression", val_fraction=0, test_fraction=0)
    assert m["target"]["divisor"] == 65535.0
    np.testing.assert_array_equal(_all_records(tmp_path / "out")[0]["mask"][..., 0],
                                  target.astype(np.float32) / np.float32(65535))


def test_rgb_target_with_identical_channels_is_one_channel_and_different_ones_refused(tmp_path):
    src = _regression(tmp_path / "src", range(2))
    grey = np.asarray(Image.open(src / "targets" / "0.png"))
    _png(src / "targets" / "0.png", np.repeat(grey[..., None], 3, -1))
    _prepare(src, tmp_path / "ok", task="regression", val_fraction=0, test_fraction=0)
    colour = np.stack([grey, grey, 255 - grey], -1)
    _png(src / "targets" / "1.png", colour)
    with pytest.raises(DataError, match=r"targets/1.png: a target with 3 different channels") as e:
        _prepare(src, tmp_path / "bad", task="regression", val_fraction=0, test_fraction=0)
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()


def test_mask_without_image_stops_or_is_skipped(tmp_path):
    src = _segmentation(tmp_path / "src", range(4))
    _png(src / "masks" / "422.png", _mask())
    with pytest.raises(DataError, match=r"masks/422.png: mask without an image.*--skip_bad") as e:
        _prepare(src, tmp_path / "out")
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # nothing half-written
    m = _prepare(src, tmp_path / "out", skip_bad=True)
    assert [os.path.basename(s["file"]) for s in m["skipped"]] == ["422.png"]
    assert "mask without an image" in m["skipped"][0]["reason"]
    assert sum(s["num_examples"] for s in m["splits"].values()) == 4


def test_split_is_by_patient_with_patient_regex(tmp_path):
    names = [f"{p}_{i}" for p in ("amy", "bob", "cal", "dan", "eve", "fay") for i in range(3 + (p == "amy") * 8)]
    src = _segmentation(tmp_path / "src", names)
    m = _prepare(src, tmp_path / "out", patient_regex=r"^(\w+?)_\d+$", val_fraction=0.2, test_fraction=0.2)
    splits = m["splits"]
    patients = [{p["patient"] for p in splits[s]["patients"]} for s in common.SPLITS]
    assert set.union(*patients) == {"amy", "bob", "cal", "dan", "eve", "fay"}
    assert sum(len(p) for p in patients) == 6  # every patient in exactly one split
    assert sum(s["num_examples"] for s in splits.values()) == len(names)
    for split in common.SPLITS:
        recs = _records(tmp_path / "out", split, decoded=False)
        for r in recs:  # patient_index points into the split's patient list
            assert splits[split]["patients"][int(r["patient_index"][0])]["patient"] == r["patient_id"].decode()
        for p in splits[split]["patients"]:
            mine = [r for r in recs if r["patient_id"].decode() == p["patient"]]
            assert [int(r["slice"][0]) for r in mine] == list(range(len(mine)))  # running number
            # natural order of the stems: amy_2 before amy_10
            assert [r["picture"].decode() for r in mine] == sorted(p["pictures"],
                                                                 key=lambda n: int(n.split("_")[1]))
    amy = next(p for s in splits.values() for p in s["patients"] if p["patient"] == "amy")
    assert amy["num_pictures"] == 11
    assert m["split"]["patient_regex"] == r"^(\w+?)_\d+$"
    named = _prepare(src, tmp_path / "named", patient_regex=r"^(\w+?)_\d+$", val_cases="bob,cal",
                     test_cases="dan")
    assert [[p["patient"] for p in named["splits"][s]["patients"]] for s in common.SPLITS] == [
        ["amy", "eve", "fay"], ["bob", "cal"], ["dan"]]
    with pytest.raises(DataError, match="zed"):
        _prepare(src, tmp_path / "x", patient_regex=r"^(\w+?)_\d+$", val_cases="zed")


def test_patient_regex_that_does_not_match_names_the_file(tmp_path):
    src = _segmentation(tmp_path / "src", ["p1_0", "p1_1", "odd"])
    with pytest.raises(DataError, match=r"images/odd.png: name 'odd' gives no patient"):
        _prepare(src, tmp_path / "out", patient_regex=r"^(\w+?)_\d+$", val_fraction=0, test_fraction=0)
    m = _prepare(src, tmp_path / "out", patient_regex=r"^(\w+?)_\d+$", val_fraction=0, test_fraction=0,
                 skip_bad=True)
    assert m["splits"]["train"]["num_examples"] == 2 and len(m["skipped"]) == 1


def test_lung_sides_label_left_one_right_two(tmp_path):
    src = tmp_path / "src"
    mask = _mask()
    mask[28:30, 14:16] = 255  # a third, smallest component: dropped
    _png(src / "images" / "a.png", np.full((32, 32), 50, np.uint8))
    _png(src / "masks" / "a.png", mask)
    m = _prepare(src, tmp_path / "out", lung_sides=True, val_fraction=0, test_fraction=0)
    assert m["num_classes"] == 3
    got = _all_records(tmp_path / "out")[0]["mask"][..., 0]
    expected = np.zeros((32, 32))
    expected[8:20, 3:12] = 1
    expected[10:24, 20:29] = 2
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(DataError, match="--lung_sides"):
        _prepare(_regression(tmp_path / "reg", [0]), tmp_path / "r", task="regression", lung_sides=True)


def test_split_left_right_on_2d_and_3d_masks():
    volume = np.zeros((20, 8, 6), np.uint8)
    volume[12:18, 2:6, 1:5] = 1  # larger, at higher axis-0 index
    volume[2:6, 2:5, 1:4] = 7
    volume[9, 0, 0] = 1  # small third component, dropped
    labels = common.split_left_right(volume, axis=0)
    assert labels.dtype == np.uint8
    assert (labels[2:6, 2:5, 1:4] == 1).all() and (labels[12:18, 2:6, 1:5] == 2).all()
    assert labels[9, 0, 0] == 0 and set(np.unique(labels)) == {0, 1, 2}
    # Full connectivity: diagonal neighbours form one component.
    diagonal = np.zeros((10, 10, 10), bool)
    diagonal[[1, 2, 3], [1, 2, 3], [1, 2, 3]] = True
    diagonal[7:9, 7:9, 7:9] = True
    assert np.unique(common.split_left_right(diagonal, axis=2)[[1, 2, 3], [1, 2, 3], [1, 2, 3]]).tolist() == [1]
    # One component: the side of the centre its centroid lies on.
    one = np.zeros((10, 10), bool)
    one[2:5, 7:9] = True
    assert np.unique(common.split_left_right(one, axis=1)[one]).tolist() == [2]
    assert np.unique(common.split_left_right(one, axis=0)[one]).tolist() == [1]
    assert not common.split_left_right(np.zeros((4, 4, 4)), axis=-1).any()
    with pytest.raises(ValueError, match="axis"):
        common.split_left_right(one, axis=2)


def test_double_copies_training_pairs_only_and_keeps_them_aligned(tmp_path):
    src = _regression(tmp_path / "src", range(8))
    plain = _prepare(src, tmp_path / "plain", task="regression")
    m = _prepare(src, tmp_path / "double", task="regression", double=True)
    for split in common.SPLITS:
        assert m["splits"][split]["num_pictures"] == plain["splits"][split]["num_pictures"]
    assert m["splits"]["train"]["num_examples"] == 2 * plain["splits"]["train"]["num_examples"] == 8
    assert m["splits"]["train"]["num_copies"] == 4
    for split in ("val", "test"):
        assert m["splits"][split]["num_examples"] == plain["splits"][split]["num_examples"] == 2
        assert m["splits"][split]["num_copies"] == 0
    assert m["pictures"]["double"]["splits"] == ["train"]
    raw = _records(tmp_path / "double", "train", decoded=False)
    recs = _records(tmp_path / "double", "train")
    copies = [(r, ex) for r, ex in zip(recs, raw) if "copy_of" in ex]
    assert len(copies) == 4
    originals = {ex["patient_id"]: r for r, ex in zip(recs, raw) if "copy_of" not in ex}
    for rec, ex in copies:
        assert int(ex["slice"][0]) == 1 and int(ex["copy_of"][0]) == 0  # slice numbers continue
        original = originals[ex["patient_id"]]
        assert not np.array_equal(rec["image"], original["image"])  # warped
        # Image and target went through one transform: target * 255 still equals the image
        # within the image's rounding to uint8.
        np.testing.assert_allclose(rec["mask"][..., 0] * 255, rec["image"][..., 0], atol=0.51)
        assert 0 <= rec["mask"].min() and rec["mask"].max() <= 1
        np.testing.assert_array_equal(rec["channel_mean"], original["channel_mean"])
    again = _prepare(src, tmp_path / "again", task="regression", double=True)
    assert again["splits"] == m["splits"]  # deterministic per --seed: same shard contents
    assert [r["image"].tobytes() for r in _records(tmp_path / "again", "train")] == \
        [r["image"].tobytes() for r in recs]


def test_double_segmentation_copies_stay_labels(tmp_path):
    src = _segmentation(tmp_path / "src", range(4))
    m = _prepare(src, tmp_path / "out", double=True, lung_sides=True, val_fraction=0, test_fraction=0)
    recs = _records(tmp_path / "out", "train")
    assert len(recs) == 8 and m["splits"]["train"]["num_slices"] == 8
    for r in recs:
        assert set(np.unique(r["mask"]).tolist()) == {0, 1, 2}


def test_pair_of_different_sizes_names_both_files(tmp_path):
    src = _segmentation(tmp_path / "src", range(3))
    _png(src / "masks" / "1.png", np.zeros((16, 32), np.uint8))
    with pytest.raises(DataError, match=r"masks/1.png: mask of 16x32 pixels, but its image .*images/1.png has "
                                        r"32x32") as e:
        _prepare(src, tmp_path / "out")
    assert "\n" not in str(e.value)


def test_sizes_across_pairs_differ_unless_resized(tmp_path):
    src = _segmentation(tmp_path / "src", range(4))
    big = np.zeros((64, 48), np.uint8)
    big[10:40, 5:20] = 255
    _png(src / "images" / "3.png", np.full((64, 48), 80, np.uint8))
    _png(src / "masks" / "3.png", big)
    with pytest.raises(DataError, match=r"images/3.png: 64x48 pixels, unlike the 32x32 of most pictures; "
                                        r"pass --size=H,W"):
        _prepare(src, tmp_path / "out", val_fraction=0, test_fraction=0)
    m = _prepare(src, tmp_path / "skip", val_fraction=0, test_fraction=0, skip_bad=True)
    assert m["splits"]["train"]["num_examples"] == 3 and len(m["skipped"]) == 1
    m = _prepare(src, tmp_path / "out", val_fraction=0, test_fraction=0, size="16,24")
    assert m["image_shape"] == [16, 24, 1] and m["source_image_shape"] is None
    recs = _records(tmp_path / "out", "train")
    assert all(r["image"].shape == (16, 24, 1) and r["mask"].shape == (16, 24, 1) for r in recs)
    resized = recs[3]["mask"][..., 0]
    assert set(np.unique(resized).tolist()) == {0, 1}  # nearest: still labels
    assert abs(resized.mean() - (big > 0).mean()) < 0.05
    np.testing.assert_array_equal(recs[3]["image"], 80)  # bilinear of a constant picture
    with pytest.raises(DataError, match="--size='16,x'"):
        _prepare(src, tmp_path / "bad", size="16,x")


def test_regression_targets_resize_bilinear(tmp_path):
    src = _regression(tmp_path / "src", range(2))
    _prepare(src, tmp_path / "out", task="regression", val_fraction=0, test_fraction=0, size="16,16")
    for rec in _records(tmp_path / "out", "train"):
        assert rec["mask"].shape == (16, 16, 1) and rec["mask"].dtype == np.float32
        # The target was the image / 255: both resized the same way, up to the image's rounding.
        np.testing.assert_allclose(rec["mask"][..., 0] * 255, rec["image"][..., 0], atol=0.51)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        _prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/images: no such folder.*--images="):
        _prepare(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "images").mkdir()
    (tmp_path / "empty" / "masks").mkdir()
    (tmp_path / "empty" / "masks" / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match=r"empty: no pictures \(PNG, TIFF, JPEG, BMP\) in images/ or masks/") as e:
        _prepare(tmp_path / "empty", tmp_path / "out")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"inputs: no such folder.*--inputs="):
        _prepare(tmp_path / "empty", tmp_path / "out", task="regression")


def test_truncated_and_16_bit_inputs_name_the_file(tmp_path):
    src = _segmentation(tmp_path / "src", range(4))
    path = src / "images" / "2.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"images/2.png: unreadable or truncated image") as e:
        _prepare(src, tmp_path / "out")
    assert "\n" not in str(e.value)
    m = _prepare(src, tmp_path / "out", skip_bad=True)
    assert [os.path.basename(s["file"]) for s in m["skipped"]] == ["2.png"]
    write_image(str(src / "images" / "2.png"), np.full((32, 32), 1000, np.uint16))
    with pytest.raises(DataError, match=r"images/2.png: a uint16 picture; only 8-bit images are stored"):
        _prepare(src, tmp_path / "out16")


def test_overwrite_never_replaces_the_data_dir(tmp_path):
    src = _segmentation(tmp_path / "src", ["a", "b", "c", "d"])
    for out in (src, src / "images", tmp_path):
        with pytest.raises(DataError, match="one folder contains the other"):
            _prepare(src, out, overwrite=True)
    assert len(os.listdir(src / "images")) == 4


def test_anonymise_leaves_no_id_or_source_path_under_out_dir(tmp_path):
    names = [f"{p}_{i}" for p in ("Wombat", "Platypus", "Echidna", "Numbat") for i in (1, 2)]
    src = _segmentation(tmp_path / "Cohort_Quokka", names)
    os.remove(src / "masks" / "Numbat_2.png")  # skipped: the manifest names its file
    out = tmp_path / "out"
    m = _prepare(src, out, anonymise=True, skip_bad=True, patient_regex=r"^(\w+?)_\d+$", val_fraction=0,
                 test_cases="Wombat")
    for folder, _, files in os.walk(out):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert not [w for w in ["Wombat", "Platypus", "Echidna", "Numbat", "Cohort_Quokka"] if w.encode() in data]
    ids = json.load(open(tmp_path / "Cohort_Quokka.ids.json"))["ids"]
    patients = {p["patient"]: p for s in m["splits"].values() for p in s["patients"]}
    assert sorted(ids[p]["id"] for p in patients) == ["Echidna", "Numbat", "Platypus", "Wombat"]
    assert [ids[p]["id"] for p in m["split"]["test_cases"]] == ["Wombat"]
    assert [ids[c]["id"] for c in patients[m["split"]["test_cases"][0]]["pictures"]] == ["Wombat_1", "Wombat_2"]
    for split in ("train", "test"):  # one pseudonym per patient: the split stays by patient
        assert {r["patient_id"].decode() for r in _records(out, split, decoded=False)} == {
            p["patient"] for p in m["splits"][split]["patients"]}


def test_a_picture_over_max_voxels_is_refused(tmp_path):
    src = _segmentation(tmp_path / "src", ["a", "b", "c", "d"])  # 32x32 RGB: 3072 values
    with pytest.raises(DataError, match=r"a.png: .*max_voxels") as e:
        _prepare(src, tmp_path / "out", max_voxels=3000)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_main_returns_2_with_one_error_line(tmp_path, capsys):
    src = _segmentation(tmp_path / "src", range(4))
    assert pictures.main([f"--data_dir={tmp_path / 'missing'}", f"--out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such folder" in err
    _png(src / "masks" / "9.png", _mask())
    assert pictures.main([f"--data_dir={src}", f"--out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "masks/9.png" in err and "--skip_bad" in err
    assert pictures.main([f"--data_dir={src}", f"--out_dir={tmp_path / 'out'}", "--skip_bad",
                          "--val_fraction=0.25", "--test_fraction=0"]) == 0
    out = capsys.readouterr().out
    assert "train 3 patients/3 pictures/3 records" in out and "skipped 1" in out


def test_cli_runs_without_jax(tmp_path):
    src = _regression(tmp_path / "src", range(3))
    code = ("import sys; from data_prep import pictures; rc = pictures.main(sys.argv[1:]); "
            "assert 'jax' not in sys.modules, 'data_prep imported JAX'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, f"--data_dir={src}", f"--out_dir={tmp_path / 'out'}",
                           "--task=regression", "--val_fraction=0.34", "--test_fraction=0"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "targets scaled by 1/255" in done.stdout


def test_real_lungsegdb(tmp_path):
    if not LUNGSEGDB.is_dir():
        pytest.skip(f"LungSegDB slices not found at {LUNGSEGDB} (they live beside the repository, never inside it)")
    m = _prepare(LUNGSEGDB, tmp_path / "lung", skip_bad=True, val_fraction=0.25, test_fraction=0)
    # 16 image/mask pairs; masks 422 and 439 have no image.
    assert sum(s["num_examples"] for s in m["splits"].values()) == 16
    assert sorted(os.path.basename(s["file"]) for s in m["skipped"]) == ["422.png", "439.png"]
    assert m["image_shape"] == [512, 512, 1] and m["num_classes"] == 2
    rec = _records(tmp_path / "lung", "val")[0]
    assert set(np.unique(rec["mask"]).tolist()) == {0, 1} and 0.05 < rec["mask"].mean() < 0.6
