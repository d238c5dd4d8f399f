"""Medical volume I/O: real files against known facts and SimpleITK itself,
round trips through every format (DICOM series included), one-line errors,
grid comparison, anatomical planes and resampling."""

import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from unet_jax.data import DataError
from unet_jax.data.medical_io import (Geometry, Volume, plane_axis, read_volume, resample, write_dicom_series,
                                      write_volume)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # beside the repository, as in conftest.py
MS_PATIENT = SHARED / "ms_lesions_ljubljana" / "patient07"
BRATS_LABEL = SHARED / "brats2015_deepmedic" / "train" / "brats_2013_pat0005_1" / "OTMultiClass.nii.gz"
PYRADIOMICS = SHARED / "nrrd_ct_mr_pyradiomics"

EYE = tuple(np.eye(3).ravel())
_T = np.deg2rad(30.0)
ROT_Z30 = (np.cos(_T), -np.sin(_T), 0.0, np.sin(_T), np.cos(_T), 0.0, 0.0, 0.0, 1.0)
# Array axis 0 runs to world -z, axis 1 along world x, axis 2 along world y (columns are the axes);
# left-handed (determinant -1), like NIfTI's diag(1, -1, 1).
PERMUTED_FLIPPED = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0)
# Array axes along world y, z, x: right-handed.
PERMUTED = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _real(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives beside the repository, never inside it)")
    return str(path)


def _one(pattern: Path) -> str:
    matches = sorted(glob.glob(str(pattern)))
    if not matches:
        pytest.skip(f"real data not found: no file matches {pattern} (it lives beside the repository)")
    return matches[0]


