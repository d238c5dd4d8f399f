"""Flax linen U-Nets: one builder, variants by configuration."""
