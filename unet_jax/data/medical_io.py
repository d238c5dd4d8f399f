"""Read and write medical volumes with their geometry: NIfTI, NRRD, MHA/MHD and
DICOM series (a folder of slices), through SimpleITK.

SimpleITK is the one library that reads and writes all four formats with
spacing, origin and direction, in physical LPS coordinates whatever the file
stores (NIfTI's RAS sform included), so a prediction written back lands on
the scanner's grid. Arrays come in ITK index order, [X, Y, Z] (the transpose
of `sitk.GetArrayFromImage`'s [Z, Y, X]): the in-plane axes first and the
slice axis last, as the 3-D U-Net's in-plane (3x3x1) kernels expect.

2-D pictures (PNG, JPEG, BMP, TIFF) are read and written here too, so that a
prediction on a new scan goes back in the scan's own format: Pillow for PNG,
JPEG and BMP, tifffile for TIFF (any dtype, float included).
This module never imports JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gzip
import locale
import math
import os
import shutil
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import tifffile
from PIL import Image

from unet_jax.errors import DataError
from unet_jax.files import atomic_write, temporary_file, temporary_folder

# File endings SimpleITK reads as one volume; a folder is read as a DICOM series.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Written as one file each (a detached header, .mhd or .nhdr, would need a second file).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# World axes of ITK's LPS frame: x runs to the patient's left, y to the back, z up.
ANATOMICAL_PLANES = {"sagittal": 0, "coronal": 1, "axial": 2}  # the world axis each plane is normal to
# File endings of 2-D pictures; TIFF goes through tifffile, the rest through Pillow.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
# The default cap on the voxels (spatial sizes times channels) of one image read or one resampled grid: a
# header is untrusted, and a few bytes can claim terabytes (8 GiB of float32 at the cap).
MAX_VOXELS = 2**31
_VOXELS_FIX = "pass --max_voxels=N if the image is really that large, or replace the file"


def check_voxels(shape: Sequence[int], path: str, max_voxels: int = MAX_VOXELS, *, fix: str = _VOXELS_FIX) -> None:
    """DataError naming `path` and the `fix` unless an image of `shape` (spatial sizes and channels) has at
    most `max_voxels` voxels; multiplied as Python ints, which do not overflow as int64 does."""
    voxels = math.prod(int(s) for s in shape)
    if voxels > max_voxels:
        raise DataError(f"{path}: {' x '.join(str(int(s)) for s in shape)} = {voxels} voxels, over the cap of "
                        f"{max_voxels}; {fix}")


def check_spacing(spacing: Sequence[float], path: str) -> None:
    """DataError naming `path` unless every voxel spacing is finite and positive."""
    if not all(math.isfinite(s) and s > 0 for s in map(float, spacing)):
        raise DataError(f"{path}: voxel spacing {[float(s) for s in spacing]} is not positive and finite; fix the "
                        "spacing in the header (pixdim in NIfTI) or replace the file")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels lie in physical space (mm, LPS): voxel size per
    array axis, the position of voxel 0, and the direction cosines (row-major
    ndim x ndim; column i is array axis i's direction)."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def ndim(self) -> int:
        return len(self.spacing)

    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, np.float64).reshape(self.ndim, self.ndim)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in ("spacing", "origin", "direction")}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(*(tuple(float(v) for v in d[k]) for k in ("spacing", "origin", "direction")))

    @classmethod
    def identity(cls, ndim: int, spacing: Sequence[float] | None = None) -> Geometry:
        return cls(tuple(spacing or (1.0,) * ndim), (0.0,) * ndim, tuple(np.eye(ndim).ravel()))

    def same_grid(self, other: Geometry, tolerance: float = 1e-3) -> bool:
        """Same spacing, origin and direction within `tolerance`: relative for
        the spacing, in voxels for the origin, absolute for direction cosines
        (files of one scan differ by float rounding, not by more)."""
        return (self.ndim == other.ndim
                and np.allclose(self.spacing, other.spacing, rtol=tolerance, atol=0)
                and np.allclose(self.origin, other.origin, rtol=0, atol=tolerance * min(self.spacing))
                and np.allclose(self.direction, other.direction, rtol=0, atol=tolerance))


@dataclasses.dataclass
class Volume:
    """A scalar volume: `array` in ITK index order [X, Y, (Z)] with its geometry;
    [X, Y, (Z), K] with one axis more than the geometry is a K-component volume
    (class probabilities), which `write_volume` and `resample_to` take too."""

    array: np.ndarray
    geometry: Geometry


def is_volume_path(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES)


def is_image_path(path: str) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def _from_image(image: sitk.Image, path: str) -> Volume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a "
                        "scalar volume (split the channels into one file each)")
    return _to_volume(image)


def _to_volume(image: sitk.Image) -> Volume:
    """`image` as a Volume; a multi-component image as [X, Y, (Z), K]."""
    array = sitk.GetArrayFromImage(image)  # [(Z), Y, X] or [(Z), Y, X, K]
    if array.ndim == image.GetDimension() and image.GetPixelIDTypeAsString().startswith("vector"):
        array = array[..., None]  # SimpleITK drops the axis of a one-component vector image
    axes = tuple(reversed(range(image.GetDimension()))) + tuple(range(image.GetDimension(), array.ndim))
    array = np.ascontiguousarray(np.transpose(array, axes))
    return Volume(array, Geometry(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection())))


def _to_image(volume: Volume) -> sitk.Image:
    array = volume.array
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    g = volume.geometry
    vector = array.ndim == g.ndim + 1  # [X, Y, (Z), K]: K components per voxel
    if array.ndim != g.ndim and not vector:
        raise ValueError(f"geometry of {g.ndim} dimensions for an array of {array.ndim}")
    axes = tuple(reversed(range(g.ndim))) + ((g.ndim,) if vector else ())  # the spatial axes only
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, axes)), isVector=vector)
    image.SetSpacing(g.spacing)
    image.SetOrigin(g.origin)
    image.SetDirection(g.direction)
    return image


def dicom_series_files(folder: str) -> list[str]:
    """The slice files of the one DICOM series in `folder`, in slice order."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
    if not ids:
        raise DataError(f"{folder}: no DICOM series found in this folder; point at a folder of .dcm slices")
    if len(ids) > 1:
        raise DataError(f"{folder}: {len(ids)} DICOM series in one folder; move each series into a folder of its own")
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ids[0]))
    # GDCM sorts by slice position only once a DICOM file has been read in this process (before,
    # it falls back to instance numbers, which may run against the normal and mirror the volume):
    # sort here by position along the slice normal (row x column), as ImageSeriesReader expects.
    reader, positions = sitk.ImageFileReader(), []
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if reader.GetDimension() != 3:
            return files
        if not positions:
            normal = np.asarray(reader.GetDirection()).reshape(3, 3)[:, 2]
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    return [files[i] for i in np.argsort(positions, kind="stable")]


