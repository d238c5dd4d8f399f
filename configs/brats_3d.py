"""Multi-class 3-D U-Net on BRATS 2015 (`../shared/data/brats2015_deepmedic`):
FLAIR and T1c in, the four tumour labels out (1 necrosis, 2 oedema, 3
non-enhancing, 4 enhancing; 0 background), scored per class.

Prepare the volumes first (z-scored inside the brain mask, cropped to it);
4 patients: 2 train, 1 validation, 1 test:

  python -m data_prep.volumes --data_dir=../shared/data/brats2015_deepmedic --out_dir=data/brats \
      --channels='Flair*,T1c*' --label='OTMultiClass*' --mask='brainmask*' \
      --val_fraction=0.25 --test_fraction=0.25

For whole tumour only, merge the labels and predict one channel:
  data_prep ... --label_map='1,2,3,4->1', and --config.model.out_channels=1
"""

from configs import wmh_3d


def get_config():
    config = wmh_3d.get_config()
    config.data.data_dir = "data/brats"
    config.data.patch_size = (96, 96, 32)
    config.data.foreground_prob = 1 / 3
    config.data.augment.flip_axes = (0, 1, 2)
    config.data.augment.rotate_3d = True
    config.data.augment.brightness_prob = 0.15
    config.data.augment.gamma_prob = 0.15
    config.model.out_channels = 5
    config.model.norm = "instance"
    config.model.kernel_size = (3, 3, 3)
    config.model.pool_strides = (2, 2, 2)
    config.loss = "dice_ce"
    return config
