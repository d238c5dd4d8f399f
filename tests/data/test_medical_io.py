"""Medical volume I/O: real files against known facts and SimpleITK itself,
round trips through every format (DICOM series included), one-line errors,
grid comparison, anatomical planes and resampling; vector volumes, resampling
back onto a scan's grid, and 2-D pictures (PNG, JPEG, BMP, TIFF)."""

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from unet_jax.data import medical_io
from unet_jax.data.medical_io import (Geometry, Volume, is_image_path, plane_axis, read_image, read_volume, resample,
                                      resample_to, write_dicom_series, write_image, write_volume)
from unet_jax.errors import DataError

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


# --- vector volumes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_write_vector_volume(tmp_path, suffix):
    scalar = _synthetic(np.float32, PERMUTED_FLIPPED, shape=(7, 5, 4))
    probabilities = np.random.default_rng(1).random((7, 5, 4, 3)).astype(np.float32)
    volume = Volume(probabilities, scalar.geometry)
    path = tmp_path / f"probabilities{suffix}"
    write_volume(str(path), volume)
    assert os.listdir(tmp_path) == [path.name]
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (7, 5, 4)
    np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing, rtol=0, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin, rtol=0, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), volume.geometry.direction, rtol=0, atol=1e-5)
    for ijk in [(0, 0, 0), (6, 4, 3), (1, 2, 3), (5, 0, 2)]:  # array index (i, j, k) is SimpleITK's pixel (i, j, k)
        np.testing.assert_array_equal(image.GetPixel(ijk), probabilities[ijk])
    with pytest.raises(DataError) as excinfo:  # read_volume still takes scalar volumes only
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "one file each")


# --- resample_to --------------------------------------------------------------------------------------------------

# Fine grid of 19 x 15 x 6 voxels: halving the in-plane resolution gives 10 x 8 voxels whose centres are every other
# fine centre, the last fine centre included, so going back needs no extrapolation.
FINE = Geometry((0.5, 0.8, 3.0), (-12.5, 30.25, 7.0), ROT_Z30)
A, KU, KV = 100.0, 2 * np.pi / 12.0, 2 * np.pi / 16.0  # amplitude, wave numbers along axes 0 and 1 (rad/mm)


def _smooth(shape=(19, 15, 6), geometry=FINE) -> Volume:
    u, v, w = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, geometry.spacing)), indexing="ij")
    return Volume((A * np.sin(KU * u) * np.cos(KV * v) + 0.5 * w).astype(np.float32), geometry)


def test_resample_to_undoes_resample():
    volume = _smooth()
    coarse = resample(volume, (1.0, 1.6, 3.0), label=False)
    assert coarse.array.shape == (10, 8, 6)
    np.testing.assert_allclose(coarse.array, volume.array[::2, ::2, :], rtol=0, atol=1e-3)  # samples at fine centres
    back = resample_to(coarse, volume.geometry, volume.array.shape, label=False)
    assert back.array.shape == volume.array.shape and back.array.dtype == np.float32
    assert back.geometry.same_grid(volume.geometry)
    np.testing.assert_allclose(back.geometry.spacing, volume.geometry.spacing, rtol=1e-12)
    # Linear interpolation between exact samples H apart errs by at most H^2/8 max|f''| along each axis (the
    # tensor-product bound adds them): 1.0^2/8 A KU^2 + 1.6^2/8 A KV^2 = 8.4, of an amplitude of 100; z is unchanged
    # and linear. A wrong axis order or origin would put errors of the amplitude's size.
    bound = 1.0 ** 2 / 8 * A * KU ** 2 + 1.6 ** 2 / 8 * A * KV ** 2
    error = np.abs(back.array - volume.array)
    assert error.max() <= bound, (error.max(), bound)
    np.testing.assert_allclose(back.array[::2, ::2, :], volume.array[::2, ::2, :], rtol=0, atol=1e-3)


def test_resample_to_labels_keep_dtype_and_values():
    labels = np.random.default_rng(0).choice(np.array([0, 2, 5], np.uint8), size=(19, 15, 6))
    volume = Volume(labels, FINE)
    coarse = resample(volume, (1.0, 1.6, 3.0), label=True)
    back = resample_to(coarse, FINE, labels.shape, label=True)
    assert back.array.dtype == np.uint8 and back.array.shape == labels.shape
    assert back.geometry.same_grid(FINE)
    assert set(np.unique(back.array).tolist()) <= {0, 2, 5}
    np.testing.assert_array_equal(back.array[::2, ::2, :], labels[::2, ::2, :])  # fine centres under coarse ones
    mask = Volume(labels > 0, FINE)
    back = resample_to(resample(mask, (1.0, 1.6, 3.0), label=True), FINE, labels.shape, label=True)
    assert back.array.dtype == np.bool_
    np.testing.assert_array_equal(back.array[::2, ::2, :], labels[::2, ::2, :] > 0)