# NIfTI float datatypes (header field `datatype`) and their NumPy types.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


# Bytes of a NIfTI file's voxel data read at a time: a whole multiple of every voxel size.
_NIFTI_CHUNK = 1 << 24


def _nifti_problem(path: str, reader: sitk.ImageFileReader, max_voxels: int) -> str | None:
    """Why a NIfTI file cannot be trusted, or None. ITK reads a truncated NIfTI
    without complaint, zero-filling the rest, and reads NaN and infinite
    voxels as 0 (fixed in later ITKs), so both are checked on the raw bytes,
    streamed chunk by chunk up to the size the header promises (never the
    rest of a gzip bomb). DataError when the header claims over `max_voxels`."""
    keys = ("dim[0]", "vox_offset", "bitpix", "datatype")
    if not all(reader.HasMetaDataKey(k) for k in keys):
        return None
    dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
    offset = int(float(reader.GetMetaData("vox_offset")))
    expected = offset + math.prod(dims) * int(reader.GetMetaData("bitpix")) // 8
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"  # niftilib also reads a plain file named .nii.gz
    if not gzipped and os.path.getsize(path) < expected:
        return f"{os.path.getsize(path)} bytes where its header promises {expected}"
    check_voxels(dims, path, max_voxels)  # a gzip stream's length is unknown until it is decompressed
    kind = _NIFTI_FLOATS.get(int(reader.GetMetaData("datatype")))
    read, bad = 0, 0
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            header = f.read(offset)
            read = len(header)
            # sizeof_hdr (348 for NIfTI-1, 540 for NIfTI-2) tells the byte order.
            order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"
            dtype = np.dtype(order + kind) if kind else None
            while read < expected and (chunk := f.read(min(_NIFTI_CHUNK, expected - read))):
                read += len(chunk)
                if dtype is not None:
                    bad += np.count_nonzero(~np.isfinite(np.frombuffer(chunk, dtype, len(chunk) // dtype.itemsize)))
    except (EOFError, OSError, zlib.error) as e:
        return f"compressed data unreadable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if read < expected:
        return f"{read} bytes where its header promises {expected}"
    return f"{bad} NaN or infinite voxels" if bad else None


def _check_header(reader: sitk.ImageFileReader, path: str, max_voxels: int, slices: int | None = None) -> None:
    """The size and spacing in a header read by `ReadImageInformation`, checked before its voxels are:
    `slices` files of that size for a DICOM series."""
    components = reader.GetNumberOfComponents()
    shape = (*reader.GetSize(), *((slices,) if slices else ()), *((components,) if components > 1 else ()))
    check_voxels(shape, path, max_voxels)
    check_spacing(reader.GetSpacing(), path)


def read_volume(path: str, *, max_voxels: int = MAX_VOXELS) -> Volume:
    """A NIfTI/NRRD/MHA/MHD file, or a folder holding one DICOM series, as a
    `Volume`; DataError naming the file when it cannot be read, or when its
    header claims over `max_voxels` voxels or a spacing not finite and positive
    (checked before the voxels are read)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; check the path")
    try:
        if os.path.isdir(path):
            files = dicom_series_files(path)
            first = sitk.ImageFileReader()
            first.SetFileName(files[0])
            first.ReadImageInformation()
            _check_header(first, path, max_voxels, slices=len(files))
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            reader = sitk.ImageFileReader()
            reader.SetFileName(path)
            reader.ReadImageInformation()
            if path.lower().endswith((".nii", ".nii.gz")) and (problem := _nifti_problem(path, reader, max_voxels)):
                raise DataError(f"{path}: unusable NIfTI file ({problem}); fix or replace the file, "
                                "or pass --skip_bad")
            _check_header(reader, path, max_voxels)
            image = reader.Execute()
    except RuntimeError as e:  # SimpleITK's one exception type; its message spans many lines
        reason = next((line.strip() for line in str(e).splitlines() if "rror" in line or "annot" in line),
                      str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error")
        raise DataError(f"{path}: unreadable volume ({reason[:200]}); replace the file or pass --skip_bad") from None
    return _from_image(image, path)


def write_volume(path: str, volume: Volume) -> None:
    """Writes `volume` to `path` in the format its ending names (compressed
    where the format allows), atomically: a temporary name, then a rename.
    An [X, Y, Z, K] array is written as a K-component (vector) image."""
    path = os.fspath(path)
    if not path.lower().endswith(WRITE_SUFFIXES):
        raise ValueError(f"{path}: cannot write this format; end the name in one of {', '.join(WRITE_SUFFIXES)}")
    tmp = temporary_file(path)  # ends in path's name: the ending picks the format
    try:
        sitk.WriteImage(_to_image(volume), tmp, useCompression=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_dicom_series(folder: str, volume: Volume, *, series_description: str = "unet_jax") -> list[str]:
    """Writes a 3-D integer volume as a DICOM series, one file per slice along
    the last axis, with the position, orientation and spacing tags that place
    it in physical space; returns the file names. Files go to a temporary
    folder that is renamed to `folder`. DICOM's slice axis is row x column, so
    a left-handed direction (determinant -1, as NIfTI's diag(1, -1, 1)) reads
    back with the slices reversed: the same voxels at the same points."""
    array = volume.array
    if array.ndim != 3 or array.dtype.kind not in "iub":
        raise ValueError(f"DICOM series need a 3-D integer volume, got {array.ndim}-D {array.dtype}")
    array = array.astype(np.int16 if array.dtype.kind == "i" else np.uint16)
    image = _to_image(Volume(array, volume.geometry))
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")
    d = image.GetDirection()
    series_uid = f"1.2.826.0.1.3680043.2.1125.{date}.{now.strftime('%H%M%S%f')}"
    tags = {"0008|0021": date, "0008|0031": time, "0008|0008": "DERIVED\\SECONDARY", "0020|000e": series_uid,
            "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0008|103e": series_description, "0018|0050": str(volume.geometry.spacing[2])}
    out = os.path.abspath(folder)
    if os.path.exists(out):
        raise DataError(f"{out}: already exists; remove it or choose another folder")
    with _locale_kept():
        return _write_slices(image, tags, out)


@contextlib.contextmanager
def _locale_kept():
    """Restores the process's C locale after GDCM, whose DICOM writer sets it to
    "C" for good: Python would then decode every subprocess's output as ASCII."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image: sitk.Image, tags: dict[str, str], out: str) -> list[str]:
    """The slices of `image` as DICOM files in a temporary folder renamed to `out`."""
    tmp = temporary_folder(out)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    names = []
    try:
        for z in range(image.GetDepth()):
            plane = image[:, :, z]
            for tag, value in tags.items():
                plane.SetMetaData(tag, value)
            plane.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))))
            plane.SetMetaData("0020|0013", str(z + 1))
            names.append(f"slice_{z:04d}.dcm")
            writer.SetFileName(os.path.join(tmp, names[-1]))
            writer.Execute(plane)
        if os.path.exists(out):  # appeared while writing
            raise DataError(f"{out}: already exists; remove it or choose another folder")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(out, n) for n in names]


