"""What data_prep.pictures stores and prediction undoes: grey pictures kept as one channel, regression
targets divided by their picture's full scale."""

from __future__ import annotations

import numpy as np

# Regression targets: divisor by the picture's dtype.
TARGET_DIVISORS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def is_grey(image: np.ndarray) -> bool:
    """One channel, or several identical ones."""
    return all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, image.shape[-1]))