@pytest.mark.parametrize("direction", [EYE, ROT_Z30], ids=["identity", "rot_z30"])
def test_resample_to_half_voxel_shift_gives_midpoints(direction):
    spacing, origin = (2.0, 1.0, 1.5), (5.0, -6.0, 7.5)
    ramp = np.broadcast_to((10.0 + 3.0 * np.arange(6))[:, None, None], (6, 3, 2)).astype(np.float32)
    volume = Volume(np.ascontiguousarray(ramp), Geometry(spacing, origin, direction))
    # Half a voxel back along axis 0 and one voxel more: points at indices -0.5, 0.5, ..., 5.5 of the input.
    g = volume.geometry
    shifted = Geometry(spacing, tuple(np.asarray(origin) - g.matrix() @ [0.5 * spacing[0], 0.0, 0.0]), g.direction)
    out = resample_to(volume, shifted, (7, 3, 2), label=False)
    assert out.array.shape == (7, 3, 2) and out.geometry.same_grid(shifted)
    midpoints = 10.0 + 3.0 * (np.arange(5) + 0.5)
    np.testing.assert_allclose(out.array[1:6], np.broadcast_to(midpoints[:, None, None], (5, 3, 2)), atol=1e-4)
    # Past the input's first and last centres: the nearest input value, not zero.
    np.testing.assert_allclose(out.array[0], 10.0, atol=1e-4)
    np.testing.assert_allclose(out.array[6], 25.0, atol=1e-4)
    with pytest.raises(ValueError, match="grid of shape"):
        resample_to(volume, shifted, (7, 3), label=False)


def test_resample_to_vector_volume():
    volume = _smooth(shape=(7, 5, 4))
    vector = Volume(np.stack([volume.array, -volume.array], axis=-1), volume.geometry)
    coarse = resample(volume, (1.0, 1.6, 3.0), label=False)
    coarse_vector = resample(vector, (1.0, 1.6, 3.0), label=False)
    assert coarse_vector.array.shape == coarse.array.shape + (2,) and coarse_vector.array.dtype == np.float32
    np.testing.assert_allclose(coarse_vector.array[..., 0], coarse.array, atol=1e-4)
    np.testing.assert_allclose(coarse_vector.array[..., 1], -coarse.array, atol=1e-4)
    back = resample_to(coarse_vector, volume.geometry, (7, 5, 4), label=False)
    assert back.array.shape == (7, 5, 4, 2)
    np.testing.assert_allclose(back.array[..., 0], resample_to(coarse, volume.geometry, (7, 5, 4), label=False).array,
                               atol=1e-4)
    # One component (a sigmoid's probability) keeps its axis.
    single = resample_to(Volume(coarse.array[..., None], coarse.geometry), volume.geometry, (7, 5, 4), label=False)
    assert single.array.shape == (7, 5, 4, 1)
    np.testing.assert_array_equal(single.array[..., 0], resample_to(coarse, volume.geometry, (7, 5, 4),
                                                                    label=False).array)


# --- 2-D pictures -------------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(7)
GREY8 = _RNG.integers(0, 256, (9, 13), dtype=np.uint8)
RGB8 = _RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
GREY16 = _RNG.integers(0, 65536, (9, 13), dtype=np.uint16)


def test_is_image_path():
    assert is_image_path("a/scan.PNG") and is_image_path("x.Tiff") and is_image_path(Path("y.jpeg"))
    assert not is_image_path("scan.nii.gz") and not is_image_path("picture.gif") and not is_image_path("png")


@pytest.mark.parametrize("name,array", [("grey.png", GREY8), ("grey1.png", GREY8[..., None]), ("rgb.png", RGB8),
                                        ("grey16.png", GREY16), ("rgb.bmp", RGB8), ("grey.bmp", GREY8),
                                        ("rgb.tif", RGB8), ("grey16.tiff", GREY16),
                                        ("float.tif", (GREY8 / 7.0).astype(np.float32)),
                                        ("float3.tif", (RGB8 / 7.0 - 5.0).astype(np.float32)),
                                        ("float2.tif", (RGB8[..., :2] / 3.0).astype(np.float32))])
