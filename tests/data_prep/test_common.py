"""data_prep.common: the output folder checks that keep --overwrite from deleting a user's data."""

import os

import pytest

from data_prep import common
from unet_jax.errors import DataError


def _folder(path, *files):
    os.makedirs(path, exist_ok=True)
    for name in files:
        with open(os.path.join(path, name), "w") as f:
            f.write("x")
    return str(path)


@pytest.mark.parametrize("out", ["data", "data/sub/..", "data/inner", ".", "link"])
def test_out_dir_containing_or_inside_data_dir_is_refused(tmp_path, out):
    data = _folder(tmp_path / "data", "scan.nii.gz")
    os.symlink(data, tmp_path / "link")
    with pytest.raises(DataError, match="one folder contains the other.*outside --data_dir") as e:
        with common.atomic_output_dir(str(tmp_path / out), overwrite=True, data_dir=data):
            pass
    assert "\n" not in str(e.value) and os.listdir(data) == ["scan.nii.gz"]


def test_overwrite_replaces_only_what_data_prep_wrote(tmp_path):
    theirs = _folder(tmp_path / "theirs", "notes.txt")
    with pytest.raises(DataError, match="theirs: holds files that data_prep did not write.*empty it yourself"):
        with common.atomic_output_dir(theirs, overwrite=True):
            pass
    assert os.listdir(theirs) == ["notes.txt"]
    with pytest.raises(DataError, match="a file, not a folder"):
        with common.atomic_output_dir(os.path.join(theirs, "notes.txt"), overwrite=True):
            pass
    ours = _folder(tmp_path / "ours", common.MANIFEST, "train-00000-of-00001.tfrecord")
    with pytest.raises(DataError, match="pass --overwrite"):
        with common.atomic_output_dir(ours, overwrite=False):
            pass
    with common.atomic_output_dir(ours, overwrite=True) as tmp:
        _folder(tmp, "new")
    assert os.listdir(ours) == ["new"] and sorted(os.listdir(tmp_path)) == ["ours", "theirs"]


def test_a_folder_at_an_old_temporary_name_is_left_alone(tmp_path):
    """The temporary and old folders get fresh, unpredictable names: a user's
    folder at the name this process once used (`<out>.tmp-<pid>`) is not removed."""
    mine = _folder(tmp_path / f"out.tmp-{os.getpid()}", "thesis.docx")
    old = _folder(tmp_path / f"out.old-{os.getpid()}", "data.csv")
    for _ in range(2):  # makes, then replaces
        with common.atomic_output_dir(str(tmp_path / "out"), overwrite=True) as tmp:
            _folder(tmp, common.MANIFEST)
    assert os.listdir(mine) == ["thesis.docx"] and os.listdir(old) == ["data.csv"]
    assert sorted(os.listdir(tmp_path)) == sorted(["out", os.path.basename(mine), os.path.basename(old)])
