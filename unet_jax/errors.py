"""The exceptions of unet_jax and data_prep, all under `UnetJaxError`.

Each message is one line naming the file, key or value and the fix, so
`main.py` prints any of them as `error: ...` and exits with status 2.
"""

from __future__ import annotations


class UnetJaxError(Exception):
    """A failure the user can fix; the message says how, in one line."""


class ConfigError(UnetJaxError, ValueError):
    """A config value that cannot work; the message names the key and the fix."""


class DataError(UnetJaxError):
    """Bad or missing input data; the message names the file and the fix."""


class RecordError(DataError):
    """A TFRecord file is truncated or corrupt, or its index does not match it."""


class SaveError(UnetJaxError, OSError):
    """A checkpoint could not be written (a full disk, a folder made read-only)."""


class Diverged(UnetJaxError, RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient."""


class Damaged(UnetJaxError):
    """A checkpoint whose files cannot be decoded: cut short by a kill during
    its write, truncated or edited. Its message is the first line of the reason."""
