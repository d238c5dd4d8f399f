"""Contrast maps end to end (document 000): image pairs prepared with a float
target, the residual-attention regression config trained for a step on them,
evaluated per case with the soft Jaccard, SSIM and PSNR, and predictions on a
new scan scaled back to the target's units."""

import csv
import os

import numpy as np
import pytest
from run_configs import evaluate_split, tiny_config

from configs import contrast_res_attention
from data_prep import pictures, volumes
from data_prep.phantoms import lesions, pairs
from unet_jax import predict, train
from unet_jax.data import pipeline
from unet_jax.data.medical_io import read_image, read_volume, write_image


def contrast_config(data_dir):
    """configs/contrast_res_attention.py at the size of tiny_config."""
    config = contrast_res_attention.get_config()
    tiny = tiny_config(data_dir)
    for key in ("data", "batch_size", "eval_batch_size", "log_every_steps", "num_preview_images"):
        config[key] = tiny[key]
    config.data.normalization = "none"
    config.model.features, config.model.depth = 4, 2
    config.num_epochs = 2
    return config


@pytest.fixture(scope="module")
def volume_pairs(tmp_path_factory):
    """Lesion phantoms as T1 -> FLAIR pairs (the FLAIR's lesions are the
    'enhancement' the T1 barely shows), prepared as axial 32x32 slices."""
    root = tmp_path_factory.mktemp("contrast")
    names = lesions.write_lesion_phantoms(root / "cases", num_cases=4, shape=(32, 32, 8), seed=0, progress=False)
    out = root / "prepared"
    volumes.prepare(str(root / "cases"), str(out), channels="T1*", target="FLAIR*", val_cases=names[-1],
                    test_cases=names[-2], slices="axial", slice_size="32,32", progress=False, command="test")
    return root / "cases", str(out), names[-1]


@pytest.fixture(scope="module")
def contrast_run(volume_pairs, tmp_path_factory):
    _, data_dir, _ = volume_pairs
    workdir = str(tmp_path_factory.mktemp("contrast_run") / "run")
    train.train_and_evaluate(contrast_config(data_dir), workdir)
    return workdir


@pytest.mark.slow
def test_the_contrast_config_trains_and_reports_regression_metrics_per_case(contrast_run):
    with open(os.path.join(contrast_run, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in ("val_soft_jaccard", "val_soft_jaccard_3d", "val_mae_3d", "val_ssim_3d", "val_psnr_3d"):
        values = [float(r[key]) for r in rows]
        assert all(np.isfinite(values)), key
    assert all(0 <= float(r["val_soft_jaccard_3d"]) <= 1 and -1 <= float(r["val_ssim_3d"]) <= 1 for r in rows)
    figures = os.listdir(os.path.join(contrast_run, "figures"))
    assert "test_predictions.png" in figures, figures


@pytest.mark.slow
def test_predictions_of_a_new_scan_are_scaled_back_to_the_target_units(contrast_run, volume_pairs, tmp_path):
    """The written output equals the evaluator's output (in the scaled units the
    model trained on) times the case's target scale, on the crop it came from."""
    cases, data_dir, val_case = volume_pairs
    evaluation, _ = evaluate_split(contrast_run, "val")
    output = evaluation.volumes[0][0].astype(np.float32)  # [S, H, W] axial slices of the padded records
    record = pipeline.read_manifest(data_dir)["splits"]["val"]["patients"][0]
    scale = record["target"]["scale"]
    out = str(tmp_path / "out")
    result = predict.predict_files(predict.Predictor.from_workdir(contrast_run), str(cases / val_case), out,
                                   labels="FLAIR*", progress=False)
    assert [r["status"] for r in result["cases"]] == ["ok"]
    assert os.path.exists(os.path.join(out, "overlays", f"{val_case}.png"))
    (written,) = [os.path.join(root, f) for root, _, files in os.walk(out) for f in files if f.endswith(".nii.gz")]
    predicted = read_volume(written).array.astype(np.float32)
    t1 = read_volume(next(str(p) for p in (cases / val_case).glob("T1*"))).array
    assert predicted.shape == t1.shape
    x, y, z = record["shape"]
    pad = [((32 - n) // 2) for n in (x, y)]
    on_records = np.moveaxis(output, 0, -1)[pad[0]:pad[0] + x, pad[1]:pad[1] + y]  # back to [X, Y, Z]
    head = np.nonzero(t1)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in head)
    np.testing.assert_allclose(predicted[box], on_records * scale, rtol=2e-2, atol=2e-2 * scale)
    # Scored against the raw target volume, in its units, with the evaluation's metrics.
    flair = read_volume(next(str(p) for p in (cases / val_case).glob("FLAIR*"))).array.astype(np.float64)
    (score,) = result["scores"]
    assert set(score) >= {"soft_jaccard_3d", "mae_3d", "psnr_3d", "ssim_3d"}
    assert score["mae_3d"] == pytest.approx(np.abs(predicted - flair).mean(), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 16])
def test_picture_pairs_train_and_predict_contrast_maps_in_the_targets_bits(tmp_path, bits):
    """Document 000's layout: PNG pairs prepared with doubling, a run of the
    contrast config, and predictions written as PNGs of the targets' bits in
    their units that equal the evaluator's outputs times 255 (65535): 16-bit
    targets keep their range."""
    pairs.write_pair_phantoms(tmp_path / "pairs", num_pairs=6, size=32, seed=0, progress=False)
    if bits == 16:
        for target in (tmp_path / "pairs" / "targets").iterdir():
            write_image(str(target), read_image(str(target)).astype(np.uint16) * 257)
    data_dir = str(tmp_path / "prepared")
    m = pictures.prepare(str(tmp_path / "pairs"), data_dir, task="regression", double=True, val_cases="p06",
                         test_cases="p05", progress=False)
    top = 2**bits - 1
    assert m["splits"]["train"]["num_examples"] == 8 and m["target"]["divisor"] == top  # 4 pairs, doubled
    config = contrast_config(data_dir)
    config.data.normalization = "patient_zscore"
    config.batch_size = 4
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    evaluation, _ = evaluate_split(workdir, "val")
    expected = np.clip(np.round(evaluation.volumes[0][0][0].astype(np.float32) * top), 0, top)
    out = str(tmp_path / "out")
    predict.predict_files(predict.Predictor.from_workdir(workdir), str(tmp_path / "pairs" / "inputs" / "p06.png"),
                          out, progress=False)
    written = read_image(os.path.join(out, "p06_mask.png"))[..., 0]
    assert written.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert expected.max() > 255 or bits == 8
    assert np.abs(written.astype(np.float32) - expected).max() <= 1 + top * 1e-6  # window and evaluator round apart