def _synthetic(dtype, direction=ROT_Z30, shape=(12, 10, 6), spacing=(0.5, 0.8, 3.0), origin=(-12.5, 30.25, 7.0),
               seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        array = (rng.standard_normal(shape) * 100).astype(dtype)
    elif np.dtype(dtype).kind == "u":
        array = rng.integers(0, 256, shape).astype(dtype)
    else:
        array = rng.integers(-1024, 3072, shape).astype(dtype)
    return Volume(array, Geometry(tuple(spacing), tuple(origin), tuple(float(v) for v in direction)))


def _assert_geometry_close(got: Geometry, want: Geometry, atol: float):
    np.testing.assert_allclose(got.spacing, want.spacing, rtol=0, atol=atol)
    np.testing.assert_allclose(got.origin, want.origin, rtol=0, atol=atol)
    np.testing.assert_allclose(got.direction, want.direction, rtol=0, atol=atol)


def _assert_one_line_error(excinfo, path, *hints):
    message = str(excinfo.value)
    assert excinfo.type is DataError
    assert "\n" not in message and "\r" not in message, message
    assert os.path.basename(os.path.normpath(str(path))) in message, message
    assert any(h in message for h in hints), message


def _assert_matches_sitk(path: str, volume: Volume):
    """Array axes are ITK's [X, Y, Z] and voxel positions are SimpleITK's."""
    image = sitk.ReadImage(path)
    zyx = sitk.GetArrayFromImage(image)
    assert volume.array.shape == zyx.shape[::-1] == image.GetSize()
    shape = np.asarray(volume.array.shape)
    g = volume.geometry
    for ijk in [(0, 0, 0), tuple(shape - 1), tuple(shape // 2), (1, 2, 3), (shape[0] - 2, 3, shape[2] // 3)]:
        i, j, k = (int(v) for v in ijk)
        assert volume.array[i, j, k] == zyx[k, j, i]
        point = np.asarray(g.origin) + g.matrix() @ (np.asarray(g.spacing) * np.array([i, j, k]))
        np.testing.assert_allclose(point, image.TransformIndexToPhysicalPoint((i, j, k)), rtol=0, atol=1e-6)


# --- real files ---------------------------------------------------------------------------------------------------


def test_real_ms_flair_and_gold_standard_in_lps():
    flair_path = _one(MS_PATIENT / "FLAIR_*.nii.gz")
    flair = read_volume(flair_path)
    assert flair.array.shape == (182, 218, 182) and flair.array.dtype == np.float32
    assert flair.geometry.spacing == (1.0, 1.0, 1.0)
    # NIfTI stores RAS (origin 90, -126, -72 with x and y flipped); SimpleITK hands out LPS.
    np.testing.assert_allclose(flair.geometry.origin, (-90.0, 126.0, -72.0), atol=1e-6)
    np.testing.assert_allclose(flair.geometry.matrix(), np.diag([1.0, -1.0, 1.0]), atol=1e-12)
    assert flair.array.flags.c_contiguous
    _assert_matches_sitk(flair_path, flair)

    gold_path = _one(MS_PATIENT / "GOLD_STANDARD_*.nii.gz")
    gold = read_volume(gold_path)
    assert gold.array.dtype == np.uint8 and gold.array.shape == flair.array.shape
    assert set(np.unique(gold.array).tolist()) == {0, 1}
    assert gold.geometry.same_grid(flair.geometry) and flair.geometry.same_grid(gold.geometry)


def test_real_brats_labels_stored_as_float():
    path = _real(BRATS_LABEL)
    label = read_volume(path)
    assert label.array.shape == (240, 240, 155) and label.array.dtype == np.float32
    np.testing.assert_array_equal(np.unique(label.array), np.array([0, 1, 2, 3, 4], np.float32))
    _assert_matches_sitk(path, label)


def test_real_nrrd_ct_and_mr():
    lung_path = _real(PYRADIOMICS / "lung1_image.nrrd")
    lung = read_volume(lung_path)
    assert lung.array.shape == (512, 512, 48) and lung.array.dtype == np.int16
    assert lung.array.min() == -1024  # air in Hounsfield units
    np.testing.assert_allclose(lung.geometry.spacing, (0.5703125, 0.5703125, 5.0), rtol=1e-6)
    _assert_matches_sitk(lung_path, lung)

    brain_path = _real(PYRADIOMICS / "brain1_image.nrrd")
    brain = read_volume(brain_path)
    assert brain.array.shape == (256, 256, 25) and brain.array.dtype == np.int16
    np.testing.assert_allclose(brain.geometry.spacing, (0.78125, 0.78125, 6.5), rtol=1e-6)
    _assert_matches_sitk(brain_path, brain)


# --- round trips --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", [ROT_Z30, PERMUTED_FLIPPED], ids=["rot_z30", "permuted_flipped"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip(tmp_path, suffix, dtype, direction):
    volume = _synthetic(dtype, direction)
    path = tmp_path / f"volume{suffix}"
    write_volume(str(path), volume)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    back = read_volume(str(path))
    assert back.array.dtype == volume.array.dtype and back.array.shape == volume.array.shape
    np.testing.assert_array_equal(back.array, volume.array)
    _assert_geometry_close(back.geometry, volume.geometry, 1e-5)  # NIfTI stores float32
    assert back.geometry.same_grid(volume.geometry)


def test_write_volume_overwrites_atomically_and_refuses_other_formats(tmp_path):
    path = tmp_path / "v.nrrd"
    write_volume(str(path), _synthetic(np.int16, seed=0))
    second = _synthetic(np.int16, seed=1)
    write_volume(path, second)  # a path-like works too
    np.testing.assert_array_equal(read_volume(path).array, second.array)
    bools = Volume(second.array > 0, second.geometry)
    write_volume(str(tmp_path / "mask.nii.gz"), bools)
    back = read_volume(str(tmp_path / "mask.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, bools.array.astype(np.uint8))
    with pytest.raises(ValueError, match="cannot write this format"):
        write_volume(str(tmp_path / "v.mhd"), second)
    assert sorted(os.listdir(tmp_path)) == ["mask.nii.gz", "v.nrrd"]


# --- DICOM --------------------------------------------------------------------------------------------------------


def _as_dicom_reads(volume: Volume) -> Volume:
    """What a DICOM series of `volume` reads back as: DICOM's slice axis is row x
    column, so a left-handed volume comes back with its slices reversed (the same
    voxels at the same physical points)."""
    g = volume.geometry
    if np.linalg.det(g.matrix()) > 0:
        return volume
    last = np.asarray(g.origin) + g.matrix() @ (np.asarray(g.spacing) * [0, 0, volume.array.shape[2] - 1])
    matrix = g.matrix() * [1.0, 1.0, -1.0]
    return Volume(volume.array[:, :, ::-1], Geometry(g.spacing, tuple(last), tuple(matrix.ravel())))


def _dicom_round_trip(tmp_path, volume: Volume):
    folder = tmp_path / "series"
    files = write_dicom_series(str(folder), volume)
    assert len(files) == volume.array.shape[2] and all(os.path.isfile(f) for f in files)
    assert sorted(os.listdir(tmp_path)) == ["series"]  # the temporary folder was renamed
    back = read_volume(str(folder))
    want = _as_dicom_reads(volume)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, want.array)
    # The z spacing comes from the slice positions, the rest from orientation and position tags.
    _assert_geometry_close(back.geometry, want.geometry, 1e-3)
    return folder


@pytest.mark.parametrize("direction", [EYE, ROT_Z30, PERMUTED, PERMUTED_FLIPPED],
                         ids=["identity", "rot_z30", "permuted", "left_handed"])
def test_dicom_series_round_trip_synthetic(tmp_path, direction):
    volume = _synthetic(np.int16, direction, shape=(12, 10, 6), spacing=(0.7, 0.7, 2.5), origin=(-40.0, 25.5, 112.0))
    _dicom_round_trip(tmp_path, volume)


def test_dicom_slice_order_in_a_fresh_process(tmp_path):
    # GDCM sorts by slice position only after some DICOM file has been read in the process; before, it
    # falls back to instance numbers, which run against the normal here. The first read must not mirror.
    volume = _synthetic(np.int16, PERMUTED_FLIPPED, spacing=(0.7, 0.7, 2.5), origin=(-40.0, 25.5, 112.0))
    folder = tmp_path / "series"
    write_dicom_series(str(folder), volume)
    code = textwrap.dedent(f"""
        import json, sys
        from unet_jax.data.medical_io import read_volume
        v = read_volume({str(folder)!r})
        ends = {{"first": int(v.array[3, 4, 0]), "last": int(v.array[3, 4, -1])}}
        json.dump({{**ends, **v.geometry.to_dict()}}, sys.stdout)
        """)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    want = _as_dicom_reads(volume)
    assert (got["first"], got["last"]) == (int(want.array[3, 4, 0]), int(want.array[3, 4, -1]))
    _assert_geometry_close(Geometry.from_dict(got), want.geometry, 1e-3)


def test_dicom_series_round_trip_real_crop(tmp_path):
    # brain1 is left-handed (diag(1, -1, 1)): it reads back with its slices reversed.
    brain = read_volume(_real(PYRADIOMICS / "brain1_image.nrrd"))
    start = np.array([96, 96, 8])
    array = np.ascontiguousarray(brain.array[96:160, 96:160, 8:16])
    g = brain.geometry
    origin = np.asarray(g.origin) + g.matrix() @ (np.asarray(g.spacing) * start)
    crop = Volume(array, Geometry(g.spacing, tuple(origin), g.direction))
    assert array.shape == (64, 64, 8) and array.any()
    _dicom_round_trip(tmp_path, crop)


def test_dicom_series_refusals(tmp_path):
    volume = _synthetic(np.int16, EYE, spacing=(0.7, 0.7, 2.5))
    with pytest.raises(ValueError, match="integer"):
        write_dicom_series(str(tmp_path / "float"), Volume(volume.array.astype(np.float32), volume.geometry))
    flat = Volume(volume.array[:, :, 0], Geometry.identity(2))
    with pytest.raises(ValueError, match="3-D"):
        write_dicom_series(str(tmp_path / "flat"), flat)
    assert os.listdir(tmp_path) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DataError) as excinfo:
        write_dicom_series(str(existing), volume)
    _assert_one_line_error(excinfo, existing, "remove it")
    assert os.listdir(tmp_path) == ["existing"] and os.listdir(existing) == []  # no temporary folder left


# --- errors -------------------------------------------------------------------------------------------------------


def test_error_missing_path(tmp_path):
    path = tmp_path / "nowhere.nii.gz"
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "check the path")


def test_error_random_bytes(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "replace the file")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_error_truncated_file(tmp_path, suffix):
    # ITK reads a truncated NIfTI without complaint, zero-filling the missing voxels; read_volume must not.
    whole = tmp_path / f"whole{suffix}"
    write_volume(str(whole), _synthetic(np.float32, shape=(24, 20, 12)))
    data = whole.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "replace the file")


def test_error_folder_without_dicom(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as excinfo:
        read_volume(str(folder))
    _assert_one_line_error(excinfo, folder, "point at a folder")


def test_error_two_dicom_series_in_one_folder(tmp_path):
    a = write_dicom_series(str(tmp_path / "a"), _synthetic(np.int16, EYE, seed=0))
    b = write_dicom_series(str(tmp_path / "b"), _synthetic(np.int16, EYE, origin=(0.0, 0.0, 50.0), seed=1))
    both = tmp_path / "both"
    both.mkdir()
    for prefix, files in (("a", a), ("b", b)):
        for f in files:
            os.replace(f, both / f"{prefix}_{os.path.basename(f)}")
    with pytest.raises(DataError) as excinfo:
        read_volume(str(both))
    _assert_one_line_error(excinfo, both, "folder of its own")


def test_error_vector_volume(tmp_path):
    path = tmp_path / "rgb.mha"
    rgb = np.random.default_rng(0).integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "one file each")
    assert "3 components" in str(excinfo.value)


# --- Geometry -----------------------------------------------------------------------------------------------------


def test_same_grid_and_dict_round_trip():
    g = _synthetic(np.float32).geometry
    assert g.same_grid(Geometry(g.spacing, g.origin, g.direction))
    noisy = Geometry(*(tuple(v + 1e-6 for v in getattr(g, k)) for k in ("spacing", "origin", "direction")))
    assert g.same_grid(noisy) and noisy.same_grid(g)
    shifted = Geometry(g.spacing, tuple(np.asarray(g.origin) + g.matrix() @ (np.asarray(g.spacing) * [0, 0, 1])),
                       g.direction)
    assert not g.same_grid(shifted)
    assert not g.same_grid(Geometry((0.5, 0.8, 2.0), g.origin, g.direction))
    assert not g.same_grid(Geometry(g.spacing, g.origin, EYE))
    assert not g.same_grid(Geometry.identity(2))

    d = g.to_dict()
    assert set(d) == {"spacing", "origin", "direction"} and all(type(v) is float for v in d["direction"])
    assert Geometry.from_dict(d) == g
    identity = Geometry.identity(3, (1.0, 1.0, 3.0))
    assert identity == Geometry((1.0, 1.0, 3.0), (0.0, 0.0, 0.0), EYE) and identity.ndim == 3
    np.testing.assert_array_equal(identity.matrix(), np.eye(3))


def test_plane_axis():
    identity = Geometry.identity(3)
    assert [plane_axis(identity, p) for p in ("axial", "coronal", "sagittal")] == [2, 1, 0]
    flipped = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.diag([-1.0, -1.0, -1.0]).ravel()))
    assert [plane_axis(flipped, p) for p in ("axial", "coronal", "sagittal")] == [2, 1, 0]
    # Slices stacked along array axis 0: column 0 (axis 0's direction) is world z, column 1 world x, column 2 world y.
    stacked_first = Geometry((3.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0))
    assert [plane_axis(stacked_first, p) for p in ("axial", "coronal", "sagittal")] == [0, 2, 1]
    assert [plane_axis(_synthetic(np.float32, PERMUTED_FLIPPED).geometry, p)
            for p in ("axial", "coronal", "sagittal")] == [0, 2, 1]
    assert [plane_axis(_synthetic(np.float32, ROT_Z30).geometry, p) for p in ("axial", "coronal", "sagittal")] \
        == [2, 1, 0]  # 30 degrees off stays nearest to its own axis
    with pytest.raises(ValueError, match="axial"):
        plane_axis(identity, "transverse")
    with pytest.raises(ValueError, match="3-D"):
        plane_axis(Geometry.identity(2), "axial")


