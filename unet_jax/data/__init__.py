"""Input pipeline: TFRecord shards -> grain -> batches of NumPy arrays."""


class DataError(Exception):
    """Bad or missing input data; the message names the file and the fix."""