def plane_axis(geometry: Geometry, plane: str) -> int:
    """The array axis along which consecutive slices of `plane` ('axial',
    'coronal', 'sagittal') follow: the axis whose direction is closest to the
    plane's normal."""
    if plane not in ANATOMICAL_PLANES:
        raise ValueError(f"plane={plane!r}: choose one of {', '.join(ANATOMICAL_PLANES)}")
    if geometry.ndim != 3:
        raise ValueError(f"slicing by anatomical plane needs a 3-D volume, not {geometry.ndim}-D")
    return int(np.argmax(np.abs(geometry.matrix()[ANATOMICAL_PLANES[plane]])))


def resample(volume: Volume, spacing: Sequence[float], *, label: bool, max_voxels: int = MAX_VOXELS) -> Volume:
    """`volume` on a grid of voxel size `spacing` over the same physical extent
    (same origin and direction): linear interpolation for images, nearest
    neighbour for labels. Voxels past the last input voxel centre (the last
    slices when upsampling) take the nearest input value, not zero. DataError
    for a spacing (either) not finite and positive, or a grid over `max_voxels`
    (a header's 1000 mm voxels resampled to 1 mm), before anything is allocated."""
    g = volume.geometry
    check_spacing(g.spacing, "the volume to resample")
    check_spacing(spacing, "the resampling target")
    # Python floats, not an int64 array that a huge ratio would overflow.
    size = [max(1, round(n * s / t)) for n, s, t in zip(volume.array.shape[:g.ndim], g.spacing, map(float, spacing))]
    return resample_to(volume, Geometry(tuple(float(s) for s in spacing), g.origin, g.direction), size, label=label,
                       max_voxels=max_voxels)


