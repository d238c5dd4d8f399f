"""Lung segmentation on 512x512 CT slices robust to pathology (document 003):
Dice + cross-entropy, AdamW, batches of 4 with gradient accumulation over 8
(32 per update), 40 epochs, and lesions simulated on the fly in 80% of the
training slices (7-9 discs in the two lungs' bounding boxes, blended towards
soft tissue), the document's best frequency.

Data: PNG slice folders (images/<n>.png, masks/<n>.png), e.g. LungSegDB:
  python -m data_prep.pictures --data_dir=../shared/data/lung_ct_lungsegdb --out_dir=data/lung_ct \
      --task=segmentation --skip_bad
  python -m unet_jax.main --config=configs/lung_ct.py --workdir=runs/lung_ct
or CT volumes in Hounsfield units, as axial slices in the lung window:
  python -m data_prep.volumes --data_dir=CT --out_dir=data/lung_ct --channels='*ct*' --label='*lung*' \
      --intensity=ct --ct_window=lung_wide --slices=axial --slice_size=512,512
  ... --config.data.normalization=none
Left and right lungs as two classes: prepare with --lung_sides and set
--config.model.out_channels=3. Robustness, as the document asked: evaluate the
best epoch on the validation slices with lesions drawn into every one of them:
  python -m unet_jax.main --config=configs/lung_ct.py --workdir=runs/lung_ct --mode=evaluate \
      --split=val --config.data.eval_pathology=True
"""

from configs import default


def get_config():
    config = default.get_config()
    config.loss = "dice_ce"
    config.learning_rate = 1e-3  # the document used 1e-2: --config.learning_rate=1e-2
    config.batch_size = 32  # global, per update: 8 accumulated micro-batches of 4
    config.grad_accum_steps = 8
    config.eval_batch_size = 4
    config.num_epochs = 40
    config.model.out_channels = 1
    config.data.data_dir = "data/lung_ct"
    config.data.normalization = "scale"  # 8-bit windowed CT to [0, 1]
    # No flips: a left/right label (--lung_sides) would swap sides.
    config.data.augment.flip_prob = 0.0
    config.data.pathology.prob = 0.8
    config.best_metric = "val_dice"
    return config
