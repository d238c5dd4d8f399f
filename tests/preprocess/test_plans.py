"""unet_jax.preprocess.plans: a plans file that is absent, not JSON or incomplete is one line naming the fix."""

import json

import pytest

from unet_jax.errors import DataError
from unet_jax.preprocess import plans


def test_read_plans_refuses_absent_or_invalid_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json: no such plans file; make it with python -m data_prep\.plan"):
        plans.read_plans(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not a readable plans file"):
        plans.read_plans(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"version": 1, "fingerprint": {}, "plan": {"patch_size": [8] * 3}}))
    with pytest.raises(DataError, match=r"old\.json: the plan lacks target_spacing"):
        plans.read_plans(tmp_path / "old.json")
