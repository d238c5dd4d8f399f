"""TransUNet-style U-Net of document 002 on the LGG data: the classic U-Net's
convolutional encoder, a ViT-B transformer at the bottleneck (hidden 768, 12
pre-norm layers, 12 heads, MLP 3072, dropout 0.1) over patches of size 1 of the
deepest (1/16) map, i.e. 256 tokens at 256x256, and the U-Net decoder with its
skips. 93,212,001 parameters, trained from scratch (no ImageNet weights can be
downloaded here); the document's was about ten times its 10.7M U-Net.
"""

from configs import lgg


def get_config():
    config = lgg.get_config()
    config.model.bottleneck = "transformer"
    config.model.transformer = dict(hidden=768, num_layers=12, num_heads=12, mlp_dim=3072, dropout=0.1,
                                    patch_size=1)
    return config
