"""Shared fixtures: small phantom datasets and the real LGG subset when present.

Every test runs with four simulated CPU devices (data parallelism exercised
everywhere; tests pick 1-device meshes too). Tiny models spend far longer in
XLA's optimisation passes than in running, so tests compile at optimisation
level 0 (what they check does not depend on it; speed numbers belong in the
benchmarks) and
share compiled executables through a compilation cache for the session.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Set before JAX initialises.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

from data_prep import lgg  # noqa: E402
from data_prep.phantoms import lesions  # noqa: E402
from data_prep.phantoms import lgg as lgg_phantoms  # noqa: E402

_CACHE = tempfile.mkdtemp(prefix="unet_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REAL_LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg_kaggle_3m_subset"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains or compiles whole models; `pytest -m 'not slow'` skips them")


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
    lgg_phantoms.write_phantoms(out, num_patients=6, num_slices=12, size=32, seed=0, progress=False)
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


@pytest.fixture(scope="session")
def lesion_volume_dir(tmp_path_factory):
    """Six 3-D lesion phantoms (32x32x12 at 1x1x3 mm, FLAIR and T1) prepared by
    data_prep.volumes as whole volumes: 4 train, 1 val, 1 test cases."""
    from data_prep import volumes

    phantoms = tmp_path_factory.mktemp("lesion_phantoms") / "cases"
    lesions.write_lesion_phantoms(phantoms, num_cases=6, shape=(32, 32, 12), spacing=(1.0, 1.0, 3.0), seed=0,
                                  progress=False)
    out = str(tmp_path_factory.mktemp("lesion_volumes") / "prepared")
    volumes.prepare(str(phantoms), out, channels="FLAIR*,T1*", label="lesions*", val_fraction=1 / 6,
                    test_fraction=1 / 6, seed=0, progress=False, command="test")
    return out
