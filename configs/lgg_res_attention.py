"""Residual U-Net with attention gates (document 000: residual blocks at every
encoder and decoder stage, additive attention gates on every skip), on the LGG
data with the classic U-Net's widths and training setup.

The ablation of document 000 is this config with the two switches flipped:
  --config.model.block=plain --config.model.attention=False   (plain U-Net)
  --config.model.block=residual --config.model.attention=False
  --config.model.block=plain --config.model.attention=True
"""

from configs import lgg


def get_config():
    config = lgg.get_config()
    config.model.block = "residual"
    config.model.attention = True
    return config
