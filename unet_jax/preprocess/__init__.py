"""What preparing training data (data_prep) and predicting on new scans (unet_jax.predict) must do alike:
finding and reading the source files, checking them and preprocessing them, so a new scan gets exactly the
training data's treatment. Imports neither JAX nor TensorFlow."""
