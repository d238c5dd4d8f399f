"""Tests for the phantom generators: kaggle_3m layout, determinism, tumour
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

from data_prep.phantoms import chest, lesions, lgg, pairs
from unet_jax.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(num_slices=4, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


def test_layout_and_round_trip(tmp_path):
    out = tmp_path / "kaggle_3m"
    names = lgg.write_phantoms(out, num_patients=3, seed=5, progress=False, **SMALL)
    assert names == sorted(os.listdir(out)) and len(names) == 3
    for index, name in enumerate(names):
        assert re.fullmatch(r"TCGA_PH_\d{4}_\d{8}", name), name
        year, month, day = int(name[-8:-4]), int(name[-4:-2]), int(name[-2:])
        assert 1990 <= year <= 2010 and 1 <= month <= 12 and 1 <= day <= 31
        expected = {f"{name}_{n}{suffix}.tif" for n in range(1, 5) for suffix in ("", "_mask")}
        assert set(os.listdir(out / name)) == expected
        _, images, masks = lgg.generate_patient(index, seed=5, **SMALL)
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
    (name,) = lgg.write_phantoms(out, num_patients=1, num_slices=11, size=32, progress=False)
    numbers = sorted(int(re.fullmatch(rf"{name}_(\d+)\.tif", f).group(1))
                     for f in os.listdir(out / name) if not f.endswith("_mask.tif"))
    assert numbers == list(range(1, 12))
    assert (out / name / f"{name}_1.tif").exists() and not (out / name / f"{name}_01.tif").exists()


def test_same_seed_gives_identical_bytes_and_patients_are_independent(tmp_path):
    lgg.write_phantoms(tmp_path / "a", num_patients=2, seed=3, progress=False, **SMALL)
    lgg.write_phantoms(tmp_path / "b", num_patients=2, seed=3, progress=False, **SMALL)
    lgg.write_phantoms(tmp_path / "c", num_patients=4, seed=3, progress=False, **SMALL)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b
    assert len(c) == 2 * len(a) and all(c[k] == v for k, v in a.items())
    lgg.write_phantoms(tmp_path / "d", num_patients=2, seed=4, progress=False, **SMALL)
    assert _files(tmp_path / "d") != a
    _, images3, _ = lgg.generate_patient(0, seed=3, **SMALL)
    _, images4, _ = lgg.generate_patient(0, seed=4, **SMALL)
    assert not np.array_equal(images3, images4)


def test_tumour_statistics():
    patients = [lgg.generate_patient(i, num_slices=20, size=64) for i in range(10)]
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
    _, images, _ = lgg.generate_patient(0, num_slices=20, size=64)
    head_area = (images.max(axis=-1) > 60).sum(axis=(1, 2))
    assert head_area[10] > 1.3 * head_area[0] and head_area[10] > 1.3 * head_area[-1]


def test_existing_output_is_refused_then_replaced_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is fine to write into
    lgg.write_phantoms(out, num_patients=1, progress=False, **SMALL)
    before = _files(out)
    with pytest.raises(DataError, match=r"out: .*--overwrite"):
        lgg.write_phantoms(out, num_patients=2, progress=False, **SMALL)
    assert _files(out) == before and _siblings(out) == []

    (out / "stale.txt").write_text("left over")  # not a phantom: --overwrite refuses to delete it
    with pytest.raises(DataError, match=r"out: holds files that data_prep did not write"):
        lgg.write_phantoms(out, num_patients=2, overwrite=True, progress=False, **SMALL)
    os.remove(out / "stale.txt")
    names = lgg.write_phantoms(out, num_patients=2, overwrite=True, progress=False, **SMALL)
    assert sorted(os.listdir(out)) == names and len(names) == 2
    assert _siblings(out) == []


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.phantoms", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_writes_then_refuses_existing_output(tmp_path):
    out = str(tmp_path / "ph")
    args = ["--out_dir", out, "--num_patients", "2", "--num_slices", "3", "--size", "32", "--seed", "1"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and "2 patients, 6 slices" in done.stdout
    assert sorted(os.listdir(out)) == lgg.write_phantoms(tmp_path / "api", num_patients=2, num_slices=3,
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


# --- 3-D white-matter-lesion phantoms (NIfTI) ---------------------------------

LESION_SMALL = dict(shape=(32, 32, 12), spacing=(1.0, 1.0, 3.0))


def _lesion_cases(n, **kwargs):
    kwargs = {**LESION_SMALL, **kwargs}
    return [lesions._lesion_case(i, kwargs["shape"], kwargs["spacing"], kwargs.get("seed", 0)) for i in range(n)]


def test_lesion_case_is_deterministic_and_does_not_depend_on_the_number_of_cases(tmp_path):
    name, flair, t1, mask = lesions.generate_lesion_case(1, seed=7, **LESION_SMALL)
    assert name == "case_0002"
    assert flair.shape == t1.shape == mask.shape == (32, 32, 12)
    assert flair.dtype == t1.dtype == np.float32 and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    again = lesions.generate_lesion_case(1, seed=7, **LESION_SMALL)
    for x, y in zip((flair, t1, mask), again[1:]):
        np.testing.assert_array_equal(x, y)
    for other in (lesions.generate_lesion_case(0, seed=7, **LESION_SMALL),
                  lesions.generate_lesion_case(1, seed=8, **LESION_SMALL)):
        assert not np.array_equal(other[1], flair) and not np.array_equal(other[3], mask)
    # The same case from a writer of two and of three cases.
    from unet_jax.data.medical_io import read_volume
    two = lesions.write_lesion_phantoms(tmp_path / "two", num_cases=2, seed=7, progress=False, **LESION_SMALL)
    three = lesions.write_lesion_phantoms(tmp_path / "three", num_cases=3, seed=7, progress=False, **LESION_SMALL)
    assert three[:2] == two == ["case_0001", "case_0002"]
    for file in ("FLAIR.nii.gz", "T1.nii.gz", "lesions.nii.gz"):
        np.testing.assert_array_equal(read_volume(tmp_path / "two" / "case_0002" / file).array,
                                      read_volume(tmp_path / "three" / "case_0002" / file).array)


def test_lesions_lie_in_white_matter_bright_on_flair_dark_on_t1():
    for _, flair, t1, mask, labels in _lesion_cases(4):
        lesion = mask > 0
        white = (labels == lesions._L_WHITE) & ~lesion
        assert lesion.any() and (labels[lesion] == lesions._L_WHITE).all()
        # Inside the head, never on its outer layer of voxels.
        head = flair > 0
        assert not (lesion & ~ndimage.binary_erosion(head)).any()
        # Tissue levels on the scale of the real data.
        assert 85 < flair[white].mean() < 115 and 0 <= flair.min() and flair.max() < 320
        assert flair[labels == lesions._L_GREY].mean() > flair[white].mean() + 10
        assert flair[labels == lesions._L_VENTRICLE].mean() < 60
        # Like white-matter hyperintensities: clearly bright on FLAIR, dark on T1.
        assert flair[lesion].mean() > flair[white].mean() + 50
        assert t1[lesion].mean() < t1[white].mean() - 25


def test_lesions_are_mostly_periventricular():
    closer = []
    for _, _, _, mask, labels in _lesion_cases(6, shape=(48, 48, 16)):
        spacing = LESION_SMALL["spacing"]
        to_ventricle = ndimage.distance_transform_edt(labels != lesions._L_VENTRICLE, sampling=spacing)
        white = (labels == lesions._L_WHITE) & (mask == 0)
        closer.append(to_ventricle[mask > 0].mean() < to_ventricle[white].mean())
    assert sum(closer) >= 5


def test_every_case_has_lesions_at_a_plausible_load_and_nothing_outside_the_head():
    components = []
    for _, flair, t1, mask, labels in _lesion_cases(6):
        brain = labels >= lesions._L_GREY
        assert 0.003 <= mask.sum() / brain.sum() <= 0.03
        components.append(ndimage.label(mask)[1])
        # Skull-stripped: exactly 0 outside the head, non-zero inside; the head fills most of the view.
        outside = labels == lesions._L_BACKGROUND
        assert (flair[outside] == 0).all() and (t1[outside] == 0).all()
        assert (flair[~outside] > 0).mean() > 0.99
        extent = [np.ptp(np.nonzero((~outside).any(axis=tuple(a for a in range(3) if a != axis)))[0]) + 1
                  for axis in range(3)]
        assert all(e >= 0.75 * n for e, n in zip(extent, mask.shape)), extent
    assert min(components) >= 1 and np.mean(components) >= 2
    # Even a grid so coarse that lesions can fall between its voxels keeps one.
    assert all(lesions.generate_lesion_case(i, shape=(12, 12, 3))[3].any() for i in range(8))


def test_lesion_anatomy_is_in_millimetres():
    coarse = _lesion_cases(4, shape=(32, 32, 12), spacing=(1.0, 1.0, 3.0))
    fine = _lesion_cases(4, shape=(32, 32, 36), spacing=(1.0, 1.0, 1.0))
    narrow = _lesion_cases(4, shape=(32, 32, 12), spacing=(1.0, 1.0, 1.0))  # a third of the field of view

    def mm3(cases, spacing):
        return np.array([[(c[4] > 0).sum() * np.prod(spacing), c[3].sum() * np.prod(spacing)] for c in cases])

    (head_c, les_c), (head_f, les_f), (head_n, les_n) = (
        mm3(coarse, (1, 1, 3)).T, mm3(fine, (1, 1, 1)).T, mm3(narrow, (1, 1, 1)).T)
    np.testing.assert_allclose(head_c, head_f, rtol=0.05)
    assert 0.6 < les_c.sum() / les_f.sum() < 1.6
    np.testing.assert_allclose(head_n, head_f / 3, rtol=0.1)  # the head fills whatever field of view it has
    assert 0.15 < les_n.sum() / les_f.sum() < 0.6  # and lesions scale with it
    for (_, _, _, mc, _), (_, _, _, mf, _) in zip(coarse, fine):  # lesions in the same place
        centre_c = np.argwhere(mc).mean(axis=0) * (1, 1, 3) - np.array([31, 31, 33]) / 2
        centre_f = np.argwhere(mf).mean(axis=0) - np.array([31, 31, 35]) / 2
        assert np.abs(centre_c - centre_f).max() < 3


def test_write_lesion_phantoms_round_trip(tmp_path):
    from unet_jax.data.medical_io import read_volume

    out = tmp_path / "wmh"
    shape, spacing = (24, 28, 10), (0.9, 1.1, 2.5)
    names = lesions.write_lesion_phantoms(out, num_cases=2, shape=shape, spacing=spacing, seed=2, progress=False)
    assert names == sorted(os.listdir(out)) == ["case_0001", "case_0002"]
    origin = -(np.array(shape) - 1) * np.array(spacing) / 2
    for index, name in enumerate(names):
        assert set(os.listdir(out / name)) == {"FLAIR.nii.gz", "T1.nii.gz", "lesions.nii.gz"}
        _, flair, t1, mask = lesions.generate_lesion_case(index, shape=shape, spacing=spacing, seed=2)
        for file, expected in (("FLAIR.nii.gz", flair), ("T1.nii.gz", t1), ("lesions.nii.gz", mask)):
            volume = read_volume(out / name / file)
            assert volume.array.shape == shape and volume.array.dtype == expected.dtype
            if file == "lesions.nii.gz":
                np.testing.assert_array_equal(volume.array, expected)
            else:
                np.testing.assert_allclose(volume.array, expected, rtol=1e-6, atol=1e-4)
            np.testing.assert_allclose(volume.geometry.spacing, spacing, rtol=1e-6)
            np.testing.assert_allclose(volume.geometry.origin, origin, atol=1e-4)
            np.testing.assert_allclose(volume.geometry.direction, np.eye(3).ravel(), atol=1e-6)


@pytest.mark.parametrize("bad", [dict(index=-1), dict(index=9999), dict(shape=(32, 32)), dict(shape=(32, 0, 12)),
                                 dict(spacing=(1.0, 0.0, 3.0)), dict(spacing=(1.0, 1.0, float("nan")))])
def test_generate_lesion_case_rejects_bad_arguments(bad):
    kwargs = {"index": 0, **LESION_SMALL, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        lesions.generate_lesion_case(kwargs.pop("index"), **kwargs)


# --- Chest CT phantoms (3-D, NIfTI, Hounsfield units) --------------------------

CHEST_SMALL = dict(shape=(64, 64, 12), spacing=(4.0, 4.0, 10.0))  # the default field of view, coarser


def _chest_cases(n, seed=0):
    return [chest.generate_chest_case(i, seed=seed, **CHEST_SMALL) for i in range(n)]


def test_chest_case_is_in_hounsfield_units():
    for name, ct, lungs in _chest_cases(3):
        assert re.fullmatch(r"chest_\d{4}", name)
        assert ct.shape == lungs.shape == (64, 64, 12)
        assert ct.dtype == np.int16 and lungs.dtype == np.uint8 and set(np.unique(lungs)) == {0, 1}
        assert -1024 <= ct.min() and ct.max() <= 3071
        corners = np.concatenate([ct[:4, :4].ravel(), ct[-4:, -4:].ravel()])
        assert abs(corners.mean() + 1000) < 15  # air
        lung = lungs > 0
        assert -900 <= ct[lung].mean() <= -750
        assert ct[~lung & (ct > -400)].size and 0 < np.median(ct[(ct > -400) & (ct < 300)]) < 80  # soft tissue
        # The spine: bone at the back of the midline (Y runs to the back).
        midline, back = slice(28, 36), slice(32, 64)
        assert ct[midline, back].max() > 300 and ct[midline, :32].max() < ct[midline, back].max()


def test_chest_lung_labels_lie_where_the_ct_shows_air_filled_lung():
    for _, ct, lungs in _chest_cases(4):
        lung = lungs > 0
        assert (ct[lung] < -400).mean() >= 0.9  # vessels inside the lungs count as lung
        assert (ct[lung] > -400).any()  # and there are some
        # Almost every air-filled voxel inside the body is lung (not: the airways).
        body = ndimage.binary_fill_holes(ct > -400, structure=np.ones((3, 3, 1), bool))
        inside_air = body & (ct < -600)
        assert lung[inside_air].mean() > 0.85


def test_chest_middle_slices_show_two_lungs_left_and_right_and_the_ends_fewer():
    fewer = 0
    for _, ct, lungs in _chest_cases(6):
        nx = lungs.shape[0]
        for k in (5, 6):
            parts, count = ndimage.label(lungs[:, :, k], structure=np.ones((3, 3), bool))
            sizes = np.bincount(parts.ravel())[1:]
            assert count == 2 and sizes.min() > 0.02 * lungs[:, :, k].size, (k, sizes)
            centres = sorted(np.argwhere(parts == n)[:, 0].mean() for n in (1, 2))
            assert centres[0] < nx / 2 - 4 and centres[1] > nx / 2 + 4
        # Lung size varies smoothly along Z in the middle of the chest.
        area = lungs.sum(axis=(0, 1)).astype(float)
        assert np.all(np.abs(np.diff(area[3:10])) < 0.5 * area[3:10].max())
        for k in (0, 1, lungs.shape[2] - 1):
            fewer += ndimage.label(lungs[:, :, k], structure=np.ones((3, 3), bool))[1] < 2
        # The right lung (low X) ends higher than the left at the bottom.
        right, left = lungs[:nx // 2].any(axis=(0, 1)), lungs[nx // 2:].any(axis=(0, 1))
        assert np.argmax(right) >= np.argmax(left)
    assert fewer >= 2  # some end slices show one lung or none


def test_chest_case_is_deterministic_per_seed_and_case():
    _, ct, lungs = chest.generate_chest_case(1, seed=3, **CHEST_SMALL)
    _, ct2, lungs2 = chest.generate_chest_case(1, seed=3, **CHEST_SMALL)
    np.testing.assert_array_equal(ct, ct2)
    np.testing.assert_array_equal(lungs, lungs2)
    for other in (chest.generate_chest_case(1, seed=4, **CHEST_SMALL),
                  chest.generate_chest_case(0, seed=3, **CHEST_SMALL)):
        assert not np.array_equal(other[1], ct) and not np.array_equal(other[2], lungs)


def test_chest_anatomy_does_not_depend_on_the_resolution():
    _, _, coarse = chest.generate_chest_case(2, seed=1, **CHEST_SMALL)
    _, _, fine = chest.generate_chest_case(2, seed=1, shape=(128, 128, 12), spacing=(2.0, 2.0, 10.0))
    volume = coarse.sum() * 4 * 4, fine.sum() * 2 * 2
    assert 0.85 < volume[0] / volume[1] < 1.15


def test_write_chest_phantoms_round_trip(tmp_path):
    from unet_jax.data.medical_io import read_volume

    out = tmp_path / "chest"
    shape, spacing = (40, 36, 8), (5.0, 6.0, 12.0)
    names = chest.write_chest_phantoms(out, num_cases=2, shape=shape, spacing=spacing, seed=2, progress=False)
    assert names == sorted(os.listdir(out)) == ["chest_0001", "chest_0002"]
    origin = -(np.array(shape) - 1) * np.array(spacing) / 2
    for index, name in enumerate(names):
        assert set(os.listdir(out / name)) == {"ct.nii.gz", "lungs.nii.gz"}
        _, ct, lungs = chest.generate_chest_case(index, shape=shape, spacing=spacing, seed=2)
        for file, expected in (("ct.nii.gz", ct), ("lungs.nii.gz", lungs)):
            volume = read_volume(out / name / file)
            assert volume.array.dtype == expected.dtype and volume.array.shape == shape
            np.testing.assert_array_equal(volume.array, expected)
            np.testing.assert_allclose(volume.geometry.spacing, spacing, rtol=1e-6)
            np.testing.assert_allclose(volume.geometry.origin, origin, atol=1e-4)
            np.testing.assert_allclose(volume.geometry.direction, np.eye(3).ravel(), atol=1e-6)


@pytest.mark.parametrize("write, small, prefix", [
    (lesions.write_lesion_phantoms, LESION_SMALL, "case"),
    (chest.write_chest_phantoms, dict(shape=(32, 32, 4), spacing=(8.0, 8.0, 30.0)), "chest")])
def test_3d_phantom_writers_refuse_existing_output_then_replace_it(tmp_path, write, small, prefix):
    out = tmp_path / "phantoms"
    write(out, num_cases=1, progress=False, **small)
    before = _files(out)
    with pytest.raises(DataError, match=r"phantoms: .*--overwrite"):
        write(out, num_cases=2, progress=False, **small)
    assert _files(out) == before and _siblings(out) == []
    (out / "stale.txt").write_text("left over")
    with pytest.raises(DataError, match=r"phantoms: holds files that data_prep did not write"):
        write(out, num_cases=2, overwrite=True, progress=False, **small)
    os.remove(out / "stale.txt")
    names = write(out, num_cases=2, overwrite=True, progress=False, **small)
    assert sorted(os.listdir(out)) == names == [f"{prefix}_0001", f"{prefix}_0002"] and _siblings(out) == []


@pytest.mark.parametrize("bad", [dict(index=-1), dict(index=9999), dict(shape=(32, 32)), dict(shape=(32, 0, 12)),
                                 dict(spacing=(1.0, 0.0, 3.0)), dict(spacing=(1.0, 1.0, float("inf")))])
def test_generate_chest_case_rejects_bad_arguments(bad):
    kwargs = {"index": 0, **CHEST_SMALL, **bad}
    with pytest.raises(ValueError, match=next(iter(bad))):
        chest.generate_chest_case(kwargs.pop("index"), **kwargs)


# --- Image pairs for contrast-map regression (PNG) -----------------------------


def test_write_pair_phantoms_layout_and_round_trip(tmp_path):
    from PIL import Image

    out = tmp_path / "pairs"
    stems = pairs.write_pair_phantoms(out, num_pairs=3, size=48, seed=1, progress=False)
    assert stems == ["p01", "p02", "p03"] and sorted(os.listdir(out)) == ["inputs", "targets"]
    for folder in ("inputs", "targets"):
        assert sorted(os.listdir(out / folder)) == [f"{s}.png" for s in stems]
    for index, stem in enumerate(stems):
        image, target = pairs.generate_pair(index, size=48, seed=1)
        assert image.dtype == target.dtype == np.uint8 and image.shape == target.shape == (48, 48)
        for folder, expected in (("inputs", image), ("targets", target)):
            with Image.open(out / folder / f"{stem}.png") as png:
                assert png.mode == "L"  # 8-bit grey
                np.testing.assert_array_equal(np.array(png), expected)


def test_pair_target_is_zero_outside_the_head_and_spread_over_the_8_bit_range():
    for index in range(4):
        image, target, labels = pairs._pair(index, 64, 0)
        head = labels > 0
        assert head.any() and not head[0].any() and not head[-1].any()
        assert (target[~head] == 0).all()
        assert target[head].max() > 200 and np.median(target[head]) < 80  # bright structures, low background
        assert image[head].mean() > 80 and image[~head].mean() < 15  # the head is clearly visible


def test_pair_target_is_not_a_pointwise_function_of_the_input():
    for index in range(3):
        image, target, labels = pairs._pair(index, 64, 0)
        head = labels > 0
        spread = [np.ptp(target[head & (image == level)]) for level in np.unique(image[head])
                  if (head & (image == level)).sum() > 1]
        assert max(spread) > 100  # pixels of one input level, very different targets


def test_pair_enhancing_structures_show_in_the_input():
    """What enhances is visible in the input too: where the target is bright,
    the input departs from its tissue's usual level far more than elsewhere."""
    for index in range(4):
        image, target, labels = pairs._pair(index, 64, 0)
        brain = np.isin(labels, (pairs._P_GREY, pairs._P_WHITE, pairs._P_VENTRICLE))
        usual = np.zeros(len(pairs._PAIR_INPUT_LEVELS))
        for tissue in np.unique(labels[brain]):
            usual[tissue] = np.median(image[(labels == tissue) & (target < 100)])
        departure = np.abs(image.astype(float) - usual[labels])
        bright = brain & (target > 150)
        assert bright.sum() > 20
        assert departure[bright].mean() > 2 * departure[brain & (target < 100)].mean()


