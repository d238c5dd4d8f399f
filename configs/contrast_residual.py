"""Ablation of configs/contrast_res_attention.py: residual blocks without attention gates."""

from configs import contrast_res_attention


def get_config():
    config = contrast_res_attention.get_config()
    config.model.block = "residual"
    config.model.attention = False
    return config
