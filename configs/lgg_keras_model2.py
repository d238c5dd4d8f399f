"""Keras LGG model 2 of document 002: a 4-floor U-Net (3 poolings), widths 64 to
512, whose deeper floors (the third encoder floor and the bottleneck) stack
three 3x3 convolutions instead of two, on the LGG data.

The document reports 10,655,809 trainable parameters; this config has
10,650,817 (pinned in tests/models/test_unet.py), 4,992 fewer. Keras gives
every convolution a bias even before a BatchNorm (3,584 here, with an
exactly-zero true gradient, so we drop it); the other 1,408 depend on layer
details the document does not give. Decoder floors keep two convolutions.
"""

from configs import lgg


def get_config():
    config = lgg.get_config()
    config.model.features = 64
    config.model.depth = 3
    with config.ignore_type():  # an int in the base config, one per floor here
        config.model.num_convs = (2, 2, 3, 3)
    return config
