"""grain pipelines: shapes, determinism across workers, per-epoch shuffles,
evaluation coverage with padding, per-process slicing and iterator resume."""

import json
import os

import numpy as np
import pytest

from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.errors import DataError

NO_AUG = None


def _ids(batches):
    """(patient_index, slice) of every valid example, in order."""
    return [(int(p), int(s)) for b in batches for p, s, v in zip(b["patient_index"], b["slice"], b["valid"]) if v]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batches_shapes_and_dtypes(prepared_dir):
    ds = pipeline.train_dataset(prepared_dir, batch_size=5, seed=0, normalization="scale")
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


def test_eval_per_process_batches_concatenate_to_the_global_batch(prepared_dir):
    n = 48
    shards = [list(pipeline.eval_dataset(prepared_dir, "train", batch_size=5, shard_index=i, shard_count=3))
              for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # ceil(48 / 15) batches each
    ids = [i for s in shards for i in _ids(s)]
    assert len(ids) == len(set(ids)) == n
    whole = list(pipeline.eval_dataset(prepared_dir, "train", batch_size=15))
    for t, batch in enumerate(whole):  # process order within each global batch, as the mesh lays them out
        assert _ids([batch]) == [i for s in shards for i in _ids([s[t]])]


def test_train_per_process_batches_concatenate_to_the_global_batch(prepared_dir):
    aug = AugmentOptions(rotate_prob=1.0)
    parts = [_take(pipeline.make_iterator(pipeline.train_dataset(prepared_dir, batch_size=2, seed=0,
                                                                 augment_options=aug, shard_index=i,
                                                                 shard_count=2)), 14) for i in range(2)]
    whole = _take(pipeline.make_iterator(pipeline.train_dataset(prepared_dir, batch_size=4, seed=0,
                                                                augment_options=aug)), 14)
    assert not set(_ids(parts[0])) & set(_ids(parts[1][:12]))  # disjoint within the first epoch
    for t, batch in enumerate(whole):  # the same examples, augmented the same way
        for k in batch:
            np.testing.assert_array_equal(batch[k], np.concatenate([parts[0][t][k], parts[1][t][k]]))


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


def _element(image, mean, std):
    return {"image": image, "mask": np.zeros(image.shape[:-1] + (1,), np.float32),
            "channel_mean": mean, "channel_std": std}


def test_patient_zscore_makes_a_darker_channel_the_same_input():
    """A patient whose FLAIR is three times darker (as TCGA_HT_A5RC's is) gets the
    same normalised input: statistics over the head, per patient and channel."""
    from unet_jax.preprocess.intensity import intensity_stats

    rng = np.random.default_rng(0)
    slices = [rng.uniform(20, 200, (16, 16, 3)) for _ in range(3)]
    for s in slices:
        s[:4] = 0.0  # air around the head in every channel
    dark = [s * np.array([1.0, 1 / 3, 1.0]) for s in slices]
    out = [pipeline.normalize(_element(s, *intensity_stats(group)), "patient_zscore")["image"]
           for group in (slices, dark) for s in group[:1]]
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    head = out[0][4:]
    np.testing.assert_array_equal(out[0][:4], 0.0)  # the air stays 0, the background of warps too
    # Over the patient's head voxels each channel has mean 0 and unit variance.
    all_head = np.concatenate([pipeline.normalize(_element(s, *intensity_stats(slices)), "patient_zscore")
                               ["image"][4:].reshape(-1, 3) for s in slices])
    np.testing.assert_allclose(all_head.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(all_head.std(0), 1, atol=1e-5)
    assert head.dtype == np.float32 and "channel_mean" not in pipeline.normalize(
        _element(slices[0], *intensity_stats(slices)), "patient_zscore")


def test_patient_zscore_through_data_prep_ignores_the_brightness_of_a_channel(phantom_dir, tmp_path):
    """The phantoms with their FLAIR divided by 3 (rounded to uint8 as real files
    are) prepare to nearly the same normalised batches."""
    import shutil

    import tifffile

    from data_prep import lgg

    dark_dir = tmp_path / "dark"
    shutil.copytree(phantom_dir, dark_dir)
    for path in dark_dir.glob("*/*[0-9].tif"):
        image = tifffile.imread(path)
        image[..., 1] = np.round(image[..., 1] / 3).astype(np.uint8)
        tifffile.imwrite(path, image, photometric="rgb", metadata=None)
    batches = []
    for source in (phantom_dir, str(dark_dir)):
        out = str(tmp_path / f"prepared_{os.path.basename(source)}")
        lgg.prepare(source, out, val_fraction=1 / 6, test_fraction=1 / 6, seed=0, progress=False, command="t")
        batches.append(next(iter(pipeline.eval_dataset(out, "val", batch_size=12)))["image"])
        scaled = next(iter(pipeline.eval_dataset(out, "val", batch_size=12, normalization="scale")))["image"]
        batches.append(scaled)
    normal, normal_scaled, dark, dark_scaled = batches
    flair = (slice(None), slice(None), slice(None), 1)
    # uint8 rounding of the darker channel moves values by a few hundredths of a
    # standard deviation, and drops from the head the rare edge voxels whose only
    # non-zero value was a FLAIR of 1.
    difference = np.abs(normal[flair] - dark[flair])
    assert np.quantile(difference, 0.99) < 0.05 and difference.mean() < 0.02
    assert dark_scaled[flair].mean() < 0.4 * normal_scaled[flair].mean()  # fixed scaling keeps it 3x darker
    others = np.abs(normal[..., [0, 2]] - dark[..., [0, 2]])  # same edge voxels; the rest barely move
    assert np.quantile(others, 0.99) < 0.02 and (others > 0.05).mean() < 0.002


PATCH = pipeline.PatchOptions((16, 16, 4), foreground_prob=1.0, per_volume=3)


def test_patch_batches_have_the_patch_shape_and_forced_foreground(lesion_volume_dir):
    ds = pipeline.train_dataset(lesion_volume_dir, batch_size=4, seed=0, normalization="none",
                                augment_options=AugmentOptions(flip_axes=(0, 1, 2), rotate_3d=True), patches=PATCH)
    batches = _take(pipeline.make_iterator(ds), 3)
    for b in batches:
        assert b["image"].shape == (4, 16, 16, 4, 2) and b["image"].dtype == np.float32
        assert b["mask"].shape == (4, 16, 16, 4, 1)
        assert all(m.any() for m in b["mask"])  # foreground_prob=1: every patch holds lesion
        assert set(b.keys()) == {"image", "mask", "patient_index", "slice", "valid"}
    # An epoch draws per_volume patches from every training volume.
    assert sorted(int(p) for b in batches for p in b["patient_index"]) == sorted(list(range(4)) * 3)


def test_patches_are_the_same_with_zero_and_two_workers_and_resume_exactly(lesion_volume_dir):
    ds = pipeline.train_dataset(lesion_volume_dir, batch_size=2, seed=3, normalization="none",
                                augment_options=AugmentOptions(flip_axes=(0, 1, 2), noise_prob=0.5),
                                patches=pipeline.PatchOptions((16, 16, 4)))
    a = _take(pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=0)), 5)
    b = _take(pipeline.make_iterator(ds, pipeline.LoaderOptions(num_workers=2)), 5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    it = pipeline.make_iterator(ds)
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = pipeline.make_iterator(ds)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 2)):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_volume_records_need_the_normalization_they_were_prepared_with(lesion_volume_dir):
    with pytest.raises(DataError, match="normalization=none"):
        pipeline.train_dataset(lesion_volume_dir, batch_size=2, seed=0, normalization="scale",
                               patches=pipeline.PatchOptions((16, 16, 4)))
