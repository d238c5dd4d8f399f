"""Input pipeline: TFRecord shards -> grain -> batches of NumPy arrays."""

# The file of a prepared folder that describes it (written by data_prep).
MANIFEST = "manifest.json"


class DataError(Exception):
    """Bad or missing input data; the message names the file and the fix."""
