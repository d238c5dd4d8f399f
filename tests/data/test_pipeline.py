"""grain pipelines: shapes, determinism across workers, per-epoch shuffles,
evaluation coverage with padding, per-process slicing and iterator resume."""

import json
import os

import numpy as np
import pytest

from unet_jax.data import DataError, pipeline
from unet_jax.data.augment import AugmentOptions

NO_AUG = None


def _ids(batches):
    """(patient_index, slice) of every valid example, in order."""
    return [(int(p), int(s)) for b in batches for p, s, v in zip(b["patient_index"], b["slice"], b["valid"]) if v]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_dtypes(prepared_dir):
    ds = pipeline.train_dataset(prepared_dir, batch_size=5, seed=0)
    b = next(pipeline.make_iterator(ds))
    assert b["image"].shape == (5, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == (5, 32, 32, 1) and b["mask"].dtype == np.float32
    assert b["patient_index"].dtype == np.int32 and b["slice"].dtype == np.int32
    assert b["valid"].dtype == np.bool_ and b["valid"].all()
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert set(np.unique(b["mask"])) <= {0.0, 1.0}


def test_zscore_matches_numpy(prepared_dir):
    scaled = next(iter(pipeline.eval_dataset(prepared_dir, "val", batch_size=4, normalization="scale")))
    z = next(iter(pipeline.eval_dataset(prepared_dir, "val", batch_size=4, normalization="zscore")))
    raw = scaled["image"].astype(np.float64) * 255.0
    ref = (raw - raw.mean(axis=(1, 2), keepdims=True)) / np.maximum(raw.std(axis=(1, 2), keepdims=True), 1e-6)
    np.testing.assert_allclose(z["image"], ref, atol=1e-4)


def test_shuffle_covers_each_epoch_and_changes_between_epochs(prepared_dir):
    n = json.load(open(os.path.join(prepared_dir, "manifest.json")))["splits"]["train"]["num_slices"]
    ds = pipeline.train_dataset(prepared_dir, batch_size=1, seed=7, augment_options=NO_AUG, num_epochs=2)
    ids = _ids(ds)
    assert len(ids) == 2 * n
    first, second = ids[:n], ids[n:]
    assert len(set(first)) == n and set(first) == set(second)
    assert first != second
    assert first != sorted(first)
    other_seed = _ids(pipeline.train_dataset(prepared_dir, batch_size=1, seed=8, augment_options=NO_AUG,
                                             num_epochs=1))
    assert other_seed != first


def test_same_seed_same_batches_with_zero_and_two_workers(prepared_dir):
    ds = pipeline.train_dataset(prepared_dir, batch_size=4, seed=3)
    a = _take(pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=0)), 6)
    b = _take(pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=2)), 6)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # Augmentation is random per example and epoch, yet reproducible.
    plain = _take(pipeline.make_iterator(pipeline.train_dataset(prepared_dir, batch_size=4, seed=3,
                                                                 augment_options=NO_AUG)), 6)
    assert _ids(plain) == _ids(a)
    assert any(not np.array_equal(p["image"], q["image"]) for p, q in zip(plain, a))


def test_iterator_resume_gives_the_same_batches(prepared_dir):
    ds = pipeline.train_dataset(prepared_dir, batch_size=4, seed=1,
                                augment_options=AugmentOptions(rotate_prob=1.0))
    it = pipeline.make_iterator(ds)
    _take(it, 13)  # past the first epoch boundary (48 train slices = 12 batches)
    state = it.get_state()
    expected = _take(it, 4)
    resumed = pipeline.make_iterator(ds)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 4)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_eval_covers_every_example_once_with_padding(prepared_dir):
    manifest = json.load(open(os.path.join(prepared_dir, "manifest.json")))
    n = manifest["splits"]["train"]["num_slices"]  # 48
    batches = list(pipeline.eval_dataset(prepared_dir, "train", batch_size=5))
    assert len(batches) == 10 and all(b["image"].shape[0] == 5 for b in batches)
    ids = _ids(batches)
    assert len(ids) == len(set(ids)) == n
    assert ids == sorted(ids)  # stored order: patient, then slice
    last = batches[-1]
    assert last["valid"].tolist() == [True, True, True, False, False]
    assert (last["slice"][3:] == -1).all() and (last["patient_index"][3:] == -1).all()
    assert (last["image"][3:] == 0).all() and (last["mask"][3:] == 0).all()


def test_eval_per_process_slices_partition_the_split(prepared_dir):
    n = 48
    shards = [list(pipeline.eval_dataset(prepared_dir, "train", batch_size=5, shard_index=i, shard_count=3))
              for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(48 / 15) batches each
    ids = [i for s in shards for i in _ids(s)]
    assert len(ids) == len(set(ids)) == n


def test_train_per_process_slices_are_disjoint(prepared_dir):
    parts = [set(_ids(pipeline.train_dataset(prepared_dir, batch_size=1, seed=0, augment_options=NO_AUG,
                                             num_epochs=1, shard_index=i, shard_count=2))) for i in range(2)]
    assert len(parts[0]) == len(parts[1]) == 24 and not parts[0] & parts[1]


def test_missing_or_bad_inputs_are_one_line_errors(prepared_dir, tmp_path):
    with pytest.raises(DataError, match=r"no prepared data here; make it with python -m data_prep.lgg"):
        pipeline.train_dataset(str(tmp_path), batch_size=2, seed=0)
    with pytest.raises(DataError, match="no split 'holdout'"):
        pipeline.eval_dataset(prepared_dir, "holdout", batch_size=2)
    with pytest.raises(DataError, match="fewer than one batch"):
        pipeline.train_dataset(prepared_dir, batch_size=100, seed=0)
    with pytest.raises(ValueError, match="normalization='minmax'"):
        pipeline.train_dataset(prepared_dir, batch_size=2, seed=0, normalization="minmax")
    old = json.load(open(os.path.join(prepared_dir, "manifest.json")))
    del old["splits"]["train"]["num_examples"]
    json.dump(old, open(tmp_path / "manifest.json", "w"))
    with pytest.raises(DataError, match="older data_prep .* rerun data_prep with --overwrite"):
        pipeline.read_manifest(str(tmp_path))


def test_volume_records_decode_to_volumes_and_pad_ids(volume_dir):
    out = volume_dir
    batch = next(iter(pipeline.train_dataset(out, batch_size=2, seed=0, normalization="zscore")))
    assert batch["image"].shape == (2, 32, 32, 8, 3) and batch["mask"].shape == (2, 32, 32, 8, 1)
    assert batch["slices"].shape == (2, 8) and batch["slices"].dtype == np.int32
    # z-score over the whole volume per channel
    np.testing.assert_allclose(batch["image"][0].mean(axis=(0, 1, 2)), 0, atol=1e-4)
    batches = list(pipeline.eval_dataset(out, "test", batch_size=3))
    assert [b["valid"].tolist() for b in batches] == [[True, True, False]]
    np.testing.assert_array_equal(batches[0]["slices"][2], -1)