def test_pair_phantoms_are_deterministic_and_independent_of_their_number(tmp_path):
    pairs.write_pair_phantoms(tmp_path / "a", num_pairs=2, size=32, seed=3, progress=False)
    pairs.write_pair_phantoms(tmp_path / "b", num_pairs=2, size=32, seed=3, progress=False)
    pairs.write_pair_phantoms(tmp_path / "c", num_pairs=3, size=32, seed=3, progress=False)
    pairs.write_pair_phantoms(tmp_path / "d", num_pairs=2, size=32, seed=4, progress=False)
    a, c, d = _files(tmp_path / "a"), _files(tmp_path / "c"), _files(tmp_path / "d")
    assert a == _files(tmp_path / "b") and all(c[k] == v for k, v in a.items()) and len(c) == 6
    assert all(d[k] != v for k, v in a.items())


def test_write_pair_phantoms_refuses_existing_output_then_replaces_it(tmp_path):
    out = tmp_path / "pairs"
    pairs.write_pair_phantoms(out, num_pairs=1, size=32, progress=False)
    before = _files(out)
    with pytest.raises(DataError, match=r"pairs: .*--overwrite"):
        pairs.write_pair_phantoms(out, num_pairs=2, size=32, progress=False)
    assert _files(out) == before and _siblings(out) == []
    (out / "inputs" / "scan.png").write_bytes(b"a picture of the user's")
    with pytest.raises(DataError, match=r"pairs: holds files that data_prep did not write"):
        pairs.write_pair_phantoms(out, num_pairs=2, size=32, overwrite=True, progress=False)
    os.remove(out / "inputs" / "scan.png")
    names = pairs.write_pair_phantoms(out, num_pairs=2, size=32, overwrite=True, progress=False)
    assert names == ["p01", "p02"] and len(_files(out)) == 4 and _siblings(out) == []
