"""Ablation of configs/contrast_res_attention.py: attention gates on plain blocks."""

from configs import contrast_res_attention


def get_config():
    config = contrast_res_attention.get_config()
    config.model.block = "plain"
    config.model.attention = True
    return config
