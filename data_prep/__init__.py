"""Turn raw datasets on disk into validated, patient-split TFRecord shards."""
