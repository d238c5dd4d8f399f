"""TFRecord framing, CRC checks, the record index and the Example codec."""

import os
import pickle

import numpy as np
import pytest

from unet_jax.data import tfrecord
from unet_jax.data.tfrecord import TFRecordSource, TFRecordWriter
from unet_jax.errors import RecordError


def _write(path, records):
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)


RECORDS = [b"", b"a", os.urandom(1000), b"x" * 70000]


def test_masked_crc_known_value():
    # 0xE3069283 is the CRC-32C check value of "123456789" (RFC 3720); the
    # masking is TensorFlow's. The interop test below checks it against TF.
    crc = 0xE3069283
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tfrecord.masked_crc32c(b"123456789") == expected


def test_round_trip_and_index(tmp_path):
    path = tmp_path / "a.tfrecord"
    _write(path, RECORDS)
    assert list(tfrecord.iter_records(path)) == RECORDS
    index = tfrecord.load_index(path)
    np.testing.assert_array_equal(index, tfrecord.build_index(path))
    assert index[:, 1].tolist() == [len(r) for r in RECORDS]
    assert os.path.getsize(path) == sum(len(r) + 16 for r in RECORDS)
    assert sorted(os.listdir(tmp_path)) == ["a.tfrecord", "a.tfrecord.index"]


def test_source_random_access_across_shards_and_pickle(tmp_path):
    _write(tmp_path / "0.tfrecord", RECORDS[:2])
    _write(tmp_path / "1.tfrecord", RECORDS[2:])
    src = TFRecordSource([tmp_path / "0.tfrecord", tmp_path / "1.tfrecord"])
    assert len(src) == 4
    assert [src[i] for i in (3, 0, 2, 1)] == [RECORDS[i] for i in (3, 0, 2, 1)]
    clone = pickle.loads(pickle.dumps(src))
    assert clone[2] == RECORDS[2]


@pytest.mark.parametrize("where", ["data", "data_crc", "length"])
def test_corrupted_byte_names_file_and_record(tmp_path, where):
    path = tmp_path / "c.tfrecord"
    _write(path, RECORDS)
    index = tfrecord.load_index(path)
    offset, length = index[2]
    pos = {"data": offset + 12 + 5, "data_crc": offset + 12 + length + 1, "length": offset + 1}[where]
    raw = bytearray(path.read_bytes())
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    src = TFRecordSource([path])
    assert src[1] == RECORDS[1]
    with pytest.raises(RecordError, match=r"c\.tfrecord: .*CRC mismatch in record 2"):
        src[2]


def test_truncated_file_detected(tmp_path):
    path = tmp_path / "t.tfrecord"
    _write(path, RECORDS)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(RecordError, match="index ends at byte"):
        tfrecord.load_index(path)
    os.remove(tfrecord.index_path(path))
    with pytest.raises(RecordError, match="record 3 .* runs past the end"):
        tfrecord.build_index(path)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with TFRecordWriter(tmp_path / "f.tfrecord") as w:
            w.write(b"abc")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []


def test_example_codec_round_trip():
    feats = {"image": b"\x00\x01\xff", "name": "TCGA_CS_1", "shape": (3, 1, 1), "n": 7,
             "f": np.array([0.5, -2.0], np.float32)}
    out = tfrecord.decode_example(tfrecord.encode_example(feats))
    assert out["image"] == b"\x00\x01\xff"
    assert out["name"] == b"TCGA_CS_1"
    assert out["shape"].tolist() == [3, 1, 1] and out["shape"].dtype == np.int64
    assert out["n"].tolist() == [7]
    np.testing.assert_array_equal(out["f"], [0.5, -2.0])


def test_tensorflow_reads_our_files(tmp_path):
    tf = pytest.importorskip("tensorflow")
    path = str(tmp_path / "tf.tfrecord")
    images = [np.random.default_rng(i).integers(0, 255, (4, 5, 3), dtype=np.uint8) for i in range(5)]
    _write(path, [tfrecord.encode_example({"image": im.tobytes(), "shape": im.shape, "slice": i + 1})
                  for i, im in enumerate(images)])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "shape": tf.io.FixedLenFeature([3], tf.int64),
            "slice": tf.io.FixedLenFeature([], tf.int64)}
    parsed = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(path)]
    assert len(parsed) == 5
    for i, p in enumerate(parsed):
        assert p["slice"].numpy() == i + 1
        im = np.frombuffer(p["image"].numpy(), np.uint8).reshape(p["shape"].numpy())
        np.testing.assert_array_equal(im, images[i])
    # ... and we read what TensorFlow writes.
    tf_path = str(tmp_path / "by_tf.tfrecord")
    with tf.io.TFRecordWriter(tf_path) as w:
        for r in RECORDS:
            w.write(r)
    assert list(tfrecord.iter_records(tf_path)) == RECORDS
