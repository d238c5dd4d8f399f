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
def atomic_write(path: str | os.PathLike, mode: str = "w", *, permissions: int | None = None,
                 **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path` and renames it onto `path` when the
    block ends without an error; on an error the temporary file is removed and
    `path` is left as it was. The folder is created if needed. `permissions`
    (0o600 for a secret) replaces the mode a plain open() would give.

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
        # mkstemp makes 0600; give the mode a plain open() would, so a secret is never readable by others.
        os.fchmod(fd, 0o666 & ~_umask() if permissions is None else permissions)
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


def temporary_file(path: str | os.PathLike) -> str:
    """A new, empty file beside `path` under an unpredictable name that ends in
    `path`'s own name (writers such as SimpleITK pick the format by it), for a
    writer that opens by name; rename it onto `path` when it is complete."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=f".tmp-{name}", dir=folder)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    return tmp


def temporary_folder(path: str | os.PathLike) -> str:
    """A new, empty folder beside `path` under an unpredictable name, with the
    mode os.makedirs would give: where a folder of outputs is built before it
    is renamed onto `path`, or where an old one is moved before it is removed."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = tempfile.mkdtemp(prefix=f"{name}.", suffix=".tmp", dir=folder)
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


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


def write_json(path: str | os.PathLike, obj: Any, *, permissions: int | None = None) -> None:
    """Strict JSON (a NaN or infinity becomes null, which every JSON reader
    accepts), written atomically (with `permissions`, as atomic_write)."""
    with atomic_write(path, permissions=permissions) as f:
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
