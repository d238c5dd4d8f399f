"""Post-processing chosen on validation, nnU-Net's way: keep only the largest
connected component of a foreground class when that raises the class's mean
validation Dice, and apply the choice to new predictions.

A run's choice lives in its workdir as postprocessing.json, written by
train.py on the run's validation cases or by unet_jax.cv_summary on the pooled
cases of all cross-validation folds:

  {"keep_largest_component": [1], "chosen_on": "cross-validation: 40 cases of 5 folds",
   "classes": {"1": {"dice": 0.81, "dice_lcc": 0.83, "cases": 40}, "2": {...}}}

Light on purpose: choosing, reading and writing need NumPy only, so
cv_summary runs without JAX; only `apply` loads `metrics`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from unet_jax.errors import ConfigError
from unet_jax.files import write_json

FILE = "postprocessing.json"


def dice_columns(k: int, num_classes: int) -> tuple[str, str]:
    """The columns of `metrics.segmentation_table` with class k's Dice without
    and with the largest component (num_classes counts the background)."""
    return ("dice_3d", "dice_3d_lcc") if num_classes <= 2 else (f"dice_3d_class{k}", f"dice_3d_lcc_class{k}")


def choose(table: Sequence[Mapping], num_classes: int, chosen_on: str) -> dict:
    """The post-processing of a segmentation run from its per-case validation
    rows (`metrics.segmentation_table`): class k keeps only its largest
    connected component when that makes its mean Dice over the cases strictly
    greater (nnU-Net's rule, one decision per class).

    Reads `dice_3d_class<k>` and `dice_3d_lcc_class<k>` (several foreground
    classes) or `dice_3d` and `dice_3d_lcc` (one); a case whose pair of values
    is missing or NaN (null in JSON) is skipped for that class, so both means
    are over the same cases; a class without cases is never chosen.
    `chosen_on` says which cases, for the record.
    """
    classes, keep = {}, []
    for k in range(1, max(num_classes, 2)):
        raw_key, lcc_key = dice_columns(k, num_classes)
        pairs = np.array([(row.get(raw_key), row.get(lcc_key)) for row in table], np.float64).reshape(-1, 2)
        pairs = pairs[~np.isnan(pairs).any(axis=1)]
        raw, lcc = pairs.mean(axis=0) if len(pairs) else (float("nan"), float("nan"))
        classes[str(k)] = {"dice": float(raw), "dice_lcc": float(lcc), "cases": len(pairs)}
        if len(pairs) and lcc > raw:
            keep.append(k)
    return {"keep_largest_component": keep, "classes": classes, "chosen_on": chosen_on}


def classes_of(choice: Mapping | None) -> list[int]:
    """The classes a choice keeps the largest component of ([] for None)."""
    return list(choice["keep_largest_component"]) if choice else []


def apply(labels: np.ndarray, choice: Mapping | None) -> np.ndarray:
    """`labels` with every chosen class cut to its largest connected component
    (`metrics.largest_connected_component`: full connectivity); the voxels cut
    become background (0), other classes are left alone. A new array; for
    None or a choice of no class, `labels` itself."""
    chosen = classes_of(choice)
    if not chosen:
        return labels
    from unet_jax import metrics  # imports JAX: only applying a choice needs it

    out = np.array(labels, copy=True)
    for k in chosen:
        mask = labels == k
        out[mask & ~metrics.largest_connected_component(mask)] = 0
    return out


def vote(choices: Sequence[Mapping | None]) -> dict | None:
    """The choice of an ensemble: a class keeps its largest component when a
    majority (more than half) of the runs chose it; a run without a choice
    counts as choosing none. `votes` says how many runs chose each class.
    None when no run has a choice; one run's, as it is."""
    given = [c for c in choices if c is not None]
    if len(choices) == 1 or not given:
        return given[0] if given else None
    votes = {k: sum(k in classes_of(c) for c in choices) for c in given for k in classes_of(c)}
    return {"keep_largest_component": sorted(k for k, n in votes.items() if 2 * n > len(choices)),
            "votes": {str(k): n for k, n in sorted(votes.items())}, "runs": len(choices),
            "chosen_on": f"majority of {len(choices)} runs: " + "; ".join(c.get("chosen_on", "?") for c in given)}


def _malformed(path: str, why: str) -> Exception:
    return ConfigError(f"{path}: {why}; delete it to predict without post-processing, or write it again with "
                       "python -m unet_jax.cv_summary (or by training the run to the end)")


def read(workdir: str) -> dict | None:
    """The choice in `workdir`/postprocessing.json, None when there is none;
    ConfigError in one line when the file is not a choice."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            choice = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _malformed(path, f"unreadable ({e})") from None
    chosen = choice.get("keep_largest_component") if isinstance(choice, dict) else None
    if not isinstance(chosen, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                                               for k in chosen):
        raise _malformed(path, "no keep_largest_component list of foreground classes (1, 2, ...)")
    return choice


def write(workdir: str, choice: Mapping) -> None:
    """Writes `choice` (from `choose`) to `workdir`/postprocessing.json, atomically."""
    write_json(os.path.join(workdir, FILE), dict(choice))