def resample_to(volume: Volume, geometry: Geometry, shape: Sequence[int], *, label: bool,
                max_voxels: int = MAX_VOXELS) -> Volume:
    """`volume` on the grid of `shape` voxels that `geometry` places, as a
    prediction made on a `resample`d grid goes back onto its scan's grid:
    linear interpolation to float32 for images, nearest neighbour keeping the
    dtype for labels. Points outside the input's extent take the nearest input
    value, not zero. A K-component volume stays one. DataError for a grid over
    `max_voxels` or a spacing not finite and positive, before it is allocated."""
    if len(shape) != geometry.ndim or geometry.ndim != volume.geometry.ndim:
        raise ValueError(f"a {volume.geometry.ndim}-D volume onto a grid of shape {tuple(shape)} and "
                         f"{geometry.ndim}-D geometry")
    grid = f"resampling from spacing {list(volume.geometry.spacing)} mm to {list(geometry.spacing)} mm"
    check_spacing(geometry.spacing, grid)
    check_voxels((*shape, *volume.array.shape[geometry.ndim:]), grid, max_voxels,
                 fix="fix the spacing in the scan's header, or pass --max_voxels=N if the grid really is that large")
    image = _to_image(volume)
    vector = volume.array.ndim > volume.geometry.ndim  # [X, Y, Z, K], K = 1 included
    pixel = image.GetPixelID() if label else (sitk.sitkVectorFloat32 if vector else sitk.sitkFloat32)
    out = sitk.Resample(image, [int(s) for s in shape], sitk.Transform(),
                        sitk.sitkNearestNeighbor if label else sitk.sitkLinear, geometry.origin, geometry.spacing,
                        geometry.direction, 0, pixel, useNearestNeighborExtrapolator=True)
    result = _to_volume(out)
    if label:  # a bool mask went through SimpleITK as uint8
        result.array = result.array.astype(volume.array.dtype, copy=False)
    return result


