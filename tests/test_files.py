"""Atomic writes: a failure leaves the old file whole and no temporary behind;
JSON is strict."""

import json
import math

import numpy as np
import pytest

from unet_jax.files import atomic_write, write_json


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
