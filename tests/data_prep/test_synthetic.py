"""Tests for the phantom generator: kaggle_3m layout, determinism, tumour
statistics, atomic replacement of the output folder and the command line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from data_prep import synthetic
from unet_jax.data import DataError

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_slices=4, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


def test_layout_and_round_trip(tmp_path):
    out = tmp_path / "kaggle_3m"
    names = synthetic.write_phantoms(out, num_patients=3, seed=5, progress=False, **SMALL)
    assert names == sorted(os.listdir(out)) and len(names) == 3
    for index, name in enumerate(names):
        assert re.fullmatch(r"TCGA_PH_\d{4}_\d{8}", name), name
        year, month, day = int(name[-8:-4]), int(name[-4:-2]), int(name[-2:])
        assert 1990 <= year <= 2010 and 1 <= month <= 12 and 1 <= day <= 31
        expected = {f"{name}_{n}{suffix}.tif" for n in range(1, 5) for suffix in ("", "_mask")}
        assert set(os.listdir(out / name)) == expected
        _, images, masks = synthetic.generate_patient(index, seed=5, **SMALL)
        for n in range(1, 5):
            image = tifffile.imread(out / name / f"{name}_{n}.tif")
            mask = tifffile.imread(out / name / f"{name}_{n}_mask.tif")
            assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
            assert mask.dtype == np.uint8 and mask.shape == (64, 64)
            assert set(np.unique(mask)) <= {0, 255}
            np.testing.assert_array_equal(image, images[n - 1])
            np.testing.assert_array_equal(mask, masks[n - 1])


def test_slice_numbers_are_not_zero_padded(tmp_path):
    out = tmp_path / "out"
    (name,) = synthetic.write_phantoms(out, num_patients=1, num_slices=11, size=32, progress=False)
    numbers = sorted(int(re.fullmatch(rf"{name}_(\d+)\.tif", f).group(1))
                     for f in os.listdir(out / name) if not f.endswith("_mask.tif"))
    assert numbers == list(range(1, 12))
    assert (out / name / f"{name}_1.tif").exists() and not (out / name / f"{name}_01.tif").exists()


def test_same_seed_gives_identical_bytes_and_patients_are_independent(tmp_path):
    synthetic.write_phantoms(tmp_path / "a", num_patients=2, seed=3, progress=False, **SMALL)
    synthetic.write_phantoms(tmp_path / "b", num_patients=2, seed=3, progress=False, **SMALL)
    synthetic.write_phantoms(tmp_path / "c", num_patients=4, seed=3, progress=False, **SMALL)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b
    assert len(c) == 2 * len(a) and all(c[k] == v for k, v in a.items())
    synthetic.write_phantoms(tmp_path / "d", num_patients=2, seed=4, progress=False, **SMALL)
    assert _files(tmp_path / "d") != a
    _, images3, _ = synthetic.generate_patient(0, seed=3, **SMALL)
    _, images4, _ = synthetic.generate_patient(0, seed=4, **SMALL)
    assert not np.array_equal(images3, images4)


def test_tumour_statistics():
    patients = [synthetic.generate_patient(i, num_slices=20, size=64) for i in range(10)]
    has_tumour = np.array([masks.any(axis=(1, 2)) for _, _, masks in patients])
    assert 0.25 <= has_tumour.mean() <= 0.55
    assert 1 <= sum(not row.any() for row in has_tumour) <= 4  # most, not all, patients have tumours
    for row in has_tumour:
        assert ndimage.label(row)[1] <= 2  # contiguous runs of slices, one per tumour at most
    for _, images, masks in patients:
        tumour = masks > 0
        if not tumour.any():
            continue
        # The ring of surrounding tissue, in-plane, just outside the tumour.
        ring = ndimage.binary_dilation(tumour, np.ones((1, 3, 3), bool), iterations=3) & ~tumour
        flair = images[..., 1].astype(float)
        assert flair[tumour].mean() > flair[ring].mean() + 30


def test_head_is_smaller_at_the_ends_of_the_volume():
    _, images, _ = synthetic.generate_patient(0, num_slices=20, size=64)
    head_area = (images.max(axis=-1) > 60).sum(axis=(1, 2))
    assert head_area[10] > 1.3 * head_area[0] and head_area[10] > 1.3 * head_area[-1]


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine to write into
    synthetic.write_phantoms(out, num_patients=1, progress=False, **SMALL)
    before = _files(out)
    with pytest.raises(DataError, match=r"out: .*--overwrite"):
        synthetic.write_phantoms(out, num_patients=2, progress=False, **SMALL)
    assert _files(out) == before and _siblings(out) == []

    (out / "stale.txt").write_text("left over")
    names = synthetic.write_phantoms(out, num_patients=2, overwrite=True, progress=False, **SMALL)
    assert sorted(os.listdir(out)) == names and len(names) == 2
    assert _siblings(out) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.synthetic", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_writes_then_refuses_existing_output(tmp_path):
    out = str(tmp_path / "ph")
    args = ["--out_dir", out, "--num_patients", "2", "--num_slices", "3", "--size", "32", "--seed", "1"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and "2 patients, 6 slices" in done.stdout
    assert sorted(os.listdir(out)) == synthetic.write_phantoms(tmp_path / "api", num_patients=2, num_slices=3,
                                                               size=32, seed=1, progress=False)
    refused = _cli(*args)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite" in lines[0]
    assert _cli(*args, "--overwrite").returncode == 0


@pytest.mark.parametrize("bad", [["--num_patients", "0"], ["--num_slices", "0"], ["--size", "16"], ["--size", "72"]])
def test_cli_rejects_bad_arguments(tmp_path, bad):
    out = tmp_path / "ph"
    done = _cli("--out_dir", str(out), *bad)
    assert done.returncode == 2
    assert bad[0] in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr
    assert not out.exists()


def test_demo_data_is_prepared_once_and_again_when_it_lacks_intensity_statistics(tmp_path):
    import json

    prepared = synthetic.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32, val_fraction=0.34,
                                      test_fraction=0.34)
    manifest_path = os.path.join(prepared, "manifest.json")
    manifest = json.load(open(manifest_path))
    assert manifest["intensity_stats"] and len(manifest["splits"]["train"]["patients"]) == 1
    first = os.path.getmtime(manifest_path)
    assert synthetic.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32) == prepared
    assert os.path.getmtime(manifest_path) == first  # kept
    del manifest["intensity_stats"]  # as an older data_prep wrote it
    json.dump(manifest, open(manifest_path, "w"))
    synthetic.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32, val_fraction=0.34,
                           test_fraction=0.34)
    assert json.load(open(manifest_path))["intensity_stats"]
