"""Document 004's 3-D U-Net for white-matter hyperintensities, on real lesions:
the two MS patients of the Ljubljana dataset (`../shared/data/ms_lesions_ljubljana`,
FLAIR with consensus lesion masks), one to train on and one to validate.

Prepare the volumes first (FLAIR only, z-scored over the brain, cropped to it):

  python -m data_prep.volumes --data_dir=../shared/data/ms_lesions_ljubljana --out_dir=data/wmh \
      --channels='FLAIR*' --label='GOLD_STANDARD*' --val_cases=patient07 --test_fraction=0

As the document: FLAIR only, 128x128x16 patches, four resolution levels
(three poolings) without normalisation, Dice loss, affine augmentation, and
in-plane 3x3x1 kernels. With 2x2x1 pooling at every level, 3x3x1 kernels
everywhere would make it a 2-D U-Net applied slice by slice, so the two fine
levels are in-plane (3x3x1 kernels, 2x2x1 pooling) and the coarse levels mix
slices (3x3x3, 2x2x2). Validation runs on the whole volume by sliding window,
with Dice, HD95, AVD and lesion F1 per case.

Without normalisation the network can collapse to all-background on short
schedules (measured on LGG); the override that adds it:
  --config.model.norm=batch
(BatchNorm, not instance norm: normalising each patch on its own made the
cortex of lesion-free patches as bright as lesions on the 3-D phantoms.)
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.data_dir = "data/wmh"
    config.data.normalization = "none"  # data_prep.volumes z-scored FLAIR over the brain
    config.data.patch_size = (128, 128, 16)
    config.data.patches_per_volume = 16
    config.data.foreground_prob = 0.5  # lesions are small: half the patches centred on one
    config.data.num_workers = 2
    config.data.augment.flip_axes = (0, 1)
    config.data.augment.rotate_prob = 0.3
    config.data.augment.scale_prob = 0.3
    config.data.augment.max_scale = 0.1
    config.model.features = 16
    config.model.depth = 3
    config.model.norm = "none"
    config.model.kernel_size = ((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3))
    config.model.pool_strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2))
    config.batch_size = 2
    config.eval_batch_size = 4
    config.loss = "dice"
    config.learning_rate = 3e-4
    config.num_epochs = 30
    config.log_every_steps = 4
    config.num_preview_images = 2
    return config
