"""TFRecord framing with CRC checks, a per-shard record index, and the Example codec.

Files use TensorFlow's standard framing (uint64 length, masked CRC32C of the
length, data, masked CRC32C of the data), so TensorFlow reads them too; reading
here needs neither TensorFlow nor JAX, and every read verifies both CRCs.
A shard `x.tfrecord` has an index `x.tfrecord.index` (.npy of int64 [offset,
length] rows) so that any record is one `os.pread` away.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence

import google_crc32c
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from unet_jax.errors import RecordError
from unet_jax.files import atomic_write, temporary_file

INDEX_SUFFIX = ".index"
_HEADER = 12  # uint64 length + uint32 masked crc
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TensorFlow's masked CRC32C: rotate right by 15 bits and add a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return b"".join([
        length, struct.pack("<I", masked_crc32c(length)),
        data, struct.pack("<I", masked_crc32c(data))])


def index_path(path: str | os.PathLike) -> str:
    return os.fspath(path) + INDEX_SUFFIX


class TFRecordWriter:
    """Writes framed records to `path` and, on close, its offset index.

    Both files are written under temporary names and renamed on a clean close,
    so an interrupted write never leaves a shard that looks complete.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tmp = temporary_file(self.path)
        self._file = open(self._tmp, "wb")
        self._rows: list[tuple[int, int]] = []
        self._offset = 0

    def write(self, data: bytes) -> None:
        framed = _frame(data)
        self._file.write(framed)
        self._rows.append((self._offset, len(data)))
        self._offset += len(framed)

    def __len__(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        with atomic_write(index_path(self.path), "wb") as f:
            np.save(f, np.asarray(self._rows, np.int64).reshape(-1, 2))
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def build_index(path: str | os.PathLike) -> np.ndarray:
    """Scans the 12-byte headers of a TFRecord file: int64 [offset, length] rows.

    Verifies the length CRCs (not the data CRCs) so that a file written by
    another tool can be indexed quickly.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    rows = []
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                raise RecordError(f"{path}: truncated header of record {len(rows)} at byte {offset}")
            (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != crc:
                raise RecordError(f"{path}: length CRC mismatch in record {len(rows)} at byte {offset}")
            if offset + _HEADER + length + 4 > size:
                raise RecordError(f"{path}: record {len(rows)} at byte {offset} runs past the end of the file")
            rows.append((offset, length))
            offset += _HEADER + length + 4
            f.seek(offset)
    return np.asarray(rows, np.int64).reshape(-1, 2)


def load_index(path: str | os.PathLike) -> np.ndarray:
    """The record index of a shard, from its `.index` file or by scanning."""
    ipath = index_path(path)
    if not os.path.exists(ipath):
        return build_index(path)
    rows = np.load(ipath)
    if rows.ndim != 2 or rows.shape[1] != 2:
        raise RecordError(f"{ipath}: malformed record index of shape {rows.shape}; delete it to rebuild")
    if len(rows):
        end = int(rows[-1, 0] + _HEADER + rows[-1, 1] + 4)
        if end != os.path.getsize(path):
            raise RecordError(f"{ipath}: index ends at byte {end} but {path} has "
                              f"{os.path.getsize(path)} bytes; rerun data_prep")
    return rows


def read_record(fd: int, path: str, record: int, offset: int, length: int) -> bytes:
    """Reads one record with `os.pread` and verifies both of its CRCs."""
    raw = os.pread(fd, _HEADER + length + 4, offset)
    if len(raw) != _HEADER + length + 4:
        raise RecordError(f"{path}: record {record} truncated")
    header, data, (data_crc,) = raw[:_HEADER], raw[_HEADER:-4], struct.unpack("<I", raw[-4:])
    (stored_len,), (len_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
    if stored_len != length or masked_crc32c(header[:8]) != len_crc:
        raise RecordError(f"{path}: length CRC mismatch in record {record} at byte {offset}")
    if masked_crc32c(data) != data_crc:
        raise RecordError(f"{path}: data CRC mismatch in record {record} at byte {offset}")
    return data


def iter_records(path: str | os.PathLike) -> Iterable[bytes]:
    """Every record of one file in order, CRC-checked."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for i, (offset, length) in enumerate(load_index(path)):
            yield read_record(fd, path, i, int(offset), int(length))
    finally:
        os.close(fd)


class TFRecordSource:
    """Random access over the records of several shards, CRC-checked.

    Picklable: file descriptors are opened lazily in whichever process reads,
    so grain can hand the source to its worker processes.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self._paths = [os.fspath(p) for p in paths]
        rows = [load_index(p) for p in self._paths]
        self._file = np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(rows)] or [np.zeros(0, np.int32)])
        self._local = np.concatenate([np.arange(len(r)) for r in rows] or [np.zeros(0, np.int64)])
        self._rows = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> bytes:
        if os.getpid() != self._pid:  # forked: descriptors belong to the parent
            self._fds, self._pid = {}, os.getpid()
        f = int(self._file[index])
        if f not in self._fds:
            self._fds[f] = os.open(self._paths[f], os.O_RDONLY)
        offset, length = self._rows[index]
        return read_record(self._fds[f], self._paths[f], int(self._local[index]), int(offset), int(length))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __repr__(self) -> str:
        return f"TFRecordSource({len(self._paths)} files, {len(self)} records)"

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


# --- tf.train.Example codec -------------------------------------------------

Feature = bytes | str | int | float | np.ndarray | Sequence[int] | Sequence[float]


def encode_example(features: Mapping[str, Feature]) -> bytes:
    """Serialises a dict to a tf.train.Example: bytes/str -> bytes_list,
    integers -> int64_list, floats -> float_list."""
    ex = tf_example_pb2.Example()
    for key, value in features.items():
        feat = ex.features.feature[key]
        if isinstance(value, str):
            value = value.encode()
        if isinstance(value, bytes):
            feat.bytes_list.value.append(value)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            feat.int64_list.value.extend(arr.astype(np.int64).ravel().tolist())
        elif arr.dtype.kind == "f":
            feat.float_list.value.extend(arr.astype(np.float32).ravel().tolist())
        else:
            raise TypeError(f"feature {key!r}: cannot encode dtype {arr.dtype}")
    return ex.SerializeToString()


def decode_example(data: bytes) -> dict[str, bytes | np.ndarray]:
    """Parses a tf.train.Example: a single bytes value stays bytes, int64 and
    float lists become NumPy arrays."""
    ex = tf_example_pb2.Example.FromString(data)
    out: dict[str, bytes | np.ndarray] = {}
    for key, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind == "bytes_list":
            values = list(feat.bytes_list.value)
            out[key] = values[0] if len(values) == 1 else values
        elif kind == "int64_list":
            out[key] = np.asarray(feat.int64_list.value, np.int64)
        elif kind == "float_list":
            out[key] = np.asarray(feat.float_list.value, np.float32)
    return out
