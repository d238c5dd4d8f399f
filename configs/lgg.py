"""The classic LGG U-Net on the full Kaggle kaggle_3m data (prepare it first with
`python -m data_prep.lgg --data_dir=PATH/TO/kaggle_3m --out_dir=data/lgg`).

Reference hyperparameters (Buda et al. 2019; document 001): 256x256x3 slices,
batch 16, Adam-type optimiser at lr 1e-4, Dice loss, 100 epochs, flip,
rotation (±15°) and scaling (±5%) augmentation.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.data_dir = "data/lgg"
    config.batch_size = 16
    config.learning_rate = 1e-4
    config.loss = "dice"
    config.num_epochs = 100
    return config
