"""Writing 3-D phantom cases as NIfTI files, one folder per case, on a grid
centred on the origin."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from data_prep.common import atomic_output_dir
from data_prep.phantoms.shapes import voxel_grid
from unet_jax.data.medical_io import Geometry, Volume, write_volume

MAX_CASES = 9999  # case numbers are four digits, starting at 0001


def centred_geometry(shape: tuple[int, ...], spacing: tuple[float, ...]) -> Geometry:
    """The given spacing, identity direction and an origin that centres the
    field of view on 0, -(shape - 1) * spacing / 2."""
    origin = tuple(float(-(n - 1) * s / 2) for n, s in zip(shape, spacing))
    return Geometry(spacing, origin, tuple(float(v) for v in np.eye(3).ravel()))


def write_cases(out_dir: str | os.PathLike, case: Callable[[int, tuple, tuple], tuple[str, dict[str, np.ndarray]]],
                *, num_cases: int, shape, spacing, own_files: re.Pattern, desc: str, overwrite: bool,
                progress: bool) -> list[str]:
    """Writes `case(index, shape, spacing)` -> (name, {file name: array}) for
    each of `num_cases` cases as `out_dir/<name>/<file name>` on
    `centred_geometry`; returns the names (sorted). The folder appears
    complete or not at all; an existing non-empty `out_dir` raises DataError
    unless `overwrite` and it holds only `own_files`."""
    shape, spacing = voxel_grid(shape, spacing)
    if not 1 <= num_cases <= MAX_CASES:
        raise ValueError(f"num_cases={num_cases}: must be in [1, {MAX_CASES}]")
    geometry = centred_geometry(shape, spacing)
    names = []
    with atomic_output_dir(out_dir, overwrite, own_files=own_files) as tmp:
        for index in tqdm(range(num_cases), desc=desc, unit="case", disable=not progress):
            name, files = case(index, shape, spacing)
            os.makedirs(os.path.join(tmp, name))
            for file, array in files.items():
                write_volume(os.path.join(tmp, name, file), Volume(array, geometry))
            names.append(name)
    return sorted(names)