# Pillow modes read as they are; any other but bilevel and palette becomes RGB (CMYK or YCbCr JPEGs).
_PILLOW_KEPT = ("L", "LA", "RGB", "RGBA", "I;16")
# What Pillow writes without loss, by ending and dtype: the channel counts it takes.
_PILLOW_WRITES = {(".png", "uint8"): (1, 2, 3, 4), (".png", "uint16"): (1,), (".bmp", "uint8"): (1, 3)}


def read_image(path: str, *, max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """A 2-D picture as [H, W, C] (grey as C=1) in its own dtype: uint8,
    uint16 for a 16-bit PNG, float TIFF as stored. Palette pictures become
    RGB; an alpha channel is dropped where it is fully opaque. DataError
    naming the file when it cannot be read, is not one picture, or its header
    claims over `max_voxels` values (checked before decoding)."""
    path = os.fspath(path)
    try:
        array, alpha = (_read_tiff if path.lower().endswith(TIFF_SUFFIXES) else _read_pillow)(path, max_voxels)
    except DataError:
        raise
    except Exception as e:  # Pillow and tifffile raise many types for missing or damaged files
        reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"
        raise DataError(f"{path}: unreadable or truncated image ({reason[:200]}); replace the file or pass "
                        "--skip_bad") from None
    array = np.ascontiguousarray(array, array.dtype.newbyteorder("="))  # big-endian files: native order
    if array.ndim == 2:
        array = array[..., None]
    if alpha and np.all(array[..., -1] == (np.iinfo(array.dtype).max if array.dtype.kind in "ui" else 1)):
        array = np.ascontiguousarray(array[..., :-1])
    return array


# Pillow's decompression-bomb limit is one global read when a file is opened; opened under this lock with the
# limit off, since `max_voxels` caps the size instead.
_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_pillow(path: str) -> Image.Image:
    with _PILLOW_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(path, formats=("PNG", "JPEG", "BMP"))
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _read_pillow(path: str, max_voxels: int) -> tuple[np.ndarray, bool]:
    """A PNG, JPEG or BMP picture as [H, W] or [H, W, C], and whether its last channel is alpha."""
    with _open_pillow(path) as image:
        check_voxels((image.height, image.width, len(image.getbands())), path, max_voxels)
        image.load()  # decodes now: a truncated file fails here
        if image.format == "PNG" and image.mode == "I":  # older Pillows open a 16-bit grey PNG as int32
            return np.array(image).astype(np.uint16), False
        if image.format == "PNG" and image.mode != "I;16" and _png_bit_depth(path) == 16:
            raise DataError(f"{path}: 16-bit PNG with colour or alpha, which Pillow reads only as 8 bits; save "
                            "it as a 16-bit TIFF or pass --skip_bad")
        if image.mode == "1":
            image = image.convert("L")
        elif image.mode in ("P", "PA"):
            image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
        elif image.mode not in _PILLOW_KEPT:
            image = image.convert("RGB")
        return np.array(image), image.mode in ("LA", "RGBA")


def _png_bit_depth(path: str) -> int:
    with open(path, "rb") as f:
        return f.read(25)[24]  # IHDR follows the 8-byte signature: length, type, width, height, bit depth


def _read_tiff(path: str, max_voxels: int) -> tuple[np.ndarray, bool]:
    """The first series of a TIFF as [H, W] or [H, W, C], and whether its last channel is alpha."""
    with tifffile.TiffFile(path) as tif:
        series, extras = tif.series[0], tif.pages[0].extrasamples
        check_voxels(series.shape, path, max_voxels)
        array, axes = series.asarray(), series.axes
    single = tuple(i for i, a in enumerate(axes) if a not in "YX" and array.shape[i] == 1)
    array, axes = array.squeeze(single), "".join(a for i, a in enumerate(axes) if i not in single)
    if axes == "SYX":  # planar: one plane per channel
        array, axes = np.moveaxis(array, 0, -1), "YXS"
    if axes not in ("YX", "YXS") or array.ndim == 3 and array.shape[-1] > 4:
        raise DataError(f"{path}: TIFF of shape {array.shape} (axes {axes}); expected one 2-D picture, [H, W] or "
                        "[H, W, C] with C <= 4: save one picture per file or pass --skip_bad")
    return array, array.ndim == 3 and bool(extras) and extras[-1] in (1, 2)  # associated or unassociated alpha


def write_image(path: str, array: np.ndarray) -> None:
    """Writes an [H, W] or [H, W, C] picture in the format its ending names,
    atomically: PNG (uint8, or uint16 grey) and BMP (uint8 grey or RGB)
    through Pillow, TIFF of any dtype through tifffile (integer arrays of 3 or
    4 channels as RGB(A), anything else as plain channels). No JPEG: it is
    lossy."""
    path, array = os.fspath(path), np.asarray(array)
    lower = path.lower()
    if lower.endswith((".jpg", ".jpeg")):
        raise ValueError(f"{path}: JPEG is lossy and would change the values written; write a .png or .tif")
    if not lower.endswith(IMAGE_SUFFIXES):
        raise ValueError(f"{path}: not a picture ending; end the name in one of .png, .bmp, .tif, .tiff")
    if array.ndim not in (2, 3):
        raise ValueError(f"{path}: an image is [H, W] or [H, W, C], not an array of shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    channels = array.shape[2] if array.ndim == 3 else 1
    if lower.endswith(TIFF_SUFFIXES):
        rgb = array.dtype.kind in "ui" and channels in (3, 4)
        with atomic_write(path, "wb") as f:
            tifffile.imwrite(f, array, photometric="rgb" if rgb else "minisblack", planarconfig="contig",
                             metadata=None)
        return
    ending = ".png" if lower.endswith(".png") else ".bmp"
    if channels not in _PILLOW_WRITES.get((ending, array.dtype.name), ()):
        holds = " or ".join(f"{d} with {'/'.join(map(str, c))} channel(s)"
                            for (e, d), c in _PILLOW_WRITES.items() if e == ending)
        raise ValueError(f"{path}: {ending[1:].upper()} holds {holds}, not {array.dtype} with {channels}; "
                         "write a .tif for this array")
    with atomic_write(path, "wb") as f:
        Image.fromarray(array).save(f, format=ending[1:].upper())