def test_plane_axis_agrees_with_sitk_permute_axes(tmp_path):
    # SimpleITK's own PermuteAxes makes the geometry: output axis 0 is the input's z (slice) axis.
    image = sitk.GetImageFromArray(np.zeros((6, 10, 12), np.uint8))  # size (12, 10, 6): slices along z
    image.SetSpacing((0.5, 0.8, 3.0))
    permuted = sitk.PermuteAxes(image, [2, 0, 1])
    path = tmp_path / "permuted.mha"
    sitk.WriteImage(permuted, str(path))
    volume = read_volume(str(path))
    assert volume.array.shape == (6, 12, 10) and volume.geometry.spacing == (3.0, 0.5, 0.8)
    assert [plane_axis(volume.geometry, p) for p in ("axial", "coronal", "sagittal")] == [0, 2, 1]


# --- resample -----------------------------------------------------------------------------------------------------


def _ramp_volume(direction=EYE) -> Volume:
    z_mm = np.arange(4) * 3.0
    array = np.broadcast_to(2.0 + 0.5 * z_mm, (10, 10, 4)).astype(np.float32)
    return Volume(np.ascontiguousarray(array), Geometry((1.0, 1.0, 3.0), (5.0, -6.0, 7.5), tuple(direction)))


@pytest.mark.parametrize("direction", [EYE, ROT_Z30], ids=["identity", "rot_z30"])
def test_resample_image_is_linear(direction):
    volume = _ramp_volume(direction)
    out = resample(volume, (1.0, 1.0, 1.0), label=False)
    assert out.array.shape == (10, 10, 12) and out.array.dtype == np.float32
    assert out.geometry.spacing == (1.0, 1.0, 1.0)
    assert out.geometry.origin == volume.geometry.origin and out.geometry.direction == volume.geometry.direction
    # Inside the input's slice centres (0..9 mm) a linear ramp stays the same ramp.
    np.testing.assert_allclose(out.array[:, :, :10], np.broadcast_to(2.0 + 0.5 * np.arange(10), (10, 10, 10)),
                               atol=1e-4)
    # Past the last input slice centre the edge value carries on, never the zero background.
    np.testing.assert_allclose(out.array[:, :, 10:], 2.0 + 0.5 * 9.0, atol=1e-4)


