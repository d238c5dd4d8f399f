"""A self-configuring 3-D U-Net (nnU-Net's recipe, our code): the patch,
batch, depth, pooling, kernels, width and deep supervision come from the
prepared folder's plans.json, the rest is nnU-Net's strong default.

  python -m data_prep.plan --data_dir=Task04_Hippocampus --out=plans/hippocampus.json
  python -m data_prep.volumes --data_dir=Task04_Hippocampus --out_dir=data/hippocampus \
      --plans=plans/hippocampus.json --cv_folds=5 --test_fraction=0
  python -m unet_jax.main --config=configs/auto_3d.py --config.data.data_dir=data/hippocampus \
      --workdir=runs/hippocampus_f0
  (folds 1-4: --config.data.fold=k; then python -m unet_jax.cv_summary --workdirs=runs/hippocampus_f0,...)

Fields left None here are filled from the plan (unet_jax/auto_config.py); any
of them given on the command line wins. The recipe, each piece switchable:
  - AdamW at 1e-3 with poly decay (1 - t/T)^0.9, weight decay 3e-5, gradient
    norm clipped at 12; nnU-Net's SGD with Nesterov momentum 0.99 at 0.01 is
    --config.optimizer=sgd --config.learning_rate=0.01. AdamW is the default
    because it learns from the first steps: on the hippocampus (16 features,
    batch 4, 83 steps) AdamW reached a training Dice of 0.34 by step 30 while
    SGD still predicted background everywhere at step 83 (Dice 0); nnU-Net's
    SGD recipe is tuned for its 250,000 steps;
  - label-wise Dice + cross-entropy, instance norm, deep supervision on all
    but the two coarsest decoder outputs (--config.model.deep_supervision=0
    turns it off);
  - a third of the patches centred on foreground; rotation and scaling in 3-D,
    flips on every axis, noise, brightness, contrast and gamma (nnU-Net's
    probabilities);
  - epochs of 250 steps (nnU-Net's), 1000 of them: hours on a GPU. On a CPU,
    shorten the run, e.g. --config.num_epochs=12 --config.data.patches_per_volume=4;
  - bf16 mixed precision on a GPU or TPU, float32 on a CPU.
"""

import ml_collections

from configs import default

placeholder = ml_collections.config_dict.placeholder


def get_config():
    config = default.get_config()
    config.plans = "plans.json"  # inside data_dir unless absolute
    config.data.data_dir = "data/auto"
    config.data.fold = 0
    config.data.normalization = "none"  # data_prep.volumes normalised as planned (z-score MR, window CT)
    config.data.foreground_prob = 1 / 3
    config.data.num_workers = 2
    config.data.augment = ml_collections.ConfigDict(dict(
        flip_prob=0.5, flip_axes=(0, 1, 2), rotate_prob=0.2, max_rotate_deg=30.0, rotate_3d=True,
        scale_prob=0.2, max_scale=0.3, noise_prob=0.1, noise_std=0.1, brightness_prob=0.15,
        brightness_range=(0.75, 1.25), contrast_prob=0.15, contrast_range=(0.75, 1.25), gamma_prob=0.3,
        gamma_range=(0.7, 1.5)))
    config.data.sliding_window.overlap = 0.5
    config.data.sliding_window.importance = "gaussian"

    # From the plan (auto_config.planned_values) unless given.
    config.data.patches_per_volume = placeholder(int)
    config.batch_size = placeholder(int)
    config.eval_batch_size = placeholder(int)
    config.mixed_precision = placeholder(bool)
    config.deep_supervision_weights = placeholder(tuple)
    config.model.out_channels = placeholder(int)
    config.model.features = placeholder(int)
    config.model.depth = placeholder(int)
    config.model.kernel_size = placeholder(tuple)
    config.model.pool_strides = placeholder(tuple)
    config.model.deep_supervision = placeholder(int)
    config.model.norm = "instance"

    config.loss = "dice_ce"
    config.optimizer = "adamw"
    config.momentum = 0.99  # for --config.optimizer=sgd
    config.learning_rate = 1e-3
    config.lr_schedule = "poly"
    config.weight_decay = 3e-5
    config.clip_norm = 12.0
    config.num_epochs = 1000
    config.best_metric = "val_dice_3d"
    config.log_every_steps = 50
    config.num_preview_images = 2
    return config