def test_image_round_trip(tmp_path, name, array):
    path = tmp_path / name
    write_image(str(path), array)
    assert os.listdir(tmp_path) == [name]  # no temporary file left behind
    back = read_image(path)
    want = array if array.ndim == 3 else array[..., None]  # grey comes back [H, W, 1]
    assert back.dtype == array.dtype and back.shape == want.shape and back.flags.c_contiguous
    np.testing.assert_array_equal(back, want)


def test_image_files_written_are_what_they_say(tmp_path):
    write_image(tmp_path / "grey16.png", GREY16)
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.format == "PNG" and image.mode == "I;16"
    write_image(tmp_path / "rgb.tif", RGB8)
    with tifffile.TiffFile(tmp_path / "rgb.tif") as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB and tif.series[0].shape == (9, 13, 3)


def test_image_alpha_dropped_only_when_opaque(tmp_path):
    rgba = np.concatenate([RGB8, np.full((9, 13, 1), 255, np.uint8)], axis=-1)
    for name in ("opaque.png", "opaque.tif"):
        write_image(tmp_path / name, rgba)
        np.testing.assert_array_equal(read_image(tmp_path / name), RGB8)
    rgba[2, 3, 3] = 128
    for name in ("translucent.png", "translucent.tif"):
        write_image(tmp_path / name, rgba)
        np.testing.assert_array_equal(read_image(tmp_path / name), rgba)
    grey_alpha = np.stack([GREY8, np.full_like(GREY8, 255)], axis=-1)
    write_image(tmp_path / "la.png", grey_alpha)
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), GREY8[..., None])
    # A float TIFF's extra channels are data, never alpha: a last channel of ones stays.
    ones = np.stack([GREY8.astype(np.float32), np.ones((9, 13), np.float32)], axis=-1)
    write_image(tmp_path / "two.tif", ones)
    assert read_image(tmp_path / "two.tif").shape == (9, 13, 2)


def test_image_palette_and_bilevel_png(tmp_path):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255]], np.uint8)
    indices = _RNG.integers(0, 3, (9, 13), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    image.save(tmp_path / "palette.png")
    back = read_image(tmp_path / "palette.png")
    assert back.shape == (9, 13, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, palette[indices])
    Image.fromarray(GREY8 > 127).save(tmp_path / "bilevel.png")
    np.testing.assert_array_equal(read_image(tmp_path / "bilevel.png"), np.where(GREY8 > 127, 255, 0)[..., None])


def test_image_jpeg_read(tmp_path):
    flat = np.full((16, 16, 3), (200, 40, 90), np.uint8)  # one colour survives JPEG's lossy blocks almost exactly
    Image.fromarray(flat).save(tmp_path / "flat.jpg", quality=95)
    back = read_image(tmp_path / "flat.jpg")
    assert back.shape == (16, 16, 3) and back.dtype == np.uint8
    np.testing.assert_allclose(back, flat, atol=3)
    Image.fromarray(flat[..., 0]).save(tmp_path / "grey.JPEG")
    assert read_image(tmp_path / "grey.JPEG").shape == (16, 16, 1)


@pytest.mark.parametrize("name,array", [("grey.png", GREY8), ("rgb.png", RGB8), ("grey16.png", GREY16),
                                        ("float.tif", (RGB8 / 3.0).astype(np.float32)), ("rgb.tif", RGB8)])
def test_image_truncated(tmp_path, name, array):
    whole = tmp_path / f"whole_{name}"
    write_image(whole, array)
    data = whole.read_bytes()
    path = tmp_path / f"truncated_{name}"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        read_image(str(path))
    _assert_one_line_error(excinfo, path, "replace the file or pass --skip_bad")
    assert excinfo.value.__cause__ is None and excinfo.value.__suppress_context__


@pytest.mark.parametrize("name", ["missing.png", "missing.tif"])
def test_image_missing(tmp_path, name):
    with pytest.raises(DataError) as excinfo:
        read_image(tmp_path / name)
    _assert_one_line_error(excinfo, tmp_path / name, "unreadable")


def test_image_unknown_format_and_garbage(tmp_path):
    Image.fromarray(RGB8).save(tmp_path / "picture.gif")  # Pillow reads GIF, read_image does not
    (tmp_path / "garbage.png").write_bytes(_RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (tmp_path / "text.tif").write_text("not a TIFF")
    for name in ("picture.gif", "garbage.png", "text.tif"):
        with pytest.raises(DataError) as excinfo:
            read_image(tmp_path / name)
        _assert_one_line_error(excinfo, tmp_path / name, "unreadable")


def test_image_refuses_stacks_and_volumes(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 9, 4), np.uint8), photometric="minisblack")  # 3 pages
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((9, 13, 5), np.float32), photometric="minisblack",
                     planarconfig="contig")
    tifffile.imwrite(tmp_path / "rgb_stack.tif", np.zeros((2, 9, 13, 3), np.uint8), photometric="rgb")
    for name in ("stack.tif", "five.tif", "rgb_stack.tif"):
        with pytest.raises(DataError) as excinfo:
            read_image(tmp_path / name)
        _assert_one_line_error(excinfo, tmp_path / name, "one 2-D picture")
    # One page with a leading axis of one, and planar RGB, are single pictures.
    tifffile.imwrite(tmp_path / "one_page.tif", GREY8[None], photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "one_page.tif"), GREY8[..., None])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(RGB8, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), RGB8)
    tifffile.imwrite(tmp_path / "big_endian.tif", GREY16, byteorder=">")
    back = read_image(tmp_path / "big_endian.tif")
    assert back.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(back[..., 0], GREY16)


