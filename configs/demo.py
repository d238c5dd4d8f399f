"""The built-in demo: phantoms generated into the workdir, a small U-Net trained
on them, and the best epoch tested, in a few minutes on a 2-core CPU.

  python -m unet_jax.main --config=configs/demo.py --workdir=runs/demo

Give `--config.data.data_dir=PATH` to train the same recipe on prepared data
of your own instead of the phantoms.
"""

import ml_collections

from configs import default


def get_config():
    config = default.get_config()
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the phantoms below
    config.data.synthetic = ml_collections.ConfigDict(dict(
        num_patients=14, num_slices=16, size=64, seed=0, val_fraction=0.15, test_fraction=0.15))
    config.data.num_workers = 0
    config.model.features = 16
    config.batch_size = 16
    config.loss = "dice_bce"
    config.learning_rate = 1e-3
    config.lr_schedule = "cosine"
    config.warmup_steps = 20
    config.num_epochs = 20
    config.log_every_steps = 20
    return config
