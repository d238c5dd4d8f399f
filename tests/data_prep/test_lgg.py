"""data_prep.lgg: splits, records, manifest, and every bad-input case."""

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from data_prep import common, lgg
from unet_jax.data.tfrecord import decode_example, iter_records
from unet_jax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _records(out_dir, split):
    manifest = json.load(open(os.path.join(out_dir, "manifest.json")))
    return [decode_example(r) for s in manifest["splits"][split]["shards"]
            for r in iter_records(os.path.join(out_dir, s["file"]))]


def _prepare(src, out, **kw):
    kw = {"val_fraction": 0.2, "test_fraction": 0.2, "progress": False, "command": "test", **kw}
    return lgg.prepare(str(src), str(out), **kw)


def test_phantoms_split_counts_and_order(phantom_dir, prepared_dir):
    manifest = json.load(open(os.path.join(prepared_dir, "manifest.json")))
    splits = manifest["splits"]
    assert [splits[s]["num_patients"] for s in common.SPLITS] == [4, 1, 1]
    patients = [set(p["patient"] for p in splits[s]["patients"]) for s in common.SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert set.union(*patients) == set(os.listdir(phantom_dir))
    assert manifest["image_shape"] == [32, 32, 3]
    assert manifest["source_files"] == 6 * 12 * 2
    assert manifest["skipped"] == []
    # 4 train patients x 12 slices in shards of 20: 20 + 20 + 8.
    assert [s["num_records"] for s in splits["train"]["shards"]] == [20, 20, 8]
    assert splits["train"]["shards"][0]["file"] == "train-00000-of-00003.tfrecord"
    for split in common.SPLITS:
        recs = _records(prepared_dir, split)
        assert len(recs) == splits[split]["num_slices"] == 12 * splits[split]["num_patients"]
        assert sum(int(r["tumor_pixels"][0]) > 0 for r in recs) == splits[split]["num_tumor_slices"]
        for r in recs:  # patient_index points into the manifest's sorted patient list
            assert splits[split]["patients"][int(r["patient_index"][0])]["patient"] == r["patient_id"].decode()
        # Slices in numeric order per patient: 1, 2, ..., 10, 11, 12 (not 1, 10, 11, 12, 2, ...).
        for p in splits[split]["patients"]:
            numbers = [int(r["slice"][0]) for r in recs if r["patient_id"].decode() == p["patient"]]
            assert numbers == list(range(1, 13))


def test_records_hold_the_tiff_content(phantom_dir, prepared_dir):
    rec = _records(prepared_dir, "val")[10]
    patient, n = rec["patient_id"].decode(), int(rec["slice"][0])
    image = tifffile.imread(os.path.join(phantom_dir, patient, f"{patient}_{n}.tif"))
    mask = tifffile.imread(os.path.join(phantom_dir, patient, f"{patient}_{n}_mask.tif"))
    assert rec["shape"].tolist() == list(image.shape)
    np.testing.assert_array_equal(np.frombuffer(rec["image"], np.uint8).reshape(image.shape), image)
    np.testing.assert_array_equal(np.frombuffer(rec["mask"], np.uint8).reshape(mask.shape), mask // 255)
    assert int(rec["tumor_pixels"][0]) == int((mask == 255).sum())


def test_split_is_seeded_and_k_fold_partitions_patients():
    patients = [f"TCGA_XX_{i:04d}_20000101" for i in range(11)]
    a = common.split_patients(patients, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a == common.split_patients(patients, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a != common.split_patients(patients, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert [len(a[s]) for s in common.SPLITS] == [8, 2, 1]
    tests = []
    for fold in range(4):
        s = common.split_patients(patients, val_fraction=0.2, test_fraction=0, seed=0, num_folds=4, fold=fold)
        assert not set(s["test"]) & set(s["train"]) and not set(s["test"]) & set(s["val"])
        assert sorted(s["train"] + s["val"] + s["test"]) == sorted(patients)
        assert len(s["val"]) == 2
        tests += s["test"]
    assert sorted(tests) == sorted(patients)  # every patient is tested exactly once
    with pytest.raises(DataError, match="fold"):
        common.split_patients(patients, val_fraction=0.2, test_fraction=0, seed=0, num_folds=4, fold=4)


def test_reference_split_sizes_on_110_patients():
    patients = [f"TCGA_XX_{i:04d}_20000101" for i in range(110)]
    s = common.split_patients(patients, val_fraction=0.18, test_fraction=0.1, seed=0)
    assert [len(s[k]) for k in common.SPLITS] == [79, 20, 11]


def test_checksum_follows_the_file_list(phantom_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(phantom_dir, src)
    a = _prepare(src, tmp_path / "a")["source_checksum"]
    assert a == _prepare(src, tmp_path / "b")["source_checksum"]
    patient = sorted(os.listdir(src))[0]
    os.remove(src / patient / f"{patient}_12.tif")
    os.remove(src / patient / f"{patient}_12_mask.tif")
    assert a != _prepare(src, tmp_path / "c")["source_checksum"]


def test_real_subset(real_lgg_dir, tmp_path):
    m = _prepare(real_lgg_dir, tmp_path / "real", val_fraction=0.2, test_fraction=0.2)
    splits = m["splits"]
    assert sum(s["num_patients"] for s in splits.values()) == 10
    assert sum(s["num_slices"] for s in splits.values()) == 223
    assert sum(s["num_tumor_slices"] for s in splits.values()) == 97
    assert [s["num_patients"] for s in splits.values()] == [6, 2, 2]
    names = [set(p["patient"] for p in s["patients"]) for s in splits.values()]
    assert sum(len(n) for n in names) == len(set.union(*names)) == 10
    assert m["image_shape"] == [256, 256, 3]
    by_patient = {p["patient"]: p for s in splits.values() for p in s["patients"]}
    assert by_patient["TCGA_HT_A5RC_19990831"]["num_slices"] == 32
    assert by_patient["TCGA_HT_A5RC_19990831"]["num_tumor_slices"] == 15
    recs = _records(str(tmp_path / "real"), "train")
    numbers = [int(r["slice"][0]) for r in recs if r["patient_id"] == b"TCGA_HT_A5RC_19990831"]
    assert numbers in ([], list(range(1, 33)))


# --- bad input -------------------------------------------------------------

def _first(src):
    patient = sorted(os.listdir(src))[0]
    return patient, src / patient


def _break_missing_mask(src):
    patient, folder = _first(src)
    os.remove(folder / f"{patient}_3_mask.tif")
    return f"{patient}_3.tif: image without a mask"


def _break_missing_image(src):
    patient, folder = _first(src)
    os.remove(folder / f"{patient}_4.tif")
    return f"{patient}_4_mask.tif: mask without an image"


def _break_mask_shape(src):
    patient, folder = _first(src)
    tifffile.imwrite(folder / f"{patient}_5_mask.tif", np.zeros((16, 32), np.uint8))
    return rf"{patient}_5_mask.tif: mask shape \(16, 32\) does not match"


def _break_truncated(src):
    patient, folder = _first(src)
    path = folder / f"{patient}_6.tif"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return f"{patient}_6.tif: unreadable or truncated TIFF"


def _break_garbage(src):
    patient, folder = _first(src)
    (folder / f"{patient}_7_mask.tif").write_bytes(b"this is not a tiff")
    return f"{patient}_7_mask.tif: unreadable or truncated TIFF"


def _break_mask_values(src):
    patient, folder = _first(src)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:8, 4:8] = 128
    tifffile.imwrite(folder / f"{patient}_8_mask.tif", mask)
    return rf"{patient}_8_mask.tif: mask values \[0, 128\] are not binary"


def _break_image_shape(src):
    patient, folder = _first(src)
    tifffile.imwrite(folder / f"{patient}_9.tif", np.zeros((32, 32, 4), np.uint8))
    return rf"{patient}_9.tif: image shape \(32, 32, 4\) differs"


BREAKERS = [_break_missing_mask, _break_missing_image, _break_mask_shape, _break_truncated,
            _break_garbage, _break_mask_values, _break_image_shape]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_bad_input_stops_with_one_line_or_is_skipped(phantom_dir, tmp_path, breaker):
    src = tmp_path / "src"
    shutil.copytree(phantom_dir, src)
    expected = breaker(src)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=expected) as e:
        _prepare(src, out)
    assert "\n" not in str(e.value)
    assert not out.exists() and os.listdir(tmp_path) == ["src"]  # nothing half-written
    m = _prepare(src, out, skip_bad=True)
    assert len(m["skipped"]) == 1
    assert expected.split(":")[0].replace("\\", "") in os.path.basename(m["skipped"][0]["file"])
    assert sum(s["num_slices"] for s in m["splits"].values()) == 6 * 12 - 1


@pytest.mark.parametrize("copy", ["{p}_01.tif", "{p}_1.tiff"])
def test_two_files_of_one_slice_are_named_not_one_silently_dropped(phantom_dir, tmp_path, copy):
    src = tmp_path / "src"
    shutil.copytree(phantom_dir, src)
    patient, folder = _first(src)
    shutil.copy(folder / f"{patient}_1.tif", folder / copy.format(p=patient))
    with pytest.raises(DataError, match="slice 1 again, beside") as e:
        _prepare(src, tmp_path / "out")
    assert "\n" not in str(e.value) and f"{patient}_1.tif" in str(e.value) and copy.format(p=patient) in str(e.value)


def test_a_tiff_over_max_voxels_is_refused_from_its_header(phantom_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(phantom_dir, src)
    with pytest.raises(DataError, match=r"_1.tif: .*max_voxels") as e:  # 32x32x3 = 3072 values per slice
        _prepare(src, tmp_path / "out", max_voxels=3000)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    assert _prepare(src, tmp_path / "out", max_voxels=3072)["splits"]["train"]["num_slices"] > 0


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        _prepare(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no patient folders"):
        _prepare(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "TCGA_CS_0001_20000101").mkdir()
    (tmp_path / "empty" / "TCGA_CS_0002_20000101").mkdir()
    with pytest.raises(DataError, match="TCGA_CS_0001_20000101: patient folder holds no image/mask pairs"):
        _prepare(tmp_path / "empty", tmp_path / "out")


def test_existing_output_refused_unless_overwrite(phantom_dir, prepared_dir, tmp_path):
    out = tmp_path / "out"
    _prepare(phantom_dir, out)
    before = sorted(os.listdir(out))
    with pytest.raises(DataError, match="pass --overwrite"):
        _prepare(phantom_dir, out)
    assert sorted(os.listdir(out)) == before
    m = _prepare(phantom_dir, out, overwrite=True, records_per_shard=1000)
    assert [len(m["splits"][s]["shards"]) for s in common.SPLITS] == [1, 1, 1]
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("out", [".", "kaggle_3m", "kaggle_3m/TCGA_PH_0001"])
def test_overwrite_never_replaces_the_data_dir_or_a_folder_around_it(phantom_dir, tmp_path, out):
    src = tmp_path / "kaggle_3m"
    shutil.copytree(phantom_dir, src)
    before = sorted(os.listdir(src))
    with pytest.raises(DataError, match="one folder contains the other") as e:
        _prepare(src, tmp_path / out, overwrite=True)
    assert "\n" not in str(e.value) and sorted(os.listdir(src)) == before


def test_anonymise_leaves_no_id_or_source_path_under_out_dir(phantom_dir, tmp_path):
    src = tmp_path / "Cohort_Quokka"
    shutil.copytree(phantom_dir, src)
    patients = sorted(os.listdir(src))
    os.remove(src / patients[0] / f"{patients[0]}_2_mask.tif")  # a skipped slice names its file in the manifest
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "data_prep.lgg", f"--data_dir={src}", f"--out_dir={out}", "--anonymise",
                    "--skip_bad", "--val_fraction=0.2", "--test_fraction=0.2"], cwd=ROOT, check=True,
                   capture_output=True)
    for folder, _, files in os.walk(out):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert not [w for w in [*patients, "Cohort_Quokka"] if w.encode() in data], name
    ids = json.load(open(tmp_path / "Cohort_Quokka.ids.json"))["ids"]
    assert stat.S_IMODE((tmp_path / "Cohort_Quokka.ids.json").stat().st_mode) == 0o600  # it holds the key
    manifest = json.load(open(out / "manifest.json"))
    pseudonyms = {p["patient"] for s in manifest["splits"].values() for p in s["patients"]}
    assert sorted(ids[p]["id"] for p in pseudonyms) == patients
    assert manifest["skipped"][0]["file"].startswith("<data_dir>/case_")
    for split in common.SPLITS:  # one pseudonym per patient: the split stays by patient
        written = {r["patient_id"].decode() for r in _records(out, split)}
        assert written == {p["patient"] for p in manifest["splits"][split]["patients"]}
    again = _prepare(src, tmp_path / "again", anonymise=True, skip_bad=True)  # the saved key: the same pseudonyms
    assert {p["patient"] for s in again["splits"].values() for p in s["patients"]} == pseudonyms
    with pytest.raises(DataError, match="inside --out_dir"):
        _prepare(src, tmp_path / "x", anonymise=True, anonymise_map=str(tmp_path / "x" / "ids.json"))


def test_cli_success_and_one_line_error(phantom_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "data_prep.lgg", f"--data_dir={phantom_dir}", f"--out_dir={out}",
           "--val_fraction=0.2", "--test_fraction=0.2"]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "train 4 patients/48 slices" in ok.stdout
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["command"].startswith("python") and "-m data_prep.lgg" in manifest["command"]
    assert f"--out_dir={out}" in manifest["command"]
    bad = subprocess.run(cmd[:3] + [f"--data_dir={tmp_path / 'missing'}", f"--out_dir={tmp_path / 'x'}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ") and "no such folder" in bad.stderr


def test_volumes_stack_slices_in_order_and_pad_the_last_block(phantom_dir, tmp_path):
    out = tmp_path / "volumes"
    manifest = _prepare(phantom_dir, out, volume_depth=8, size=16)
    assert manifest["layout"] == "volumes" and manifest["image_shape"] == [16, 16, 8, 3]
    assert manifest["source_image_shape"] == [32, 32, 3]
    train = manifest["splits"]["train"]
    assert train["num_examples"] == 2 * train["num_patients"] and train["num_slices"] == 12 * train["num_patients"]
    records = _records(out, "train")
    first, second = records[0], records[1]
    patient = first["patient_id"].decode()
    np.testing.assert_array_equal(first["slices"], np.arange(1, 9))
    np.testing.assert_array_equal(second["slices"], [9, 10, 11, 12, -1, -1, -1, -1])
    assert first["slice"][0] == 1 and second["slice"][0] == 9
    image = np.frombuffer(second["image"], np.uint8).reshape(16, 16, 8, 3)
    mask = np.frombuffer(second["mask"], np.uint8).reshape(16, 16, 8)
    assert not image[:, :, 4:].any() and not mask[:, :, 4:].any()  # zero padding slices
    # Slice 10 in-plane: the 2x2 block mean of the TIFF, the mask thresholded at half.
    tiff = tifffile.imread(os.path.join(phantom_dir, patient, f"{patient}_10.tif")).astype(np.float64)
    expected = np.round(tiff.reshape(16, 2, 16, 2, 3).mean((1, 3)))
    np.testing.assert_array_equal(image[:, :, 1], expected)
    tiff_mask = tifffile.imread(os.path.join(phantom_dir, patient, f"{patient}_10_mask.tif")) > 0
    np.testing.assert_array_equal(mask[:, :, 1], tiff_mask.reshape(16, 2, 16, 2).mean((1, 3)) >= 0.5)
    assert second["tumor_pixels"][0] == mask.sum()


def test_volume_and_size_flags_are_checked(phantom_dir, tmp_path):
    with pytest.raises(DataError, match=r"slice size 32x32 is not a multiple of --size=12"):
        _prepare(phantom_dir, tmp_path / "a", size=12)
    with pytest.raises(DataError, match="--volume_depth=-1"):
        _prepare(phantom_dir, tmp_path / "b", volume_depth=-1)