def test_image_refuses_16_bit_colour_png(tmp_path):
    # Pillow would read this file as 8-bit RGB: written by hand, byte by byte.
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rgb16 = (RGB8.astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 13, 9, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with pytest.raises(DataError) as excinfo:
        read_image(path)
    _assert_one_line_error(excinfo, path, "16-bit TIFF")


def test_write_image_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"float32.*\.tif"):
        write_image(tmp_path / "float.png", GREY8.astype(np.float32))
    with pytest.raises(ValueError, match=r"uint16 with 3.*\.tif"):
        write_image(tmp_path / "rgb16.png", RGB8.astype(np.uint16))
    with pytest.raises(ValueError, match=r"\.tif"):
        write_image(tmp_path / "rgba.bmp", np.zeros((4, 5, 4), np.uint8))
    for name in ("photo.jpg", "photo.JPEG"):
        with pytest.raises(ValueError, match="lossy"):
            write_image(tmp_path / name, RGB8)
    with pytest.raises(ValueError, match="ending"):
        write_image(tmp_path / "anim.gif", RGB8)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        write_image(tmp_path / "volume.tif", np.zeros((2, 3, 4, 5), np.uint8))
    assert os.listdir(tmp_path) == []


def test_write_image_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "out.tif"
    write_image(path, GREY8)
    write_image(path, 255 - GREY8)
    np.testing.assert_array_equal(read_image(path)[..., 0], 255 - GREY8)

    def fails_halfway(f, array, **kwargs):
        f.write(b"II*\x00 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", fails_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, GREY8)
    np.testing.assert_array_equal(read_image(path)[..., 0], 255 - GREY8)  # the old file, whole
    assert os.listdir(tmp_path) == ["out.tif"]  # and no temporary file


# --- hostile headers: sizes and spacings checked before any voxel is read or allocated ----------------------------

def _nifti_header(dims, pixdim=(1.0, 1.0, 1.0)) -> bytes:
    """A NIfTI-1 int16 header (vox_offset 352) of `dims` voxels and `pixdim` spacing."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *(1,) * (7 - len(dims)))
    struct.pack_into("<2h", header, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, *(1.0,) * (7 - len(pixdim)))
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return bytes(header)


def _gzip_of_zeros(path: Path, header: bytes, zeros: int) -> None:
    """`header` then `zeros` zero bytes, gzipped: a few KB on disk for many MB decompressed."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    path.write_bytes(compressor.compress(header) + compressor.compress(bytes(zeros)) + compressor.flush())


def _read_peak_bytes(path: Path, **kwargs) -> tuple[Exception | None, int]:
    """What read_volume raises (None when it reads) and the peak of Python's allocations while it runs."""
    tracemalloc.start()
    try:
        read_volume(str(path), **kwargs)
        error = None
    except DataError as e:
        error = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