def test_resample_labels_nearest_neighbour():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 2, 5], np.uint8), size=(10, 10, 4))
    volume = Volume(labels, Geometry((1.0, 1.0, 3.0), (5.0, -6.0, 7.5), ROT_Z30))
    out = resample(volume, (1.0, 1.0, 1.0), label=True)
    assert out.array.shape == (10, 10, 12) and out.array.dtype == np.uint8
    assert set(np.unique(out.array).tolist()) <= {0, 2, 5}
    nearest = [min(round(z / 3.0), 3) for z in range(12)]  # z / 3 never lands on .5
    np.testing.assert_array_equal(out.array, labels[:, :, nearest])


def test_resample_downsamples_in_plane():
    volume = _ramp_volume()
    out = resample(volume, (2.0, 2.0, 3.0), label=False)
    assert out.array.shape == (5, 5, 4) and out.geometry.spacing == (2.0, 2.0, 3.0)
    assert out.geometry.origin == volume.geometry.origin
    np.testing.assert_allclose(out.array, volume.array[::2, ::2, :], atol=1e-5)
    labels = resample(Volume((volume.array > 4).astype(np.uint8), volume.geometry), (2.0, 2.0, 3.0), label=True)
    assert labels.array.shape == (5, 5, 4)
    np.testing.assert_array_equal(labels.array, (volume.array[::2, ::2, :] > 4).astype(np.uint8))


def test_dicom_writing_keeps_the_process_locale(tmp_path):
    # GDCM sets the C locale to "C" for good; Python would then decode subprocess output as ASCII.
    import locale

    before = locale.getpreferredencoding(False)
    volume = Volume(np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3), Geometry.identity(3, (0.7, 0.7, 2.5)))
    write_dicom_series(str(tmp_path / "series"), volume)
    read_volume(str(tmp_path / "series"))
    assert locale.getpreferredencoding(False) == before
