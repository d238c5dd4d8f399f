"""data_prep.plan: fingerprints of hand-made volumes, nnU-Net's planning rules
(target spacing, topology, patch, batch, memory), dataset.json and modality
guesses, bad input in one line, the plans file and the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_prep import plan, volumes
from unet_jax.data.medical_io import Geometry, Volume, write_volume
from unet_jax.errors import DataError
from unet_jax.preprocess import layouts
from unet_jax.preprocess.plans import PLAN_KEYS, read_plans
from unet_jax.preprocess.volumes import read_case

ROOT = Path(__file__).resolve().parents[2]


def _write(path, array, spacing):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_volume(str(path), Volume(np.asarray(array), Geometry(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0),
                                                               tuple(np.eye(3).ravel()))))


def _decathlon(root, cases, dataset_json=None):
    """cases: (channel arrays, label array, spacing) each, as imagesTr/case_00i_000c.nii.gz and labelsTr/."""
    for i, (channels, label, spacing) in enumerate(cases):
        for c, x in enumerate(channels):
            _write(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", np.asarray(x, np.float32), spacing)
        _write(root / "labelsTr" / f"case_{i:03d}.nii.gz", np.asarray(label, np.uint8), spacing)
    if dataset_json is not None:
        (root / "dataset.json").write_text(json.dumps(dataset_json))
    return root


def _box_case(shape, box, lesion, seed, spacing, low=50.0, high=150.0, value=1):
    """One channel of uniform noise inside `box` (zeros around it, cropped away) and a label block `lesion`."""
    x = np.zeros(shape, np.float32)
    x[box] = np.random.default_rng(seed).uniform(low, high, x[box].shape)
    y = np.zeros(shape, np.uint8)
    y[lesion] = value
    return [x], y, spacing


def _fp(spacing, shape, num_cases=1000, channels=1):
    """A hand-made fingerprint: every case alike."""
    return {"num_cases": num_cases, "num_channels": channels, "modalities": ["MR"] * channels, "labels": [0, 1],
            "spacings": {k: list(spacing) for k in ("median", "min", "max", "p10")},
            "shapes": {k: list(shape) for k in ("median", "min", "max")},
            "intensity": [dict(mean=0.0, std=1.0, median=0.0, p00_5=-2.0, p99_5=2.0, min=-3.0, max=3.0)] * channels}


def _plan(src, out, **kw):
    return plan.plan_dataset(str(src), str(out), **{"progress": False, "command": "test", **kw})


def test_isotropic_cases_pool_every_axis_with_3x3x3_kernels(tmp_path):
    box, lesion = (slice(2, 66), slice(2, 66), slice(2, 50)), (slice(20, 40), slice(20, 40), slice(10, 30))
    src = _decathlon(tmp_path / "raw", [_box_case((68, 68, 52), box, lesion, s, (1, 1, 1)) for s in range(2)])
    plans = _plan(src, tmp_path / "plans.json")
    fp, p = plans["fingerprint"], plans["plan"]
    assert fp["shapes"]["median"] == [64, 64, 48]  # cropped to the non-zero box, as data_prep.volumes crops
    assert p["target_spacing"] == [1.0, 1.0, 1.0]
    assert p["shape_at_target"] == [64, 64, 48]
    assert p["patch_size"] == [64, 64, 48]
    # 64 -> 32 -> 16 -> 8 -> 4: four poolings; 48 -> 24 -> 12 -> 6: three (6 < 8 is not pooled again).
    assert p["pool_strides"] == [[2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert p["depth"] == 4 and p["kernel_size"] == [[3, 3, 3]] * 5
    assert p["deep_supervision"] == 2
    assert p["batch_size"] == 2  # two cases: 5% of the dataset's voxels is far below one patch
    assert p["normalization"] == ["zscore"] and p["ct_window"] is None
    assert set(p["rationale"]) == set(PLAN_KEYS)


def test_anisotropic_cases_get_in_plane_kernels_until_the_spacing_is_comparable(tmp_path):
    shape = (128, 128, 16)
    case = ([np.random.default_rng(0).uniform(1, 2, shape)], np.pad(np.ones((8, 8, 4)), ((60, 60), (60, 60), (6, 6))),
            (0.5, 0.5, 3.0))
    plans = _plan(_decathlon(tmp_path / "raw", [case, case]), tmp_path / "plans.json")
    p = plans["plan"]
    assert p["target_spacing"] == [0.5, 0.5, 3.0]
    assert p["patch_size"] == [128, 128, 16]
    # spacing 0.5,0.5,3 -> 1,1,3 (z still over 2x: 3x3x1, not pooled) -> 2,2,3 (within 2x: 3x3x3, z pooled) -> ...
    assert p["pool_strides"] == [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert p["kernel_size"] == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert p["depth"] == 5 and p["deep_supervision"] == 3
    factor = plan.pooling_factor(p["pool_strides"])
    assert all(s % f == 0 and s // f >= plan.MIN_FEATURE_MAP for s, f in zip(p["patch_size"], factor))


def test_anisotropic_target_spacing_takes_the_10th_percentile_of_the_coarse_axis(tmp_path):
    z = [2.4, 3.0, 3.6, 4.0, 5.0]
    cases = [([np.random.default_rng(i).uniform(1, 2, (12, 12, 8))], np.pad(np.ones((4, 4, 2)), 4)[:12, :12, :8],
              (0.8, 0.8, dz)) for i, dz in enumerate(z)]
    plans = _plan(_decathlon(tmp_path / "raw", cases), tmp_path / "plans.json")
    fp, p = plans["fingerprint"], plans["plan"]
    assert fp["spacings"]["median"] == pytest.approx([0.8, 0.8, 3.6])
    assert fp["spacings"]["min"] == pytest.approx([0.8, 0.8, 2.4]) and fp["spacings"]["max"][2] == pytest.approx(5.0)
    assert p["target_spacing"] == pytest.approx([0.8, 0.8, np.percentile(z, 10)])  # 2.64, not the median 3.6
    assert p["shape_at_target"] == [12, 12, round(8 * 3.6 / np.percentile(z, 10))]
    # Near-isotropic medians keep the median; the percentile never goes finer than the other axes.
    assert plan.make_plan(_fp((1, 1, 2.5), (64, 64, 32)))["target_spacing"] == [1, 1, 2.5]
    fp = _fp((1, 1, 4), (100, 100, 20))
    fp["spacings"]["p10"] = [1, 1, 0.7]
    assert plan.make_plan(fp)["target_spacing"] == [1, 1, 1]


def test_batch_shrinks_with_the_memory_budget_and_the_patch_shrinks_when_batch_two_does_not_fit():
    fp = _fp((1, 1, 1), (64, 64, 64))
    plans = {gb: plan.make_plan(fp, memory_gb=gb) for gb in (3, 6, 12)}
    assert all(p["patch_size"] == [64, 64, 64] for p in plans.values())
    assert 2 <= plans[3]["batch_size"] < plans[6]["batch_size"] < plans[12]["batch_size"]
    assert all(p["estimated_memory_gb"] <= gb for gb, p in plans.items())
    one_more = plan.estimate_memory_gb(plans[6]["patch_size"], plans[6]["pool_strides"], plans[6]["kernel_size"], 32,
                                       1, 2, plans[6]["batch_size"] + 1, plans[6]["deep_supervision"])
    assert one_more > 6  # the largest batch that fits
    # 5% of the dataset's voxels caps the batch: 1000 cases -> 50 patches of one case's size.
    assert plan.make_plan(fp, memory_gb=64)["batch_size"] == 50
    big = _fp((1, 1, 1), (160, 160, 160))
    roomy, tight = plan.make_plan(big, memory_gb=64), plan.make_plan(big, memory_gb=8)
    assert roomy["patch_size"] == [160, 160, 160]
    assert np.prod(tight["patch_size"]) < np.prod(roomy["patch_size"]) and tight["batch_size"] == 2
    assert tight["estimated_memory_gb"] <= 8
    factor = plan.pooling_factor(tight["pool_strides"])
    assert all(s % f == 0 for s, f in zip(tight["patch_size"], factor))


def test_a_budget_too_small_names_memory_gb():
    with pytest.raises(DataError, match=r"--memory_gb=0\.3.*raise --memory_gb, or lower --features") as e:
        plan.make_plan(_fp((1, 1, 1), (64, 64, 64)), memory_gb=0.3)
    assert "\n" not in str(e.value)
    assert plan.make_plan(_fp((1, 1, 1), (64, 64, 64)), memory_gb=0.6, features=8)["batch_size"] >= 2


def test_ct_is_detected_and_its_window_is_the_foreground_percentiles(tmp_path):
    cases, foreground = [], []
    for seed in range(2):
        rng = np.random.default_rng(seed)
        x = np.full((24, 24, 12), -1000.0, np.float32)  # air
        x[4:20, 4:20, 2:10] = rng.normal(40, 30, (16, 16, 8))  # the body
        x[8:12, 8:14, 4:8] = rng.normal(200, 80, (4, 6, 4))  # a bright lesion
        y = np.zeros(x.shape, np.uint8)
        y[8:12, 8:14, 4:8] = 1
        y[14:16, 14:16, 4:6] = 2
        cases.append(([x], y, (0.7, 0.7, 1.5)))
        foreground.append(x[y > 0])
    src = _decathlon(tmp_path / "raw", cases)
    plans = _plan(src, tmp_path / "plans.json")
    fp, p = plans["fingerprint"], plans["plan"]
    fg = np.concatenate(foreground).astype(np.float64)
    assert fp["modalities"] == ["CT"] and fp["modality_source"] == "guessed"
    assert p["normalization"] == ["ct"]
    assert p["ct_window"] == pytest.approx([np.percentile(fg, 0.5), np.percentile(fg, 99.5)], rel=1e-9)
    assert fp["shapes"]["median"] == [24, 24, 12]  # air is not zero: nothing to crop
    # dataset.json beats the guess, --modality beats dataset.json; label names are read.
    meta = {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "lesion", "2": "vessel"}}
    (src / "dataset.json").write_text(json.dumps(meta))
    plans = _plan(src, tmp_path / "plans.json")
    assert plans["fingerprint"]["modalities"] == ["MR"] and plans["plan"]["normalization"] == ["zscore"]
    assert plans["fingerprint"]["modality_source"] == "dataset.json"
    assert plans["fingerprint"]["label_names"] == {"1": "lesion", "2": "vessel"}
    assert _plan(src, tmp_path / "plans.json", modality="CT")["plan"]["normalization"] == ["ct"]
    with pytest.raises(DataError, match="--modality"):
        _plan(src, tmp_path / "plans.json", modality="PET")


def test_intensity_and_label_statistics_match_numpy(tmp_path):
    box = (slice(2, 12), slice(2, 12), slice(1, 9))  # 10x10x8 of 14x14x10 is non-zero
    cases, fg, totals = [], [], []
    for seed, labels in ((0, (1, 2)), (1, (1,))):
        rng = np.random.default_rng(seed)
        channels = [np.zeros((14, 14, 10), np.float32) for _ in range(2)]
        channels[0][box] = rng.uniform(10, 500, (10, 10, 8))
        channels[1][box] = rng.normal(-5, 3, (10, 10, 8))
        y = np.zeros((14, 14, 10), np.uint8)
        y[4:8, 4:9, 3:6] = labels[0]
        if len(labels) > 1:
            y[9:11, 9:11, 6:8] = labels[1]
        cases.append((channels, y, (1.0, 1.2, 2.0)))
        fg.append(np.stack([c[y > 0] for c in channels], axis=-1))
        totals.append(np.bincount(y.ravel(), minlength=3))
    plans = _plan(_decathlon(tmp_path / "raw", cases), tmp_path / "plans.json")
    fp = plans["fingerprint"]
    fg = np.concatenate(fg).astype(np.float64)
    for c in range(2):
        v = fg[:, c]
        want = {"mean": v.mean(), "std": v.std(), "median": np.median(v), "p00_5": np.percentile(v, 0.5),
                "p99_5": np.percentile(v, 99.5), "min": v.min(), "max": v.max()}
        assert fp["intensity"][c] == pytest.approx(want, rel=1e-9)
    counts = np.sum(totals, axis=0)
    assert fp["num_cases"] == 2 and fp["num_channels"] == 2 and fp["labels"] == [0, 1, 2]
    assert fp["class_voxel_fraction"] == pytest.approx({"1": counts[1] / 1600, "2": counts[2] / 1600})
    assert fp["cases_with_class"] == {"1": 2, "2": 1}
    assert fp["shapes"] == {"median": [10, 10, 8], "min": [10, 10, 8], "max": [10, 10, 8]}
    assert fp["spacings"]["median"] == pytest.approx([1.0, 1.2, 2.0])
    assert fp["case_names"] == ["case_000", "case_001"]
    assert plans["plan"]["normalization"] == ["zscore", "zscore"]


def test_foreground_samples_are_capped_and_seeded(tmp_path, monkeypatch):
    box, lesion = (slice(0, 20), slice(0, 20), slice(0, 10)), (slice(0, 20), slice(0, 20), slice(0, 10))
    src = _decathlon(tmp_path / "raw", [_box_case((20, 20, 10), box, lesion, s, (1, 1, 1)) for s in range(2)])
    cases, _ = layouts.scan_decathlon(str(src), unlabelled=False)
    monkeypatch.setattr(plan, "SAMPLES_PER_CASE", 50)
    first, again = plan.fingerprint(cases), plan.fingerprint(cases)
    assert first["intensity"] == again["intensity"]
    full = np.concatenate([read_case(c, {})[0][0].array.ravel() for c in cases])
    assert first["intensity"][0]["mean"] != pytest.approx(full.mean(), rel=1e-9)  # a sample, not every voxel
    assert first["intensity"][0]["mean"] == pytest.approx(full.mean(), rel=0.1)


def test_bad_cases_give_one_line_errors_naming_the_case(tmp_path, monkeypatch):
    # Folders layout: case2's FLAIR holds two channels in one file.
    x, y = np.ones((8, 8, 6), np.float32), np.pad(np.ones((2, 2, 2), np.uint8), 3)[:8, :8, :6]
    _write(tmp_path / "folders" / "case1" / "flair.nii.gz", x, (1, 1, 1))
    _write(tmp_path / "folders" / "case1" / "seg.nii.gz", y, (1, 1, 1))
    _write(tmp_path / "folders" / "case2" / "flair.nii.gz", np.stack([x, x], axis=-1), (1, 1, 1))
    _write(tmp_path / "folders" / "case2" / "seg.nii.gz", y, (1, 1, 1))
    with pytest.raises(DataError, match="case2") as e:
        _plan(tmp_path / "folders", tmp_path / "p.json", channels="flair*", label="seg*")
    assert "\n" not in str(e.value)
    cases, _ = layouts.scan_folders(str(tmp_path / "folders"), ["flair*"], "seg*", None, False)
    mixed = [cases[0], layouts.Case("case9", cases[0].channels * 2, cases[0].label)]
    with pytest.raises(DataError, match="case9: 2 channel"):
        plan.fingerprint(mixed)
    # A 2-D volume.
    os.makedirs(tmp_path / "flat" / "imagesTr")
    write_volume(str(tmp_path / "flat" / "imagesTr" / "a_0000.nii.gz"), Volume(np.ones((8, 8), np.float32),
                                                                                 Geometry.identity(2)))
    _write(tmp_path / "flat" / "labelsTr" / "a.nii.gz", np.ones((8, 8, 1), np.uint8), (1, 1, 1))
    with pytest.raises(DataError, match=r"a_0000\.nii\.gz: a 2-D volume"):
        _plan(tmp_path / "flat", tmp_path / "p.json")
    # A spacing that is zero or not finite, named with its file.
    read = read_case

    def bad_spacing(case, label_map, **kw):
        channels, labels, mask = read(case, label_map, **kw)
        return [Volume(v.array, Geometry((1.0, 0.0, 1.0), v.geometry.origin, v.geometry.direction))
                for v in channels], labels, mask

    monkeypatch.setattr("unet_jax.preprocess.volumes.read_case", bad_spacing)
    with pytest.raises(DataError, match=r"case1/flair\.nii\.gz: voxel spacing \[1\.0, 0\.0, 1\.0\]"):
        plan.fingerprint(cases[:1])
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(DataError, match="no cases"):
        plan.fingerprint([])


def test_main_writes_plans_and_reports_errors_in_one_line(tmp_path, capsys):
    box, lesion = (slice(1, 19), slice(1, 19), slice(1, 11)), (slice(5, 10), slice(5, 10), slice(3, 6))
    src = _decathlon(tmp_path / "raw", [_box_case((20, 20, 12), box, lesion, s, (1, 1, 1)) for s in range(3)])
    out = tmp_path / "out" / "plans.json"
    assert plan.main([f"--data_dir={src}", f"--out={out}", "--memory_gb=4", "--features=16"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()  # median 18x18x10: factors 4x4x2, rounded up
    assert len(printed) == 1 and "patch 20x20x10" in printed[0] and "batch 2" in printed[0]
    plans = read_plans(out)
    assert plans["version"] == 1 and plans["source"] == str(src)
    assert set(plans["plan"]) == {*PLAN_KEYS, "rationale"}
    assert plans["plan"]["memory_gb"] == 4.0 and plans["plan"]["features"] == 16
    assert [f for f in os.listdir(out.parent)] == ["plans.json"]  # no temporary file left behind
    os.makedirs(tmp_path / "empty")
    assert plan.main([f"--data_dir={tmp_path / 'empty'}", f"--out={tmp_path / 'x.json'}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
    # --max_cases fingerprints a subset but sizes the batch cap by every case found.
    sub = plan.plan_dataset(str(src), str(tmp_path / "sub.json"), max_cases=2, progress=False)
    assert sub["fingerprint"]["num_cases"] == 2 and sub["fingerprint"]["cases_found"] == 3


def test_max_voxels_reaches_the_volumes_the_planner_reads(tmp_path, capsys):
    box, lesion = (slice(1, 19), slice(1, 19), slice(1, 11)), (slice(5, 10), slice(5, 10), slice(3, 6))
    src = _decathlon(tmp_path / "raw", [_box_case((20, 20, 12), box, lesion, s, (1, 1, 1)) for s in range(2)])
    assert plan.main([f"--data_dir={src}", f"--out={tmp_path / 'plans.json'}", "--max_voxels=4000"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # 20x20x12 = 4800 voxels; above it, the progress bar
    assert err.startswith("error: ") and "case_000_0000.nii.gz" in err and "max_voxels" in err
    assert not (tmp_path / "plans.json").exists()


def test_parameter_count_is_the_models():
    import jax
    import jax.numpy as jnp

    from unet_jax.models.unet import UNet

    strides, kernels = plan.pool_and_kernels((0.5, 0.5, 2.0), (32, 32, 8))
    assert strides == [[2, 2, 1], [2, 2, 2], [2, 2, 1]] and kernels[0] == [3, 3, 1]
    model = UNet(out_channels=3, features=4, depth=len(strides), pool_strides=strides, kernel_size=kernels,
                 deep_supervision=1)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 8, 2)), train=False))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert plan.count_parameters(strides, kernels, 4, 2, 3, deep_supervision=1) == count
    assert plan.count_parameters([[2, 2]] * 4, [[3, 3]] * 5, 32, 3, 1) == 7_763_041  # the classic U-Net's


def test_the_planner_imports_neither_jax_nor_tensorflow():
    code = ("import sys, data_prep.plan; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'tensorflow'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_label_outside_the_declared_or_planned_set_is_one_line(tmp_path):
    """A case labelled 3 where dataset.json declares 0-2 is refused by the
    planner; a case prepared with plans that never saw its label, by
    data_prep.volumes --plans; both name the label file."""
    box, lesion = (slice(1, 11), slice(1, 11), slice(1, 7)), (slice(3, 6), slice(3, 6), slice(2, 4))
    cases = [_box_case((12, 12, 8), box, lesion, seed, (1.0, 1.0, 1.0), value=v) for seed, v in ((0, 1), (1, 2))]
    src = _decathlon(tmp_path / "src", cases, {"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "a", "2": "b"}})
    _plan(src, tmp_path / "plans.json")  # labels 1 and 2: declared
    plans = json.loads((tmp_path / "plans.json").read_text())
    assert plans["fingerprint"]["labels"] == [0, 1, 2]
    _write(src / "labelsTr" / "case_001.nii.gz", np.where(cases[1][1] > 0, 3, 0).astype(np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(DataError) as e:
        _plan(src, tmp_path / "plans2.json")
    assert str(e.value).startswith(str(src / "labelsTr" / "case_001.nii.gz") + ": label 3 is not among the labels "
                                   "dataset.json declares (0, 1, 2)") and "\n" not in str(e.value)
    with pytest.raises(DataError) as e:
        volumes.prepare(str(src), str(tmp_path / "out"), plans=str(tmp_path / "plans.json"), val_fraction=0.5,
                        test_fraction=0, progress=False, command="test")
    assert str(e.value).startswith(str(src / "labelsTr" / "case_001.nii.gz") + ": label 3 is not among the labels "
                                   "[0, 1, 2] that") and "plan this folder again" in str(e.value)
    assert not (tmp_path / "out").exists()
