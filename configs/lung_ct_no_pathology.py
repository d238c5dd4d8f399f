"""configs/lung_ct.py without simulated pathology: document 003's first model,
the comparison that shows what the simulated lesions buy."""

from configs import lung_ct


def get_config():
    config = lung_ct.get_config()
    config.data.pathology.prob = 0.0
    return config
