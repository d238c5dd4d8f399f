"""Atomic file writes: every output of a run or of data_prep appears whole or not at all.

Imports neither JAX nor TensorFlow, so `data_prep` uses it too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Opens a temporary file beside `path` and renames it onto `path` when the
    block ends without an error; on an error the temporary file is removed and
    `path` is left as it was. The folder is created if needed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"  # keeps the extension: matplotlib picks the format by it
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
