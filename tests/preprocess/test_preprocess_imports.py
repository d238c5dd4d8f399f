"""unet_jax.preprocess: what data_prep and prediction share imports neither JAX nor TensorFlow, so data_prep runs
without them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_preprocess_imports_neither_jax_nor_tensorflow():
    code = ("import sys, pkgutil, importlib, unet_jax.preprocess as p; "
            "[importlib.import_module(f'{p.__name__}.{m.name}') for m in pkgutil.iter_modules(p.__path__)]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'tensorflow'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
