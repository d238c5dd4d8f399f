"""Tiny run configs shared by the tests that train: a few features, 32x32
inputs, so a run takes seconds on two cores."""

from configs import default
from unet_jax import evaluate
from unet_jax.run import Run


def tiny_config(data_dir):
    config = default.get_config()
    config.data.data_dir = data_dir
    config.data.num_workers = 0
    config.model.features = 4
    config.model.depth = 2
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 3
    config.learning_rate = 3e-3
    config.loss = "dice_bce"
    config.log_every_steps = 2
    config.num_preview_images = 2
    return config


def volume_config(data_dir):
    """tiny_config for 3-D patch training on data_prep.volumes records."""
    config = tiny_config(data_dir)
    config.data.normalization = "none"
    config.data.patch_size = (16, 16, 4)
    config.data.patches_per_volume = 4
    config.data.augment.flip_axes = (0, 1, 2)
    config.model.kernel_size = ((3, 3, 1), (3, 3, 3), (3, 3, 3))
    config.model.pool_strides = ((2, 2, 1), (2, 2, 2))
    config.model.norm = "instance"
    config.num_epochs = 2
    return config


def evaluate_split(workdir, split):
    """--mode=evaluate's Evaluation of a split of a run's own data, and its evaluator."""
    opened = Run.open(workdir)
    evaluator = evaluate.make_evaluator(opened.config, opened.task, (opened.eval_step, opened.predict_step),
                                        opened.mesh, opened.config.data.data_dir, split)
    return evaluator(opened.state), evaluator
