"""Cross-validation folds: data_prep.volumes --cv_folds writes splits.json,
config.data.fold reads one fold's cases, and the pipeline and evaluators see
exactly those cases."""

import json
import os

import numpy as np
import pytest

from data_prep import common, volumes
from data_prep.phantoms import lesions
from unet_jax.data import SPLITS_FILE, pipeline
from unet_jax.data.tfrecord import decode_example
from unet_jax.errors import DataError


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory):
    """Seven 3-D lesion phantoms (24x24x8 at 1x1x3 mm) in 3 folds, one test case."""
    phantoms = tmp_path_factory.mktemp("cv_phantoms") / "cases"
    lesions.write_lesion_phantoms(phantoms, num_cases=7, shape=(24, 24, 8), spacing=(1.0, 1.0, 3.0), seed=1,
                                  progress=False)
    out = str(tmp_path_factory.mktemp("cv") / "prepared")
    volumes.prepare(str(phantoms), out, channels="FLAIR*", label="lesions*", cv_folds=3, test_fraction=1 / 7,
                    seed=0, records_per_shard=2, progress=False, command="test")
    return out


def _ids(source):
    return [decode_example(source[i])["patient_id"].decode() for i in range(len(source))]


def test_folds_are_disjoint_and_validate_every_case_once(cv_dir):
    manifest = pipeline.read_manifest(cv_dir)
    stored = [p["patient"] for p in manifest["splits"]["train"]["patients"]]
    assert len(stored) == 6 and manifest["splits"]["val"]["num_patients"] == 0
    assert manifest["split"]["cv_folds"] == 3 and all(p["records"] == 1 for p in
                                                      manifest["splits"]["train"]["patients"])
    with open(os.path.join(cv_dir, SPLITS_FILE)) as f:
        folds = json.load(f)["folds"]
    assert len(folds) == 3
    held = [c for fold in folds for c in fold["val"]]
    assert sorted(held) == sorted(stored)  # every training case validated exactly once
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert sorted(fold["train"] + fold["val"]) == sorted(stored)
    test = [p["patient"] for p in manifest["splits"]["test"]["patients"]]
    assert len(test) == 1 and test[0] not in held
    assert common.cv_folds(stored, 3, seed=0) == folds  # the same seed, the same folds


def test_a_fold_reads_exactly_its_cases_renumbered_in_stored_order(cv_dir):
    with open(os.path.join(cv_dir, SPLITS_FILE)) as f:
        folds = json.load(f)["folds"]
    for k, fold in enumerate(folds):
        view = pipeline.read_manifest(cv_dir, fold=k)
        assert view["fold"] == k and view["splits"]["test"] == pipeline.read_manifest(cv_dir)["splits"]["test"]
        for split in ("train", "val"):
            names = [p["patient"] for p in view["splits"][split]["patients"]]
            assert sorted(names) == sorted(fold[split]) and view["splits"][split]["num_examples"] == len(names)
            source = pipeline.split_source(cv_dir, split, fold=k)
            assert _ids(source) == names  # the records are the fold's cases, in the listed order
            decode = pipeline.split_decoder(cv_dir, split, fold=k)
            assert [int(decode(source[i])["patient_index"]) for i in range(len(source))] == list(range(len(names)))
        batches = list(pipeline.eval_dataset(cv_dir, "val", batch_size=1, normalization="none", fold=k))
        seen = np.concatenate([b["patient_index"][b["valid"]] for b in batches])
        assert sorted(seen.tolist()) == list(range(len(fold["val"])))


def test_fold_errors_are_one_line(cv_dir, lesion_volume_dir):
    with pytest.raises(DataError, match=r"config.data.fold=3: .*splits.json has 3 folds; choose 0..2"):
        pipeline.read_manifest(cv_dir, fold=3)
    with pytest.raises(DataError, match=r"splits.json: no cross-validation folds here; prepare the data with "
                                        r"python -m data_prep.volumes --cv_folds=5"):
        pipeline.read_manifest(lesion_volume_dir, fold=0)
    with pytest.raises(DataError, match="--cv_folds=9: need 2 <= folds <= the 6 training cases"):
        common.cv_folds([f"c{i}" for i in range(6)], 9, seed=0)


def test_cv_folds_refuse_named_validation_cases(tmp_path):
    phantoms = tmp_path / "cases"
    lesions.write_lesion_phantoms(phantoms, num_cases=3, shape=(16, 16, 4), spacing=(1.0, 1.0, 3.0), seed=0,
                                  progress=False)
    with pytest.raises(DataError, match="--cv_folds=2 makes the validation folds itself; drop"):
        volumes.prepare(str(phantoms), str(tmp_path / "out"), channels="FLAIR*", label="lesions*", cv_folds=2,
                        val_cases="case_000", progress=False, command="test")