def test_nifti_gzip_bomb_is_read_only_as_far_as_its_header_promises(tmp_path):
    # A 32x32x32 int16 volume (64 KiB) followed by 32 MiB more zeros: the check once held all of them.
    path = tmp_path / "bomb.nii.gz"
    _gzip_of_zeros(path, _nifti_header((32, 32, 32)), 32 << 20)
    error, peak = _read_peak_bytes(path)
    assert error is None
    assert peak < 4 << 20, peak


def test_nifti_header_over_the_voxel_cap_is_refused_before_decompressing(tmp_path):
    # The header claims 2000^3 voxels; the stream holds 8 MiB of zeros, 4x the cap of 10**6 int16 voxels.
    path = tmp_path / "bomb.nii.gz"
    _gzip_of_zeros(path, _nifti_header((2000, 2000, 2000)), 8 << 20)
    error, peak = _read_peak_bytes(path, max_voxels=10**6)
    assert isinstance(error, DataError) and "\n" not in str(error), error
    assert "bomb.nii.gz: 2000 x 2000 x 2000 = 8000000000 voxels, over the cap of 1000000" in str(error)
    assert "--max_voxels" in str(error)
    assert peak < 1 << 20, peak


def test_nifti_dims_whose_product_overflows_int64(tmp_path):
    path = tmp_path / "five_d.nii.gz"  # 30000^5 voxels: int64 wraps, ITK reads at most 5-D
    _gzip_of_zeros(path, _nifti_header((30000,) * 5), 1024)
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "--max_voxels")
    assert f"= {30000**5} voxels" in str(excinfo.value)


def test_plain_nifti_shorter_than_its_header_is_still_truncated(tmp_path):
    path = tmp_path / "short.nii"  # a size the file cannot hold is truncation, whatever the cap
    path.write_bytes(_nifti_header((2000, 2000, 2000)) + bytes(1024))
    with pytest.raises(DataError, match="short.nii: unusable NIfTI file \\(1376 bytes where its header promises"):
        read_volume(str(path), max_voxels=10**6)


def _nrrd(path: Path, sizes: str, spacings: str = "1 1 1") -> Path:
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {sizes}\nspacings: {spacings}\nencoding: raw\n\n"
                     .encode() + bytes(64))
    return path


def _mha(path: Path, sizes: str, spacings: str = "1 1 1") -> Path:
    path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = {sizes}\nElementSpacing = {spacings}\n"
                     "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n".encode() + bytes(64))
    return path


@pytest.mark.parametrize("write", [_nrrd, _mha])
def test_nrrd_and_mha_headers_over_the_voxel_cap(tmp_path, write):
    suffix = ".nrrd" if write is _nrrd else ".mha"
    small = write(tmp_path / f"small{suffix}", "200 100 100")  # 2 MB claimed, 64 bytes held
    with pytest.raises(DataError) as excinfo:
        read_volume(str(small), max_voxels=10**6)
    _assert_one_line_error(excinfo, small, "pass --max_voxels=N if the image is really that large")
    assert "200 x 100 x 100 = 2000000 voxels, over the cap of 1000000" in str(excinfo.value)
    huge = write(tmp_path / f"huge{suffix}", "100000 100000 100000")
    with pytest.raises(DataError) as excinfo:
        read_volume(str(huge))
    _assert_one_line_error(excinfo, huge, "--max_voxels")


@pytest.mark.parametrize("name, write, spacings", [("negative.nrrd", _nrrd, "-1 1 1"), ("zero.mha", _mha, "0 1 1"),
                                                   ("nan.mha", _mha, "nan 1 1")])
def test_bad_spacing_in_a_header(tmp_path, name, write, spacings):
    # (ITK reads NRRD's NaN and NIfTI's NaN or 0 as 1 mm, MetaImage's NaN as 0.)
    path = write(tmp_path / name, "4 4 4", spacings)
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "fix the spacing in the header")


def test_negative_nifti_pixdim(tmp_path):
    path = tmp_path / "negative.nii.gz"
    _gzip_of_zeros(path, _nifti_header((4, 4, 4), pixdim=(-2.0, 1.0, 1.0)), 128)
    with pytest.raises(DataError) as excinfo:
        read_volume(str(path))
    _assert_one_line_error(excinfo, path, "fix the spacing in the header")


