"""U-Nets for medical image segmentation in JAX/Flax."""
