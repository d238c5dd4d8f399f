"""Base configuration; every experiment config imports it and overrides fields.

The data section is what the input pipeline reads: where the prepared
TFRecords are (written by `python -m data_prep.lgg`), how images are
normalised and augmented, and how batches are loaded.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 16  # global, over all devices and hosts

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = "data/lgg"  # a folder written by data_prep
    config.data.normalization = "scale"  # "scale" to [0, 1] or per-channel "zscore"
    config.data.num_workers = 2  # grain worker processes; 0 loads in the main process
    config.data.prefetch_buffer_size = 2
    config.data.augment = ml_collections.ConfigDict(dict(
        flip_prob=0.5, rotate_prob=0.5, max_rotate_deg=15.0, scale_prob=0.5, max_scale=0.05))
    return config
