"""Input pipeline: TFRecord shards -> grain -> batches of NumPy arrays."""

# The file of a prepared folder that describes it (written by data_prep).
MANIFEST = "manifest.json"
# Cross-validation folds over a prepared folder's training cases (data_prep.volumes --cv_folds).
SPLITS_FILE = "splits.json"
# The experiment plan a prepared folder was made with (data_prep.plan), copied beside the manifest.
PLANS_FILE = "plans.json"
