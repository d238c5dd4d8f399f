"""The lung CT demo: chest phantoms in Hounsfield units (NIfTI), prepared as
axial 128x128 slices in the wide lung window, and configs/lung_ct.py's recipe
(Dice + cross-entropy, AdamW, gradient accumulation, simulated pathology in
80% of the training slices) at a size a 2-core CPU trains in a few minutes.

  python -m unet_jax.main --config=configs/lung_ct_demo.py --workdir=runs/lung_ct_demo
  python -m unet_jax.main --config=configs/lung_ct_demo.py --workdir=runs/lung_ct_demo --mode=evaluate \
      --split=test --config.data.eval_pathology=True
"""

import ml_collections

from configs import lung_ct


def get_config():
    config = lung_ct.get_config()
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: the phantoms below
    config.data.synthetic = ml_collections.ConfigDict(dict(
        kind="chest_ct", num_cases=6, shape=(128, 128, 24), spacing=(2.0, 2.0, 5.0), seed=0,
        val_fraction=0.2, test_fraction=0.2))
    config.data.normalization = "none"  # data_prep.volumes scaled the lung window to [0, 1]
    config.data.num_workers = 0
    config.model.features = 8
    config.batch_size = 8  # 2 accumulated micro-batches of 4
    config.grad_accum_steps = 2
    config.eval_batch_size = 8
    config.num_epochs = 6
    config.log_every_steps = 5
    return config