def test_dicom_series_over_the_voxel_cap(tmp_path):
    files = write_dicom_series(str(tmp_path / "series"), _synthetic(np.int16, EYE))  # 12 x 10 x 6
    assert read_volume(str(tmp_path / "series"), max_voxels=720).array.shape == (12, 10, 6)
    with pytest.raises(DataError) as excinfo:
        read_volume(str(tmp_path / "series"), max_voxels=719)
    _assert_one_line_error(excinfo, os.path.dirname(files[0]), "--max_voxels")
    assert "12 x 10 x 1 x 6 = 720 voxels" in str(excinfo.value)


def test_resample_refuses_a_huge_grid_or_a_bad_spacing_before_allocating():
    coarse = Volume(np.zeros((16, 16, 16), np.int16), Geometry.identity(3, (1000.0,) * 3))  # 1000 mm voxels
    with pytest.raises(DataError, match="16000 x 16000 x 16000 = 4096000000000 voxels, .*fix the spacing") as excinfo:
        resample(coarse, (1.0, 1.0, 1.0), label=False)
    assert "\n" not in str(excinfo.value)
    assert resample(coarse, (1000.0, 2000.0, 4000.0), label=True, max_voxels=512).array.shape == (16, 8, 4)
    with pytest.raises(DataError, match="16 x 8 x 4 = 512 voxels, over the cap of 511"):
        resample(coarse, (1000.0, 2000.0, 4000.0), label=True, max_voxels=511)
    for spacing in [(0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0), (-1.0, 1.0, 1.0), (float("inf"), 1.0, 1.0)]:
        with pytest.raises(DataError, match="is not positive and finite; fix the spacing"):
            resample(coarse, spacing, label=False)
    with pytest.raises(DataError, match="is not positive and finite"):
        resample(Volume(coarse.array, Geometry.identity(3, (0.0, 1.0, 1.0))), (1.0, 1.0, 1.0), label=False)
    with pytest.raises(DataError, match="100000 x 100000 x 100000 x 2 = .* over the cap of 2147483648"):
        resample_to(Volume(np.zeros((4, 4, 4, 2), np.float32), Geometry.identity(3)), Geometry.identity(3),
                    (100000,) * 3, label=False)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A 4x4 grey PNG whose IHDR claims `width` x `height` (its CRC fixed to match)."""
    write_image(str(path), np.zeros((4, 4), np.uint8))
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _tiff_claiming(path: Path, width: int, height: int) -> Path:
    """A 4x4 grey TIFF whose ImageWidth and ImageLength tags claim `width` x `height`."""
    write_image(str(path), np.zeros((4, 4), np.uint8))
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(str(path)) as tif:
        for code, value in ((256, width), (257, height)):
            tag = tif.pages[0].tags[code]
            struct.pack_into("<I" if tag.dtype == 4 else "<H", data, tag.valueoffset, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make, name", [(_png_claiming, "huge.png"), (_tiff_claiming, "huge.tif")])
def test_image_headers_over_the_voxel_cap(tmp_path, make, name):
    path = make(tmp_path / name, 60000, 50000)
    with pytest.raises(DataError) as excinfo:
        read_image(str(path))
    _assert_one_line_error(excinfo, path, "pass --max_voxels=N if the image is really that large")
    assert "50000 x 60000" in str(excinfo.value) and "over the cap of 2147483648" in str(excinfo.value)
    with pytest.raises(DataError, match="2000 x 3000 .* over the cap of 1000000"):
        read_image(str(make(tmp_path / f"small_{name}", 3000, 2000)), max_voxels=10**6)


def test_pillow_decompression_bomb_limit_follows_max_voxels(tmp_path):
    # 20000^2 pixels is past twice Pillow's default limit (an error there); under the cap it is a truncated file.
    path = _png_claiming(tmp_path / "big.png", 20000, 20000)
    with pytest.raises(DataError, match="big.png: unreadable or truncated image") as excinfo:
        read_image(str(path))
    assert "DecompressionBomb" not in str(excinfo.value)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own limit is left as it was


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_nan_and_inf_are_counted_across_chunks(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(medical_io, "_NIFTI_CHUNK", 64)  # 16 float32 voxels a chunk: the bad ones in three
    volume = _synthetic(np.float32, shape=(12, 10, 6))
    volume.array.flat[[0, 100, 719]] = [np.nan, np.inf, -np.inf]
    path = tmp_path / f"bad{suffix}"
    write_volume(str(path), volume)
    with pytest.raises(DataError, match=f"bad{suffix}: unusable NIfTI file \\(3 NaN or infinite voxels\\)"):
        read_volume(str(path))
