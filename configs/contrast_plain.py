"""Ablation of configs/contrast_res_attention.py: the plain U-Net (document 000's first model: Jaccard 64.2% on its test images)."""

from configs import contrast_res_attention


def get_config():
    config = contrast_res_attention.get_config()
    config.model.block = "plain"
    config.model.attention = False
    return config
