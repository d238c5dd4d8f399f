"""Reading a plans.json of data_prep.plan: data_prep.volumes --plans prepares a folder by it and
unet_jax.auto_config fills a config from it."""

from __future__ import annotations

import json
import os

from unet_jax.errors import DataError

VERSION = 1
PLAN_KEYS = ("target_spacing", "shape_at_target", "normalization", "ct_window", "patch_size", "depth",
             "pool_strides", "kernel_size", "features", "batch_size", "memory_gb", "estimated_memory_gb",
             "deep_supervision")


def read_plans(path) -> dict:
    """A plans.json of data_prep.plan; DataError in one line naming the file and
    the fix when it is absent, not JSON, or lacks a planned key."""
    path = os.fspath(path)
    fix = "make it with python -m data_prep.plan --data_dir=RAW --out=" + path
    try:
        with open(path) as f:
            plans = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no such plans file; {fix}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable plans file ({str(e).splitlines()[0]}); {fix}") from None
    if not isinstance(plans, dict) or not isinstance(plans.get("plan"), dict) or "fingerprint" not in plans:
        raise DataError(f"{path}: not a plans file of data_prep.plan (no plan/fingerprint); {fix}")
    if plans.get("version") != VERSION:
        raise DataError(f"{path}: plans version {plans.get('version')!r}, this code reads {VERSION}; {fix}")
    missing = [k for k in PLAN_KEYS if k not in plans["plan"]]
    if missing:
        raise DataError(f"{path}: the plan lacks {', '.join(missing)}; {fix}")
    return plans
