"""data_prep.volumes: both layouts, checks, label maps, intensities, resampling,
slices, splits, atomic output, the command line and the real MS/BRATS folders."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep import volumes
from data_prep.phantoms import chest, lesions
from unet_jax.data import pipeline
from unet_jax.data.medical_io import Geometry, Volume, read_volume, write_volume
from unet_jax.data.tfrecord import decode_example
from unet_jax.errors import DataError
from unet_jax.preprocess.intensity import CT_WINDOWS
from unet_jax.preprocess.volumes import settings_from_manifest

REAL = Path(__file__).resolve().parents[3] / "shared" / "data"  # beside the repository, never inside it
SHAPE = (10, 12, 6)  # hand-made cases: a head box of non-zero voxels with a lesion block inside
HEAD = (slice(1, 9), slice(2, 10), slice(1, 5))
LESION = (slice(3, 6), slice(4, 7), slice(2, 4))


def _prepare(src, out, **kw):
    return volumes.prepare(str(src), str(out), **{"progress": False, "command": "test", **kw})


def _records(out, split):
    """(pipeline.decode element, raw features with the geometry JSON parsed) per record of `split`."""
    source = pipeline.split_source(str(out), split)
    pairs = []
    for i in range(len(source)):
        raw = decode_example(source[i])
        pairs.append((pipeline.decode(source[i]), {**raw, "geometry": json.loads(raw["geometry"])}))
    return pairs


def _patients(manifest):
    return {p["patient"]: p for s in manifest["splits"].values() for p in s["patients"]}


def _write(path, array, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_volume(str(path), Volume(np.asarray(array), Geometry(tuple(spacing), tuple(origin),
                                                               tuple(np.eye(3).ravel()))))


def _channel(seed, low=50.0, high=150.0, shape=SHAPE):
    x = np.zeros(shape, np.float32)
    x[HEAD] = np.random.default_rng(seed).uniform(low, high, x[HEAD].shape)
    return x


def _label(value=1, dtype=np.uint8, shape=SHAPE):
    y = np.zeros(shape, dtype)
    y[LESION] = value
    return y


def _make_cases(root, names=("case1", "case2", "case3")):
    """Per-case folders of flair.nii.gz, t1.nii.gz and seg.nii.gz (10x12x6 at 1x1x2 mm)."""
    for i, name in enumerate(names):
        _write(root / name / "flair.nii.gz", _channel(2 * i))
        _write(root / name / "t1.nii.gz", _channel(2 * i + 1, 20.0, 80.0))
        _write(root / name / "seg.nii.gz", _label())
    return root


CASES = {"channels": "flair*,t1*", "label": "seg*"}


@pytest.fixture(scope="module")
def lesion_dir(tmp_path_factory):
    """Five 24x24x8 lesion phantoms at 1x1x3 mm: FLAIR.nii.gz, T1.nii.gz, lesions.nii.gz per case."""
    out = tmp_path_factory.mktemp("lesions") / "cases"
    lesions.write_lesion_phantoms(out, num_cases=5, shape=(24, 24, 8), spacing=(1.0, 1.0, 3.0), seed=0,
                                  progress=False)
    return out


@pytest.fixture(scope="module")
def lesion_prepared(lesion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "volumes"
    return out, _prepare(lesion_dir, out, channels="FLAIR*,T1*", label="lesions*")


# --- the per-case layout, end to end ---------------------------------------------

def test_per_case_layout_manifest(lesion_dir, lesion_prepared):
    out, m = lesion_prepared
    on_disk = json.load(open(out / "manifest.json"))
    assert on_disk["splits"] == m["splits"]
    assert (m["dataset"], m["layout"], m["source_layout"]) == ("volumes", "volumes", "folders")
    assert (m["num_channels"], m["num_classes"], m["labelled"]) == (2, 2, True)
    assert m["command"] == "test" and m["channels"] == ["FLAIR*", "T1*"] and m["image_dtype"] == "float32"
    assert len(m["source_checksum"]) == 64 and m["source_files"] == 5 * 3
    assert m["preprocessing"]["intensity"] == [{"method": "zscore", "foreground": "nonzero"}] * 2
    assert m["preprocessing"]["crop"] == "nonzero bounding box" and m["preprocessing"]["spacing"] is None
    assert m["skipped"] == []
    names = sorted(os.listdir(lesion_dir))
    members = [[p["patient"] for p in m["splits"][s]["patients"]] for s in ("train", "val", "test")]
    assert [len(x) for x in members] == [3, 1, 1]
    assert sorted(sum(members, [])) == names  # every case in exactly one split
    for s in m["splits"].values():
        assert s["num_examples"] == s["num_patients"] == len(s["patients"])
        assert sum(sh["num_records"] for sh in s["shards"]) == s["num_examples"]


def test_per_case_records_geometry_and_zscore(lesion_dir, lesion_prepared):
    out, m = lesion_prepared
    seen = 0
    for split in ("train", "val", "test"):
        patients = m["splits"][split]["patients"]
        for element, raw in _records(out, split):
            case = raw["patient_id"].decode()
            entry = patients[int(element["patient_index"])]
            assert entry["patient"] == case
            flair, t1, lesions = (read_volume(lesion_dir / case / f) for f in ("FLAIR.nii.gz", "T1.nii.gz",
                                                                                 "lesions.nii.gz"))
            geometry = raw["geometry"]
            assert geometry["source"] == {**flair.geometry.to_dict(), "shape": [24, 24, 8]}
            assert geometry["source"]["spacing"] == [1.0, 1.0, 3.0] and geometry["spacing"] == [1.0, 1.0, 3.0]
            assert geometry["resampled_shape"] == [24, 24, 8]
            np.testing.assert_allclose(raw["spacing"], [1, 1, 3])
            np.testing.assert_allclose(element["spacing"], [1, 1, 3])
            crop = tuple(slice(lo, hi) for lo, hi in geometry["crop"])
            image, mask = element["image"], element["mask"]
            shape = tuple(hi - lo for lo, hi in geometry["crop"])
            assert image.dtype == np.float32 and image.shape == (*shape, 2)
            assert mask.dtype == np.float32 and mask.shape == (*shape, 1)
            assert entry["shape"] == list(shape) and np.prod(shape) < 24 * 24 * 8  # cropped to the head
            np.testing.assert_array_equal(mask[..., 0], lesions.array[crop])
            # The crop box holds every lesion voxel (lesions lie inside the head).
            assert mask.sum() == lesions.array.sum() == entry["foreground_voxels"] == raw["foreground_voxels"][0]
            head = np.any(np.stack([flair.array, t1.array]) != 0, axis=0)
            assert head[crop].sum() == head.sum()
            head = head[crop]
            for c, source in enumerate((flair, t1)):
                x = image[..., c]
                assert abs(x[head].mean()) < 1e-4 and abs(x[head].std() - 1) < 1e-4
                assert np.all(x[~head] == 0)
                # The manifest's statistics are those of the source's non-zero voxels, and applying
                # them to the source reproduces the record.
                values = source.array[source.array != 0].astype(np.float64)
                stats = entry["channels"][c]
                assert stats["mean"] == pytest.approx(values.mean(), abs=1e-5)
                assert stats["std"] == pytest.approx(values.std(), abs=1e-5)
                again = np.where(head, (source.array[crop] - stats["mean"]) / stats["std"], 0)
                np.testing.assert_allclose(x, again, atol=1e-4)
            seen += 1
    assert seen == 5


# --- the Decathlon layout and the {case} placeholder ----------------------------------

def _decathlon(root, cases=("caseA", "caseB", "caseC")):
    for i, case in enumerate(cases):
        _write(root / "imagesTr" / f"{case}_0000.nii.gz", _channel(2 * i))
        _write(root / "imagesTr" / f"{case}_0001.nii.gz", _channel(2 * i + 1))
        _write(root / "labelsTr" / f"{case}.nii.gz", _label())
    (root / "dataset.json").write_text("{}")
    return root


def test_decathlon_layout_is_detected(tmp_path):
    src = _decathlon(tmp_path / "Task99")
    m = _prepare(src, tmp_path / "out")
    assert m["source_layout"] == "decathlon" and m["num_channels"] == 2
    assert m["channels"] == ["caseA_0000.nii.gz", "caseA_0001.nii.gz"]  # the first case's files
    assert sorted(_patients(m)) == ["caseA", "caseB", "caseC"]
    assert all(p["foreground_voxels"] == 18 for p in _patients(m).values())


def test_decathlon_release_names_images_as_their_labels(tmp_path):
    """The Decathlon's own one-channel release: imagesTr/<case>.nii.gz beside
    labelsTr/<case>.nii.gz (hippocampus_001.nii.gz), no _0000 suffix."""
    src = tmp_path / "Task04"
    for i, case in enumerate(("hippocampus_001", "hippocampus_003", "hippocampus_004")):
        _write(src / "imagesTr" / f"{case}.nii.gz", _channel(i))
        _write(src / "labelsTr" / f"{case}.nii.gz", _label())
    _write(src / "imagesTr" / "stray.nii.gz", _channel(9))  # no label of its name: a problem, not a case
    m = _prepare(src, tmp_path / "out", val_fraction=0, test_fraction=0, skip_bad=True)
    assert sorted(_patients(m)) == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert m["num_channels"] == 1 and all(p["foreground_voxels"] == 18 for p in _patients(m).values())
    assert [s["file"] for s in m["skipped"]] == [str(src / "imagesTr" / "stray.nii.gz")]


def test_decathlon_channel_in_two_formats_names_both_files(tmp_path):
    src = _decathlon(tmp_path / "Task99")
    _write(src / "imagesTr" / "caseB_0001.nii", _channel(7))  # beside caseB_0001.nii.gz: which one is meant?
    with pytest.raises(DataError, match=r"imagesTr/caseB_0001.nii.gz: case caseB channel 0001 again, beside "
                                        r"caseB_0001.nii;") as e:
        _prepare(src, tmp_path / "out")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["imagesTr/caseB_0001.nii.gz", "labelsTr/caseB.nii.gz"])
def test_decathlon_case_missing_a_channel_or_label(tmp_path, missing):
    src = _decathlon(tmp_path / "Task99")
    os.remove(src / missing)
    named = str(src / ("imagesTr/caseB" if "images" in missing else missing))
    with pytest.raises(DataError) as e:
        _prepare(src, tmp_path / "out")
    assert str(e.value).startswith(f"{named}: ") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    m = _prepare(src, tmp_path / "out", skip_bad=True)
    assert [s["file"] for s in m["skipped"]] == [named]
    assert sorted(_patients(m)) == ["caseA", "caseC"]


def test_case_placeholder_finds_cases_side_by_side(tmp_path):
    """'{case}_image.nrrd' names each case by what {case} matched, as a path below
    --data_dir: lung1, lung2 at the top, more/lung3 in a subfolder."""
    src = tmp_path / "ct"
    for folder, case in (("", "lung1"), ("", "lung2"), ("more", "lung3")):
        _write(src / folder / f"{case}_image.nrrd", _channel(len(case)))
        _write(src / folder / f"{case}_label.nrrd", _label())
    (src / "notes.txt").write_text("not a case")
    m = _prepare(src, tmp_path / "out", channels="{case}_image.nrrd", label="{case}_label.nrrd",
                 val_fraction=0, test_fraction=0)
    assert m["splits"]["train"]["num_patients"] == 3 and m["skipped"] == []
    assert sorted(_patients(m)) == ["lung1", "lung2", "more/lung3"]
    for element, raw in _records(tmp_path / "out", "train"):
        assert element["image"].shape == (8, 8, 4, 1) and element["mask"].sum() == 18


# --- bad input --------------------------------------------------------------------
# Each breaker spoils case1 and returns the files the one-line error must name.

def _break_label_spacing(src):
    _write(src / "case1" / "seg.nii.gz", _label(), spacing=(1.0, 1.0, 3.0))
    return ["case1/seg.nii.gz", "case1/flair.nii.gz"]


def _break_label_origin(src):
    _write(src / "case1" / "seg.nii.gz", _label(), origin=(0.0, 0.0, 4.0))
    return ["case1/seg.nii.gz", "case1/flair.nii.gz"]


def _break_channel_shape(src):
    _write(src / "case1" / "t1.nii.gz", _channel(1, shape=(10, 12, 7)))
    return ["case1/t1.nii.gz", "case1/flair.nii.gz"]


def _break_fractional_label(src):
    _write(src / "case1" / "seg.nii.gz", _label(0.5, np.float32))
    return ["case1/seg.nii.gz", "not integers"]


def _break_negative_label(src):
    _write(src / "case1" / "seg.nii.gz", _label(-1, np.int16))
    return ["case1/seg.nii.gz", "need 0..255"]


def _break_nan(src):
    x = _channel(1)
    x[4, 4, 2] = np.nan
    os.remove(src / "case1" / "t1.nii.gz")
    _write(src / "case1" / "t1.nrrd", x)
    return ["case1/t1.nrrd", "1 NaN or infinite voxels"]


def _break_inf(src):
    x = _channel(0)
    x[4, 4, 2] = np.inf
    x[4, 4, 3] = -np.inf
    os.remove(src / "case1" / "flair.nii.gz")
    _write(src / "case1" / "flair.mha", x)
    return ["case1/flair.mha", "2 NaN or infinite voxels"]


def _break_unreadable(src):
    (src / "case1" / "t1.nii.gz").write_bytes(b"not a volume at all")
    return ["case1/t1.nii.gz"]


def _break_missing_label(src):
    os.remove(src / "case1" / "seg.nii.gz")
    return ["case1", "no label matches 'seg*'", "--unlabelled"]


def _break_missing_channel(src):
    os.remove(src / "case1" / "t1.nii.gz")
    return ["case1", "no volume matches channel pattern 't1*'"]


def _break_two_matches(src):
    shutil.copy(src / "case1" / "flair.nii.gz", src / "case1" / "flair_2.nii.gz")
    return ["case1", "flair.nii.gz, flair_2.nii.gz", "matches 2 files"]


BREAKERS = [_break_label_spacing, _break_label_origin, _break_channel_shape, _break_fractional_label,
            _break_negative_label, _break_nan, _break_inf, _break_unreadable, _break_missing_label,
            _break_missing_channel, _break_two_matches]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__[7:])
def test_bad_case_stops_with_one_line_or_is_skipped(tmp_path, breaker):
    src = _make_cases(tmp_path / "src")
    expected = breaker(src)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        _prepare(src, out, **CASES)
    message = str(e.value)
    assert "\n" not in message and all(x in message for x in expected), message
    assert os.listdir(tmp_path) == ["src"]  # nothing half-written, no temporary sibling
    m = _prepare(src, out, skip_bad=True, **CASES)
    assert len(m["skipped"]) == 1
    skipped = f"{m['skipped'][0]['file']}: {m['skipped'][0]['reason']}"
    assert "case1" in m["skipped"][0]["file"] and all(x in skipped for x in expected), skipped
    assert sorted(_patients(m)) == ["case2", "case3"]
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]


def test_nifti_nan_and_inf_are_refused(tmp_path):
    # ITK 5.4's NIfTI reader turns NaN and inf into 0; medical_io checks the raw voxels.
    src = _make_cases(tmp_path / "src")
    x = _channel(1)
    x[4, 4, 2] = np.nan
    x[1, 1, 1] = -np.inf
    _write(src / "case1" / "t1.nii.gz", x)
    with pytest.raises(DataError, match="case1/t1.nii.gz: unusable NIfTI file \\(2 NaN or infinite voxels\\)"):
        _prepare(src, tmp_path / "out", **CASES)


def test_float_stored_integral_label_is_accepted(tmp_path):
    src = _make_cases(tmp_path / "src")
    y = np.zeros(SHAPE, np.float32)
    y[LESION] = 1.0
    y[4, 5, 2] = 2.0
    for case in ("case1", "case2", "case3"):
        _write(src / case / "seg.nii.gz", y)
    m = _prepare(src, tmp_path / "out", **CASES)
    assert m["num_classes"] == 3 and all(p["labels"] == [0, 1, 2] for p in _patients(m).values())


def test_unlabelled_cases_go_to_predict(tmp_path):
    src = _make_cases(tmp_path / "src")
    os.remove(src / "case2" / "seg.nii.gz")
    m = _prepare(src, tmp_path / "out", unlabelled=True, **CASES)
    assert m["labelled"] is False and m["skipped"] == []
    assert [m["splits"][s]["num_patients"] for s in ("train", "val", "test", "predict")] == [0, 0, 0, 3]
    records = _records(tmp_path / "out", "predict")
    assert len(records) == 3 and all(element["mask"].sum() == 0 for element, _ in records)
    # Without --label the per-case layout needs --unlabelled.
    with pytest.raises(DataError, match="--unlabelled"):
        _prepare(src, tmp_path / "out2", channels="flair*,t1*")
    assert _prepare(src, tmp_path / "out3", channels="flair*,t1*", unlabelled=True)["labelled"] is False


@pytest.mark.parametrize("kwargs, match", [
    ({"intensity": "histogram"}, r"--intensity='histogram': give one of zscore, ct, none"),
    ({"intensity": "zscore,ct,none"}, r"one per channel \(2 here\)"),
    ({"intensity": "ct", "ct_window": "400,-1000"}, r"--ct_window='400,-1000': the lower bound must be below"),
    ({"intensity": "ct", "ct_window": "lungs"}, r"--ct_window='lungs': give comma-separated numbers"),
    ({"intensity": "ct", "ct_window": "1,2,3"}, r"--ct_window='1,2,3': give 2 numbers"),
    ({"label_map": "1,2=>1"}, r"--label_map='1,2=>1': write rules like"),
    ({"label_map": "a->1"}, r"--label_map='a->1'"),
    ({"label_map": "4->300"}, r"target labels must lie in 0..255"),
    ({"slices": "axial"}, r"--slices needs --slice_size=H,W"),
    ({"slices": "oblique", "slice_size": "32,32"}, r"--slices='oblique': choose axial"),
    ({"slice_size": "32", "slices": "axial"}, r"--slice_size='32': give 2 numbers"),
    ({"spacing": "1,0,1"}, r"--spacing='1,0,1': voxel sizes must be positive"),
    ({"records_per_shard": 0}, r"--records_per_shard=0"),
    ({"layout": "nested"}, r"--layout='nested'"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, r"split fractions"),
], ids=lambda x: x if isinstance(x, str) else None)
def test_bad_settings_are_one_line_errors(tmp_path, kwargs, match):
    src = _make_cases(tmp_path / "src")
    with pytest.raises(DataError, match=match) as e:
        _prepare(src, tmp_path / "out", **{**CASES, **kwargs})
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["src"]


def test_no_cases(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no cases found; check --channels/--label") as e:
        _prepare(tmp_path / "empty", tmp_path / "out", **CASES)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="nope: no such folder"):
        _prepare(tmp_path / "nope", tmp_path / "out", **CASES)
    src = _make_cases(tmp_path / "src")
    with pytest.raises(DataError, match="no cases found"):
        _prepare(src, tmp_path / "out", channels="T2*", label="seg*")
    with pytest.raises(DataError, match="needs --channels"):
        _prepare(src, tmp_path / "out")
    (tmp_path / "dec" / "imagesTr").mkdir(parents=True)
    with pytest.raises(DataError, match="dec: no cases found"):
        _prepare(tmp_path / "dec", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- CT windows, resampling, slices -------------------------------------------------------

def _brats_like(root):
    """Three cases with labels 0..4 in separate blocks."""
    y = np.zeros(SHAPE, np.uint8)
    for value, x in zip(range(1, 5), (2, 3, 4, 5)):
        y[x, 4:8, 2:4] = value
    for i, case in enumerate(("pat1", "pat2", "pat3")):
        _write(root / case / "flair.nii.gz", _channel(i))
        _write(root / case / "seg.nii.gz", y)
    return root, y


def test_label_map_merges_and_renames(tmp_path):
    src, y = _brats_like(tmp_path / "src")
    plain = _prepare(src, tmp_path / "plain", channels="flair*", label="seg*")
    assert plain["num_classes"] == 5 and plain["preprocessing"]["label_map"] == {}
    merged = _prepare(src, tmp_path / "merged", channels="flair*", label="seg*", label_map="1,2,3,4->1")
    assert merged["num_classes"] == 2 and merged["preprocessing"]["label_map"] == {"1": 1, "2": 1, "3": 1, "4": 1}
    assert all(p["labels"] == [0, 1] and p["foreground_voxels"] == np.count_nonzero(y)
               for p in _patients(merged).values())
    renamed = _prepare(src, tmp_path / "renamed", channels="flair*", label="seg*", label_map="4->3")
    assert renamed["num_classes"] == 4 and all(p["labels"] == [0, 1, 2, 3] for p in _patients(renamed).values())
    element, raw = _records(tmp_path / "renamed", "train")[0]
    crop = tuple(slice(lo, hi) for lo, hi in raw["geometry"]["crop"])
    np.testing.assert_array_equal(element["mask"][..., 0], np.where(y == 4, 3, y)[crop])


def test_ct_window_scales_hounsfield_units(tmp_path):
    hu = np.random.default_rng(0).integers(-2000, 2000, SHAPE).astype(np.int16)
    hu[hu == 0] = 1  # no zero voxels: the crop keeps the whole volume
    for case in ("ct1", "ct2"):
        _write(tmp_path / "src" / case / "image.nii.gz", hu)
        _write(tmp_path / "src" / case / "label.nii.gz", _label())
    kw = {"channels": "image*", "label": "label*", "intensity": "ct", "val_fraction": 0, "test_fraction": 0}
    m = _prepare(tmp_path / "src", tmp_path / "out", ct_window="-1000,400", **kw)
    assert m["preprocessing"]["intensity"] == [{"method": "ct", "window": [-1000.0, 400.0]}]
    expected = (np.clip(hu.astype(np.float64), -1000, 400) + 1000) / 1400
    for element, raw in _records(tmp_path / "out", "train"):
        assert raw["geometry"]["crop"] == [[0, 10], [0, 12], [0, 6]]
        x = element["image"][..., 0]
        assert x.min() == 0 and x.max() == 1
        np.testing.assert_allclose(x, expected, atol=1e-6)
    lung = _prepare(tmp_path / "src", tmp_path / "lung", ct_window="lung", **kw)
    assert lung["preprocessing"]["intensity"] == [{"method": "ct", "window": list(CT_WINDOWS["lung"])}]
    assert CT_WINDOWS["lung"] == (-1350.0, 150.0)


def test_spacing_resamples_and_keeps_labels(tmp_path):
    src = tmp_path / "src"
    y = np.zeros(SHAPE, np.uint8)
    y[3:6, 4:7, 2] = 3
    y[3:6, 4:7, 3] = 7
    for case in ("r1", "r2"):
        _write(src / case / "flair.nii.gz", _channel(1), spacing=(1.0, 1.0, 3.0))
        _write(src / case / "seg.nii.gz", y, spacing=(1.0, 1.0, 3.0))
    kw = {"channels": "flair*", "label": "seg*", "spacing": "1,1,1", "val_fraction": 0, "test_fraction": 0}
    m = _prepare(src, tmp_path / "out", **kw)
    assert m["preprocessing"]["spacing"] == [1.0, 1.0, 1.0] and m["num_classes"] == 8
    for element, raw in _records(tmp_path / "out", "train"):
        geometry = raw["geometry"]
        assert geometry["source"]["shape"] == [10, 12, 6] and geometry["source"]["spacing"] == [1.0, 1.0, 3.0]
        assert geometry["resampled_shape"] == [10, 12, 18] and geometry["spacing"] == [1.0, 1.0, 1.0]
        np.testing.assert_allclose(element["spacing"], [1, 1, 1])
        assert element["image"].shape[2] == geometry["crop"][2][1] - geometry["crop"][2][0] > 6
        assert set(np.unique(element["mask"]).tolist()) == {0, 3, 7}
    full = _prepare(src, tmp_path / "full", crop=False, **kw)
    assert full["image_shape"] == [10, 12, 18, 1] and full["preprocessing"]["crop"] is None
    element, raw = _records(tmp_path / "full", "train")[0]
    assert raw["geometry"]["crop"] == [[0, 10], [0, 12], [0, 18]] and element["image"].shape == (10, 12, 18, 1)
    with pytest.raises(DataError, match=r"--spacing=\(1.0, 1.0\): give 3 values"):
        _prepare(src, tmp_path / "bad", **{**kw, "spacing": "1,1"})


def test_a_hostile_header_spacing_is_refused_before_resampling(tmp_path):
    """A 10x12x6 case whose header claims 1000 mm voxels: at --spacing=1 its
    grid would be 10000x12000x6000 voxels (about 2.9 TB of float32)."""
    src = tmp_path / "src"
    _write(src / "big" / "flair.nii.gz", _channel(1), spacing=(1000.0, 1000.0, 1000.0))
    _write(src / "big" / "seg.nii.gz", _label(), spacing=(1000.0, 1000.0, 1000.0))
    with pytest.raises(DataError, match="max_voxels") as e:
        _prepare(src, tmp_path / "out", channels="flair*", label="seg*", spacing="1,1,1", val_fraction=0,
                 test_fraction=0)
    assert str(e.value).startswith(f"{src / 'big' / 'flair.nii.gz'}: ") and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="max_voxels"):  # a lower cap refuses the file itself, before decoding
        _prepare(src, tmp_path / "out", channels="flair*", label="seg*", max_voxels=100, val_fraction=0,
                 test_fraction=0)


def test_axial_slices(lesion_dir, lesion_prepared, tmp_path):
    out = tmp_path / "slices"
    m = _prepare(lesion_dir, out, channels="FLAIR*,T1*", label="lesions*", slices="axial", slice_size="32,32")
    assert m["layout"] == "slices" and m["image_shape"] == [32, 32, 2]
    assert m["preprocessing"]["slices"] == "axial" and m["preprocessing"]["slice_size"] == [32, 32]
    volume_out, volume_m = lesion_prepared
    drop = lambda patients: [{k: v for k, v in p.items() if k != "records"} for p in patients]  # noqa: E731
    # The same cases with the same statistics; a record per slice rather than per case.
    assert drop(m["splits"]["val"]["patients"]) == drop(volume_m["splits"]["val"]["patients"])
    assert [p["records"] for p in m["splits"]["val"]["patients"]] == [p["shape"][2]
                                                                     for p in m["splits"]["val"]["patients"]]
    for split in ("train", "val", "test"):
        whole = {raw["patient_id"]: e for e, raw in _records(volume_out, split)}
        records = _records(out, split)
        depth = sum(p["shape"][2] for p in m["splits"][split]["patients"])
        assert len(records) == m["splits"][split]["num_examples"] == depth
        for element, raw in records:
            geometry = raw["geometry"]
            assert element["image"].shape == (32, 32, 2) and element["mask"].shape == (32, 32, 1)
            assert geometry["slice_axis"] == 2 and geometry["spacing"] == [1.0, 1.0, 3.0]
            np.testing.assert_allclose(element["spacing"], [1, 1])  # the record's (in-plane) axes
            (a0, a1), (b0, b1) = geometry["pad"]
            volume = whole[raw["patient_id"]]
            n = int(element["slice"])
            assert a0 + a1 + volume["image"].shape[0] == 32 and b0 + b1 + volume["image"].shape[1] == 32
            inner = (slice(a0, 32 - a1), slice(b0, 32 - b1))
            np.testing.assert_array_equal(element["image"][inner], volume["image"][:, :, n])
            np.testing.assert_array_equal(element["mask"][inner], volume["mask"][:, :, n])
            assert not element["image"][:a0].any() and not element["image"][32 - a1:].any()
            assert raw["foreground_voxels"][0] == element["mask"].sum()
    with pytest.raises(DataError, match=r"FLAIR.nii.gz: slices of \d+x\d+ exceed --slice_size=8,8") as e:
        _prepare(lesion_dir, tmp_path / "small", channels="FLAIR*,T1*", label="lesions*", slices="axial",
                 slice_size="8,8")
    assert "\n" not in str(e.value) and sorted(os.listdir(tmp_path)) == ["slices"]


# --- output folder, splits, command line -----------------------------------------------

def test_existing_output_refused_and_failed_run_leaves_nothing(tmp_path):
    src = _make_cases(tmp_path / "src")
    out = tmp_path / "out"
    _prepare(src, out, **CASES)
    before = sorted(os.listdir(out))
    with pytest.raises(DataError, match="out: output already exists; pass --overwrite") as e:
        _prepare(src, out, **CASES)
    assert "\n" not in str(e.value) and sorted(os.listdir(out)) == before
    _prepare(src, out, overwrite=True, **CASES)
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]
    x = _channel(4)
    x[2, 3, 1] = np.nan
    os.remove(src / "case3" / "t1.nii.gz")
    _write(src / "case3" / "t1.nrrd", x)  # read while shards are being written
    with pytest.raises(DataError, match="case3/t1.nrrd: 1 NaN"):
        _prepare(src, tmp_path / "new", **CASES)
    with pytest.raises(DataError, match="case3/t1.nrrd: 1 NaN"):
        _prepare(src, out, overwrite=True, **CASES)
    assert sorted(os.listdir(tmp_path)) == ["out", "src"] and sorted(os.listdir(out)) == before


def test_overwrite_refuses_the_data_dir_and_folders_data_prep_did_not_write(tmp_path):
    src = _make_cases(tmp_path / "src")
    for out in (src, tmp_path, src / "case1"):
        with pytest.raises(DataError, match="one folder contains the other"):
            _prepare(src, out, overwrite=True, **CASES)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="mine: holds files that data_prep did not write"):
        _prepare(src, tmp_path / "mine", overwrite=True, **CASES)
    assert (tmp_path / "mine" / "thesis.tex").exists() and sorted(os.listdir(src)) == ["case1", "case2", "case3"]


def test_anonymise_leaves_no_id_or_source_path_under_out_dir(tmp_path):
    from data_prep import plan

    names = ["Wombat", "Platypus", "Echidna", "Numbat", "Bilby"]
    src = _decathlon(tmp_path / "Cohort_Quokka", names)
    plan.plan_dataset(str(src), tmp_path / "Cohort_Quokka_plans.json", progress=False)
    os.remove(src / "labelsTr" / "Bilby.nii.gz")  # skipped: the manifest names its file
    out = tmp_path / "out"
    m = _prepare(src, out, anonymise=True, skip_bad=True, test_cases="Wombat", cv_folds=2,
                 plans=str(tmp_path / "Cohort_Quokka_plans.json"))
    assert {"manifest.json", "plans.json", "splits.json"} <= set(os.listdir(out))
    for folder, _, files in os.walk(out):
        for name in files:
            data = open(os.path.join(folder, name), "rb").read()
            assert not [w for w in [*names, "Cohort_Quokka"] if w.encode() in data], name
    ids = json.load(open(tmp_path / "Cohort_Quokka.ids.json"))["ids"]
    assert sorted(ids[p]["id"] for p in _patients(m)) == ["Echidna", "Numbat", "Platypus", "Wombat"]
    assert [ids[p]["id"] for p in m["split"]["test_cases"]] == ["Wombat"]
    folds = json.load(open(out / "splits.json"))["folds"]
    assert sorted(c for f in folds for c in f["val"]) == sorted(p["patient"] for p in m["splits"]["train"]["patients"])
    assert {r["patient_id"].decode() for _, r in _records(out, "test")} == set(m["split"]["test_cases"])


def test_named_val_and_test_cases(lesion_dir, tmp_path):
    kw = {"channels": "FLAIR*,T1*", "label": "lesions*"}
    m = _prepare(lesion_dir, tmp_path / "a", val_cases="case_0002", test_cases="case_0004, case_0005", **kw)
    assert {s: [p["patient"] for p in m["splits"][s]["patients"]] for s in ("train", "val", "test")} == {
        "train": ["case_0001", "case_0003"], "val": ["case_0002"], "test": ["case_0004", "case_0005"]}
    assert m["split"]["val_cases"] == ["case_0002"] and m["split"]["test_cases"] == ["case_0004", "case_0005"]
    with pytest.raises(DataError, match="--val_cases/--test_cases name case_0009, which are not among") as e:
        _prepare(lesion_dir, tmp_path / "b", val_cases="case_0009", **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="case_0002"):  # one case in two splits
        _prepare(lesion_dir, tmp_path / "c", val_cases="case_0002", test_cases="case_0002", **kw)
    m = _prepare(lesion_dir, tmp_path / "d", val_cases="case_0002,case_0002", **kw)
    assert m["splits"]["val"]["num_patients"] == 1  # named twice, written once
    with pytest.raises(DataError, match="leave no case for training"):
        _prepare(lesion_dir, tmp_path / "e", val_cases="case_0001,case_0002,case_0003",
                 test_cases="case_0004,case_0005", **kw)


def test_cli(tmp_path, capsys):
    src = _make_cases(tmp_path / "src")
    out = tmp_path / "cli"
    assert volumes.main([f"--data_dir={src}", f"--out_dir={out}", "--channels=flair*,t1*", "--label=seg*",
                         "--val_fraction=0", "--test_fraction=0", "--no-crop"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: train 3 cases/3 records" in printed and " cases/s, " in printed
    m = json.load(open(out / "manifest.json"))
    assert m["preprocessing"]["crop"] is None and m["image_shape"] == [10, 12, 6, 2]
    assert volumes.main([f"--data_dir={tmp_path / 'missing'}", f"--out_dir={tmp_path / 'x'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "missing: no such folder" in captured.err
    assert not (tmp_path / "x").exists()


# --- the real folders beside the repository -------------------------------------------------

def _real(name):
    folder = REAL / name
    if not folder.is_dir():
        pytest.skip(f"real data {name} not found at {folder} (it lives beside the repository, never inside it)")
    return folder


def test_real_ms_lesions(tmp_path):
    src = _real("ms_lesions_ljubljana")
    m = _prepare(src, tmp_path / "ms", channels="FLAIR*", label="GOLD_STANDARD*", val_cases="patient07",
                 test_fraction=0)
    members = {s: [p["patient"] for p in m["splits"][s]["patients"]] for s in ("train", "val", "test")}
    assert members == {"train": ["patient19"], "val": ["patient07"], "test": []}
    assert m["skipped"] == [] and m["num_classes"] == 2
    patient19 = _patients(m)["patient19"]
    assert patient19["foreground_voxels"] == 49_769 and patient19["labels"] == [0, 1]
    element, raw = _records(tmp_path / "ms", "train")[0]
    source = read_volume(next((src / "patient19").glob("GOLD_STANDARD*")))
    assert int(np.count_nonzero(source.array)) == 49_769  # cropping to the brain loses no lesion voxel
    assert element["mask"].sum() == 49_769 and element["image"].shape == (*patient19["shape"], 1)
    assert raw["geometry"]["source"]["shape"] == list(source.array.shape)


def test_real_brats(tmp_path):
    src = _real("brats2015_deepmedic")
    m = _prepare(src, tmp_path / "brats", channels="Flair*,T1c*", label="OTMultiClass*", mask="brainmask*")
    patients = _patients(m)
    assert len(patients) == 4 and m["skipped"] == [] and m["num_classes"] == 5
    assert sorted(patients) == ["train/brats_2013_pat0005_1", "train/brats_2013_pat0006_1",
                                "validation/brats_2013_pat0003_1", "validation/brats_2013_pat0004_1"]
    assert set().union(*(p["labels"] for p in patients.values())) == {0, 1, 2, 3, 4}
    assert m["preprocessing"]["intensity"] == [{"method": "zscore", "foreground": "mask"}] * 2
    assert m["preprocessing"]["crop"] == "mask bounding box"
    for p in patients.values():
        assert all(n <= full for n, full in zip(p["shape"], (240, 240, 155))) and p["shape"] != [240, 240, 155]


def test_a_channel_that_is_not_3d_is_one_line(tmp_path):
    src = _make_cases(tmp_path / "src")
    os.remove(src / "case1" / "t1.nii.gz")
    write_volume(str(src / "case1" / "t1.nii.gz"), Volume(np.ones((10, 12), np.float32), Geometry.identity(2)))
    with pytest.raises(DataError, match=r"case1/t1.nii.gz: a 2-D volume of shape \(10, 12\); each channel must be "
                                        r"one 3-D file") as error:
        _prepare(src, tmp_path / "out", **CASES)
    assert "\n" not in str(error.value)


# --- regression pairs (--target) ------------------------------------------------------

def test_target_pairs_are_float_records_scaled_by_the_input(tmp_path):
    """T1 -> T1POST style pairs: the target volume becomes the record's float32
    mask, divided by the 99.5th percentile of the raw input over the foreground,
    and the manifest says how, so predictions can be scaled back."""
    root = tmp_path / "pairs"
    for i, name in enumerate(("a", "b", "c")):
        t1 = _channel(i)
        post = t1 * 1.5
        post[LESION] += 200.0  # enhancement the input does not show
        post[0, 0, 0] = -5.0  # below zero outside the head: clipped to 0
        _write(root / name / "t1.nii.gz", t1)
        _write(root / name / "t1post.nii.gz", post)
    m = _prepare(root, tmp_path / "out", channels="t1.*", target="t1post*", val_cases="c", test_fraction=0)
    assert m["task"] == "regression" and m["mask"] == "float32 target" and "num_classes" not in m
    assert m["target"] == {"method": "input_percentile", "pattern": "t1post*", "channel": 0, "percentile": 99.5}
    element, raw = _records(tmp_path / "out", "val")[0]
    assert raw["mask_dtype"] == b"float32" and element["mask"].dtype == np.float32
    t1 = read_volume(str(root / "c" / "t1.nii.gz")).array
    post = read_volume(str(root / "c" / "t1post.nii.gz")).array
    scale = np.percentile(t1[HEAD], 99.5)
    assert _patients(m)["c"]["target"]["scale"] == pytest.approx(scale, rel=1e-6)
    np.testing.assert_allclose(element["mask"][..., 0], np.maximum(post[HEAD], 0) / scale, rtol=1e-5)
    assert element["image"].shape == (8, 8, 4, 1) and abs(float(element["image"].mean())) < 1e-4  # z-scored input
    sliced = _prepare(root, tmp_path / "slices", channels="t1.*", target="t1post*", val_cases="c", test_fraction=0,
                      slices="axial", slice_size="8,8")
    assert sliced["image_shape"] == [8, 8, 1]
    slices = _records(tmp_path / "slices", "val")
    np.testing.assert_allclose(np.stack([e["mask"][..., 0] for e, _ in slices], axis=-1),
                               element["mask"][..., 0], rtol=1e-6)
    settings = settings_from_manifest(m)
    assert settings.target == "input_percentile"


def test_target_setting_errors_are_one_line(tmp_path):
    root = tmp_path / "pairs"
    _write(root / "a" / "t1.nii.gz", _channel(0))
    _write(root / "a" / "t1post.nii.gz", _channel(1))
    _write(root / "a" / "seg.nii.gz", _label())
    with pytest.raises(DataError, match="a case has labels .segmentation. or a target .regression.; give one"):
        _prepare(root, tmp_path / "o1", channels="t1.*", target="t1post*", label="seg*")
    with pytest.raises(DataError, match="--target_intensity='zscore': choose one of input_percentile, none"):
        _prepare(root, tmp_path / "o2", channels="t1.*", target="t1post*", target_intensity="zscore")
    nan = _channel(1)
    nan[HEAD][0, 0, 0] = np.nan
    _write(root / "a" / "t1post.nii.gz", nan)
    with pytest.raises(DataError, match="t1post.nii.gz: .*1 NaN or infinite voxels"):
        _prepare(root, tmp_path / "o3", channels="t1.*", target="t1post*", val_fraction=0, test_fraction=0)


def test_real_ms_t1_to_t1post_pairs(tmp_path):
    src = _real("ms_lesions_ljubljana")
    m = _prepare(src, tmp_path / "ms", channels="T1_*", target="T1POST*", val_cases="patient19", test_fraction=0,
                 slices="axial", slice_size="144,160")
    assert m["task"] == "regression" and m["image_shape"] == [144, 160, 1]
    assert {s: m["splits"][s]["num_examples"] for s in ("train", "val")} == {"train": 126, "val": 121}
    element, _ = _records(tmp_path / "ms", "val")[60]
    target = element["mask"][..., 0]
    assert target.min() >= 0 and 0.3 < np.percentile(target[target > 0], 50) < 1.5  # grey levels near the input's scale


def test_lung_sides_label_the_two_lungs_of_a_chest_volume(tmp_path):
    """--lung_sides on chest phantoms: labels 1 and 2, 1 at smaller x, together the lungs."""
    chest.write_chest_phantoms(tmp_path / "cases", num_cases=2, shape=(32, 32, 8), spacing=(8.0, 8.0, 20.0),
                               progress=False)
    plain = _prepare(tmp_path / "cases", tmp_path / "plain", channels="ct*", label="lungs*", intensity="ct",
                     crop=False, val_fraction=0.5, test_fraction=0)
    sides = _prepare(tmp_path / "cases", tmp_path / "sides", channels="ct*", label="lungs*", intensity="ct",
                     crop=False, val_fraction=0.5, test_fraction=0, lung_sides=True)
    assert plain["num_classes"] == 2 and sides["num_classes"] == 3 and sides["preprocessing"]["lung_sides"]
    (lungs, _), (labelled, _) = _records(tmp_path / "plain", "val")[0], _records(tmp_path / "sides", "val")[0]
    lungs, labelled = lungs["mask"][..., 0], labelled["mask"][..., 0]
    np.testing.assert_array_equal(labelled > 0, lungs > 0)  # the phantom's lungs are two components
    x = np.arange(lungs.shape[0])[:, None, None]
    assert (x * (labelled == 1)).sum() / (labelled == 1).sum() < (x * (labelled == 2)).sum() / (labelled == 2).sum()
    with pytest.raises(DataError, match="--lung_sides relabels segmentation labels"):
        _prepare(tmp_path / "cases", tmp_path / "bad", channels="ct*", target="lungs*", lung_sides=True)
