"""Atomic writes: a failure leaves the old file whole and no temporary behind;
JSON is strict."""

import json
import math
import os
import stat

import numpy as np
import pytest

from unet_jax.files import atomic_write, temporary_file, temporary_folder, write_json


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "sub" / "metrics.csv"
    with atomic_write(path) as f:
        f.write("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.csv"]


def test_write_json_turns_non_finite_numbers_into_null(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"loss": float("nan"), "dice": np.float32(0.5), "inf": [math.inf], "n": np.int64(3)})
    assert json.loads(path.read_text()) == {"loss": None, "dice": 0.5, "inf": [None], "n": 3}
    assert "NaN" not in path.read_text()


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path):
    """The temporary file is made afresh (O_EXCL): a link planted where a
    predictable temporary name would be leaves its target untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "metrics.csv"
    for name in (f"metrics.tmp-{os.getpid()}.csv", "metrics.csv.tmp"):  # the old name and a likely one
        (tmp_path / name).symlink_to(victim)
    with atomic_write(path) as f:
        f.write("new\n")
    assert victim.read_text() == "precious\n"
    assert path.read_text() == "new\n" and not path.is_symlink()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_the_written_file_has_the_mode_open_gives(tmp_path, umask):
    """mkstemp makes 0600; the result honours the umask like a plain open(),
    so outputs stay readable by the group as before."""
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "a.json") as f:
            f.write("{}")
        with open(tmp_path / "b.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE((tmp_path / "b.json").stat().st_mode)


def test_a_secret_is_never_readable_by_others(tmp_path):
    """permissions=0o600 holds from the temporary file on, whatever the umask."""
    modes = []
    old = os.umask(0)
    try:
        with atomic_write(tmp_path / "key.json", permissions=0o600) as f:
            modes.append(stat.S_IMODE(os.fstat(f.fileno()).st_mode))
            f.write("{}")
        write_json(tmp_path / "map.json", {}, permissions=0o600)
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("key.json", "map.json")] == [0o600, 0o600]


def test_binary_and_text_modes_with_their_options(tmp_path):
    with atomic_write(tmp_path / "a.bin", "wb") as f:
        f.write(b"\x00\xff")
    with atomic_write(tmp_path / "a.txt", encoding="latin-1", newline="\r\n") as f:
        f.write("é\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "a.txt").read_bytes() == b"\xe9\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.txt"]


def test_the_file_and_its_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    """The data reaches the disk before the rename, and the rename itself is
    synced through the folder, so a power cut leaves the old or the new file."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", None)), real_replace(a, b)))
    with atomic_write(tmp_path / "m.json") as f:
        f.write("{}")
    assert calls == [("fsync", False), ("replace", None), ("fsync", True)]


def test_a_bad_encoding_leaves_nothing_behind(tmp_path):
    with pytest.raises(LookupError):
        with atomic_write(tmp_path / "a.txt", encoding="no-such-codec"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_temporary_names_are_fresh_end_in_the_name_and_have_the_usual_mode(tmp_path):
    """Writers that open by name (SimpleITK picks the format by the ending) get
    a file of their own; folders are new each time, with os.makedirs' mode."""
    files = [temporary_file(tmp_path / "scan.nii.gz") for _ in range(2)]
    folders = [temporary_folder(tmp_path / "case") for _ in range(2)]
    assert len(set(files)) == len(set(folders)) == 2
    assert all(f.endswith(".tmp-scan.nii.gz") and os.path.getsize(f) == 0 for f in files)
    os.makedirs(tmp_path / "plain")
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in folders} == {stat.S_IMODE((tmp_path / "plain").stat().st_mode)}
    with open(tmp_path / "plain.txt", "w"):
        pass
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in files} == {stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)}
