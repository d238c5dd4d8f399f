"""Base configuration; every experiment config imports it and overrides fields.

Defaults are the classic LGG U-Net of Buda et al. (2019) on 256x256 slices;
the data section is what the input pipeline reads.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Optimisation. batch_size is global (all devices and hosts); it is split
    # into grad_accum_steps micro-batches inside each step.
    config.batch_size = 16
    config.eval_batch_size = 16
    config.grad_accum_steps = 1
    config.num_epochs = 100
    # "segmentation": model.out_channels=1 is a sigmoid (binary), C > 1 a softmax
    # over C classes; "regression": the raw outputs are compared with the targets.
    config.task = "segmentation"
    # segmentation: "dice", "bce"/"ce", "focal", "tversky", "dice_bce"/"dice_ce", "dice_focal",
    # "dice_tversky"; regression: "l1", "l2", "soft_jaccard"
    config.loss = "dice"
    config.optimizer = "adamw"  # or "sgd": SGD with Nesterov momentum (nnU-Net's)
    config.momentum = 0.99  # sgd only
    config.learning_rate = 1e-4
    # "constant", "cosine" (decays to zero over the run) or "poly" (nnU-Net's
    # (1 - t/T)^0.9 to zero), after warmup_steps of linear warm-up.
    config.lr_schedule = "constant"
    config.warmup_steps = 0
    config.weight_decay = 1e-4  # decoupled in AdamW, L2 on the gradients in SGD; kernels only
    config.clip_norm = 1.0  # global gradient norm; 0 turns clipping off
    config.mixed_precision = False  # bf16 compute, float32 parameters
    # Loss weights of the auxiliary heads on decoder levels 1..k, one per level
    # of model.deep_supervision (level 1: half resolution), e.g. (0.5, 0.25).
    config.deep_supervision_weights = ()

    # The one U-Net builder (unet_jax/models/unet.py); variants are fields here.
    config.model = ml_collections.ConfigDict(dict(
        out_channels=1, features=32, depth=4, num_convs=2, decoder_num_convs=2, norm="batch", block="plain",
        attention=False, upsample="transpose", deep_supervision=0, bottleneck="conv",
        conv_impl="auto",  # "xla", or "gemm": weight gradients as matmuls; "auto": gemm on a CPU
        # Sizes of bottleneck="transformer" (ViT-B), patch_size on the deepest encoder map.
        transformer=dict(hidden=768, num_layers=12, num_heads=12, mlp_dim=3072, dropout=0.1, patch_size=1)))

    config.data = ml_collections.ConfigDict()
    config.data.data_dir = "data/lgg"  # a folder written by data_prep
    # "patient_zscore": per patient and channel over the head's non-zero voxels
    # (robust to a patient whose FLAIR is 3x darker); "zscore": per image and
    # channel; "scale": the uint8 range to [0, 1].
    config.data.normalization = "patient_zscore"
    config.data.num_workers = 2  # grain worker processes; 0 loads in the main process
    config.data.prefetch_buffer_size = 2
    config.data.augment = ml_collections.ConfigDict(dict(
        flip_prob=0.5, rotate_prob=0.5, max_rotate_deg=15.0, scale_prob=0.5, max_scale=0.05))
    # Where augmentation (and simulated pathology) runs: "host" in the grain
    # workers (NumPy), or "device" inside the jitted train step on the sharded
    # batch (data/augment_device.py), so the host only reads, decodes and batches.
    config.data.augment_on = "host"
    # Patch training on whole volumes (data_prep.volumes): None trains on whole
    # records. Each epoch draws patches_per_volume patches from every training
    # volume, a foreground_prob share of them centred on a labelled voxel;
    # validation and test then run on whole volumes by sliding window.
    config.data.patch_size = ml_collections.config_dict.placeholder(tuple)
    config.data.foreground_prob = 1 / 3
    config.data.patches_per_volume = 1
    config.data.sliding_window = ml_collections.ConfigDict(dict(
        overlap=0.5, importance="gaussian", flip_tta=False))
    # Simulated lung pathology (document 003, data/pathology.py): with probability
    # prob, 7-9 lesions drawn into a training slice inside the bounding boxes of
    # its two largest lung components (0: off). eval_pathology=True draws them
    # into every validation/test slice as well (fixed per slice), to measure
    # robustness with --mode=evaluate.
    config.data.pathology = ml_collections.ConfigDict(dict(
        prob=0.0, min_count=7, max_count=9, min_radius=0.04, max_radius=0.15, min_opacity=0.3, max_opacity=0.9,
        shapes=("disc",), tissue_value=ml_collections.config_dict.placeholder(float), min_lung_pixels=50))
    config.data.eval_pathology = False
    # Cross-validation: train on fold k's cases of splits.json (data_prep.volumes
    # --cv_folds) and validate on its held-out ones; None uses the stored splits.
    config.data.fold = ml_collections.config_dict.placeholder(int)
    # Phantoms to generate and prepare under the workdir (the demo) when no
    # data_dir is given; None reads data_dir.
    config.data.synthetic = ml_collections.config_dict.placeholder(ml_collections.ConfigDict)

    # Checkpoints keep the latest epoch and the best by this validation metric.
    # None: the task's default, val_dice (Dice over all validation voxels, stable
    # with few validation patients) or val_soft_jaccard for regression. The
    # mode, None: the metric's own direction (min for losses and errors).
    config.best_metric = ml_collections.config_dict.placeholder(str)
    config.best_mode = ml_collections.config_dict.placeholder(str)

    config.log_every_steps = 10
    config.num_preview_images = 4
    config.halt_after_steps = 0  # stop with a checkpoint after this many steps (0: never)
    # Resuming a workdir with a config that differs from its config.json (a
    # longer num_epochs changes the schedule, say) is refused, listing the
    # changes; True goes on with the new config and says what changed.
    config.allow_changed_config = False
    # A step whose loss or gradients are not finite (NaN input, a diverging
    # learning rate) is skipped; this many in a row stop the run with one line.
    config.max_nonfinite_steps = 10
    return config
