"""Atomic file writes: every output of a run or of data_prep appears whole or not at all.

Imports neither JAX nor TensorFlow, so `data_prep` uses it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path` and renames it onto `path` when the
    block ends without an error; on an error the temporary file is removed and
    `path` is left as it was. The folder is created if needed.

    The temporary file is created afresh under an unpredictable name (a link
    planted beside `path` is never followed), and the data and the rename are
    synced to the disk, so a power cut leaves the old file or the new one.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(os.path.basename(path))
    # Keeps the extension: matplotlib picks the format by it.
    fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{ext}", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        # The mkstemp descriptor under its path's name: writers that ask for f.name (tifffile) get a path.
        with open(tmp, mode, opener=lambda *_: fd, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    """Syncs a rename inside `folder`; skipped where the platform cannot open or sync a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (a NaN or infinity becomes null, which every JSON reader
    accepts), written atomically."""
    with atomic_write(path) as f:
        json.dump(_finite(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def _finite(obj: Any) -> Any:
    """`obj` with non-finite floats replaced by None, NumPy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # NumPy and JAX scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
