"""3-D U-Net (document 004's design) trained on LGG patients as volumes, so the
3-D path runs on real data before the WMH data path exists.

Prepare the volumes first: each patient's slices stacked in order into blocks
of 16, shrunk in-plane to 128x128 (document 004's 128x128x16 inputs; the last
block of a patient is padded with empty slices, which evaluation drops):

  python -m data_prep.lgg --data_dir=PATH/TO/kaggle_3m --out_dir=data/lgg_3d \
      --volume_depth=16 --size=128

Model: four levels (three poolings) as in the 3-D U-Net of Cicek et al., no
normalisation (document 004 used none). Document 004 used in-plane 3x3x1
kernels; with 2x2x1 pooling at every level that would make the network a 2-D
U-Net applied slice by slice, so here the two fine levels are in-plane
(3x3x1 kernels, 2x2x1 pooling) and the coarse levels mix slices (3x3x3
kernels, 2x2x2 pooling). Document 004's literal variant:
  --config.model.kernel_size="(3, 3, 1)" --config.model.pool_strides="(2, 2, 1)"
Per-patient 3-D Dice is computed on the reassembled volumes at 128x128.
"""

from configs import lgg


def get_config():
    config = lgg.get_config()
    config.data.data_dir = "data/lgg_3d"
    config.model.features = 16
    config.model.depth = 3
    config.model.norm = "none"
    config.model.kernel_size = ((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3))
    config.model.pool_strides = ((2, 2, 1), (2, 2, 1), (2, 2, 2))
    config.batch_size = 4
    config.eval_batch_size = 4
    config.learning_rate = 1e-4
    config.loss = "dice"
    config.num_epochs = 100
    return config
