"""The built-in 3-D demo: head phantoms with white-matter-like lesions (NIfTI at
1x1x3 mm), prepared with data_prep.volumes into the workdir, a small 3-D U-Net
trained on random patches, and validated and tested on whole volumes by
sliding window with Dice, HD95, AVD and lesion F1 per case; a few minutes on
a 2-core CPU.

  python -m unet_jax.main --config=configs/demo_3d.py --workdir=runs/demo_3d
"""

import ml_collections

from configs import wmh_3d


def get_config():
    config = wmh_3d.get_config()
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the phantoms below
    config.data.synthetic = ml_collections.ConfigDict(dict(
        kind="lesions_3d", num_cases=10, shape=(64, 64, 24), spacing=(1.0, 1.0, 3.0), seed=0,
        val_fraction=0.2, test_fraction=0.2))
    config.data.num_workers = 0
    config.data.patch_size = (32, 32, 8)
    config.data.patches_per_volume = 8
    config.data.foreground_prob = 1 / 3
    # BatchNorm: with per-patch instance norm the cortex of a lesion-free patch
    # looks as bright as a lesion, and 15 epochs predicted 10x the lesion
    # volume (test Dice 0.14, against 0.77 with BatchNorm).
    config.model.features = 8
    config.model.norm = "batch"
    config.batch_size = 8
    config.eval_batch_size = 8
    config.loss = "dice_bce"
    config.learning_rate = 2e-3
    config.lr_schedule = "cosine"
    config.warmup_steps = 10
    config.num_epochs = 20
    config.log_every_steps = 6
    return config
