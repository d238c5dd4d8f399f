"""Contrast maps without a contrast agent (document 000): a residual U-Net with
attention gates regresses a grey-level contrast map from a structural MRI,
trained with the soft (grey-level) Jaccard loss, AdamW at 5e-4 for 100 epochs,
best epoch by validation soft Jaccard.

Data: pairs of co-registered images, prepared with a float target, e.g. T1 ->
T1POST on the MS patients (predicting gadolinium enhancement from a
non-contrast scan), as axial slices:
  python -m data_prep.volumes --data_dir=../shared/data/ms_lesions_ljubljana --out_dir=data/contrast_ms \
      --channels='T1_*' --target='T1POST*' --val_cases=patient19 --test_fraction=0 \
      --slices=axial --slice_size=144,160
  python -m unet_jax.main --config=configs/contrast_res_attention.py --workdir=runs/contrast
or 2-D picture pairs (inputs/<n>.png, targets/<n>.png, document 000's layout),
with the pipeline's per-patient z-score since pictures are stored as 8 bits:
  python -m data_prep.pictures --data_dir=PAIRS --out_dir=data/contrast --task=regression --double
  ... --config.data.data_dir=data/contrast --config.data.normalization=patient_zscore

The ablations of document 000 are the configs contrast_plain.py,
contrast_residual.py and contrast_attention.py.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.task = "regression"
    config.loss = "soft_jaccard"
    config.learning_rate = 5e-4
    config.num_epochs = 100
    config.batch_size = 16
    config.eval_batch_size = 16
    config.model.out_channels = 1
    config.model.block = "residual"
    config.model.attention = True
    config.data.data_dir = "data/contrast_ms"
    config.data.normalization = "none"  # data_prep.volumes z-scored the input already
    return config
