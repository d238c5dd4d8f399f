"""Keras LGG model 1 of document 002: a 5-floor U-Net (4 poolings) with two
3x3 convolutions per floor, widths 32 to 512, on the LGG data.

The document reports 7,774,049 parameters; this config has 7,763,041 (pinned in
tests/models/test_unet.py). Keras counts BatchNorm's moving mean and variance
(2 x 2,944 = 5,888, non-trainable) and gives every convolution a bias even
before a BatchNorm (2,944, with an exactly-zero true gradient, so we drop it):
8,832 of the 11,008. The remaining 2,176 depend on layer details the
document does not give.
"""

from configs import lgg


def get_config():
    config = lgg.get_config()
    config.model.features = 32
    config.model.depth = 4
    config.model.num_convs = 2
    return config
