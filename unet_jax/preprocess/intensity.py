"""Intensity statistics and normalisation, the same for training data and a new scan: per-patient channel
statistics of 8-bit slices, and the per-channel normalisation (z-score, CT window) of volumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Named Hounsfield windows (lower, upper): the usual width/level pairs of radiology.
CT_WINDOWS = {"lung": (-1350.0, 150.0), "mediastinum": (-160.0, 240.0), "soft_tissue": (-160.0, 240.0),
              "abdomen": (-150.0, 250.0), "brain": (0.0, 80.0), "bone": (-500.0, 1300.0),
              "lung_wide": (-1000.0, 400.0)}
INTENSITIES = ("zscore", "ct", "none")

# Regression targets: "input_percentile" divides the target by the TARGET_PERCENTILE
# of the input's first channel over the foreground (before its normalisation), so
# outputs go back to scanner units on a new scan, which has no target; "none" keeps them.
TARGET_INTENSITIES = ("input_percentile", "none")
TARGET_PERCENTILE = 99.5


def intensity_stats(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel of a patient's images [..., C]
    over the voxels where any channel is non-zero (the head, not the air around
    it); 0 and 1 for a patient without such voxels."""
    channels = images[0].shape[-1]
    voxels = np.concatenate([x.reshape(-1, channels) for x in images]).astype(np.float64)
    head = voxels[np.any(voxels != 0, axis=1)]
    if len(head) == 0:
        return np.zeros(channels), np.ones(channels)
    return head.mean(axis=0), head.std(axis=0)


def normalize_channel(x: np.ndarray, method: str, foreground: np.ndarray, window: tuple[float, float]
                      ) -> tuple[np.ndarray, dict]:
    """One channel normalised by `method`, and the statistics it used.

    'zscore': (x - mean) / std over the foreground voxels, background set to 0
    (nnU-Net's MRI convention); 'ct': clipped to the Hounsfield `window` and
    scaled to [0, 1]; 'none': unchanged.
    """
    x = x.astype(np.float32)
    if method == "zscore":
        values = x[foreground].astype(np.float64)
        mean, std = (values.mean(), values.std()) if values.size else (0.0, 1.0)
        out = np.where(foreground, (x - mean) / max(std, 1e-6), 0.0).astype(np.float32)
        return out, {"mean": round(float(mean), 6), "std": round(float(std), 6)}
    if method == "ct":
        lo, hi = window
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32), {}
    return x, {}


def target_scale(channel: np.ndarray, foreground: np.ndarray) -> float:
    """The divisor of 'input_percentile': the TARGET_PERCENTILE of the raw input
    channel over the foreground (1 when that is not positive)."""
    values = channel[foreground] if foreground.any() else channel.ravel()
    scale = float(np.percentile(values, TARGET_PERCENTILE)) if values.size else 0.0
    return scale if scale > 0 else 1.0
