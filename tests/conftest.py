"""Shared fixtures: small phantom datasets and the real LGG subset when present."""

import os
from pathlib import Path

# Four simulated CPU devices for every test (set before JAX initialises), so
# data parallelism is exercised everywhere; tests pick 1-device meshes too.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

import pytest

from data_prep import lgg, synthetic

REAL_LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg_kaggle_3m_subset"


@pytest.fixture(scope="session")
def real_lgg_dir():
    if not REAL_LGG.is_dir():
        pytest.skip(f"real LGG subset not found at {REAL_LGG} (it lives beside the repository, "
                    "never inside it)")
    return str(REAL_LGG)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """Six 32x32 phantom patients with 12 slices each (so 10, 11, 12 test numeric order)."""
    out = tmp_path_factory.mktemp("phantoms") / "kaggle_3m"
    synthetic.write_phantoms(out, num_patients=6, num_slices=12, size=32, seed=0, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def prepared_dir(phantom_dir, tmp_path_factory):
    """The phantoms as TFRecords: 4 train, 1 val, 1 test patients, 20 records per shard."""
    out = str(tmp_path_factory.mktemp("prepared") / "lgg")
    lgg.prepare(phantom_dir, out, val_fraction=1 / 6, test_fraction=1 / 6, seed=0,
                records_per_shard=20, progress=False, command="test")
    assert os.path.exists(os.path.join(out, "manifest.json"))
    return out


@pytest.fixture(scope="session")
def volume_dir(phantom_dir, tmp_path_factory):
    """The phantoms as 32x32x8x3 volumes, split like `prepared_dir`; 12 slices per
    patient make a full block and a half-padded one."""
    out = str(tmp_path_factory.mktemp("volumes") / "lgg_3d")
    lgg.prepare(phantom_dir, out, val_fraction=1 / 6, test_fraction=1 / 6, seed=0, volume_depth=8,
                progress=False, command="test")
    return out
