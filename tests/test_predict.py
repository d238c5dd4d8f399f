"""Prediction on new scans: tiny runs trained on phantoms predict kaggle_3m
folders, NIfTI/NRRD/MHA/DICOM cases and PNG pictures; masks keep the input's
shape and geometry and equal --mode=evaluate's predictions; TTA, probabilities,
resampling back, --overwrite, --skip_bad, scoring, ensembles of runs, the
runs' post-processing, and the one-line errors."""

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from run_configs import evaluate_split, tiny_config, volume_config

from data_prep import lgg
from unet_jax import evaluate, metrics, postprocessing, predict, tasks, train
from unet_jax.data import medical_io, pipeline
from unet_jax.data.medical_io import (Geometry, Volume, read_image, read_volume, write_dicom_series, write_image,
                                      write_volume)
from unet_jax.data.tfrecord import decode_example
from unet_jax.errors import ConfigError, DataError
from unet_jax.files import write_json
from unet_jax.run import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_2d(prepared_dir, tmp_path_factory):
    """A 2-D sigmoid U-Net trained one epoch on the LGG phantoms."""
    config = tiny_config(prepared_dir)
    config.num_epochs = 1
    workdir = str(tmp_path_factory.mktemp("run2d") / "run")
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def run_3d(lesion_volume_dir, tmp_path_factory):
    """A 3-D softmax U-Net trained one epoch on patches of the lesion phantoms (FLAIR and T1)."""
    config = volume_config(lesion_volume_dir)
    config.num_epochs = 1
    config.model.out_channels = 2
    config.loss = "dice_ce"
    workdir = str(tmp_path_factory.mktemp("run3d") / "run")
    train.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def predictor_3d(run_3d):
    """The raw network output, as --mode=evaluate predicts (whatever post-processing the run chose)."""
    return predict.Predictor.from_workdir(run_3d, postprocessing="none")


def _source_cases(data_dir):
    return pipeline.read_manifest(data_dir)["source"]


@pytest.mark.slow
def test_kaggle_folders_give_tiff_masks_equal_to_evaluate(run_2d, phantom_dir, prepared_dir, tmp_path):
    predictor = predict.Predictor.from_workdir(run_2d, postprocessing="none")  # evaluate keeps every component
    out = str(tmp_path / "out")
    result = predict.predict_files(predictor, phantom_dir, out, labels="*_mask.tif", progress=False)
    assert [r["status"] for r in result["cases"]] == ["ok"] * 6
    evaluation, _ = evaluate_split(run_2d, "test")
    (patient,) = [row["patient"] for row in evaluation.patients]
    pred, _, numbers = evaluation.volumes[0]
    written = np.stack([read_image(os.path.join(out, patient, f"{patient}_{n}_mask.tif"))[..., 0]
                        for n in numbers])
    assert written.shape == (12, 32, 32) and set(np.unique(written)) <= {0, 255}
    np.testing.assert_array_equal(written // 255, pred)  # the same slices as the evaluator predicted
    score = next(r for r in result["scores"] if r["patient"] == patient)
    assert score["dice_3d"] == pytest.approx(evaluation.patients[0]["dice_3d"])
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert int(rows[patient]["voxels"]) == int(pred.sum())
    assert rows[patient]["volume_ml"] == ""  # kaggle_3m TIFFs carry no spacing
    assert os.path.exists(os.path.join(out, "overlays", patient + ".png"))
    summary = json.load(open(os.path.join(out, "scores_summary.json")))
    assert summary["num_cases"] == 6 and 0 <= summary["mean"]["dice_3d"] <= 1


def _case_in_format(src_folder, dest, suffix):
    """A lesion phantom case folder rewritten with every volume in `suffix` ("dicom": series folders)."""
    os.makedirs(dest)
    for name in os.listdir(src_folder):
        volume = read_volume(os.path.join(src_folder, name))
        stem = name.split(".")[0]
        if suffix == "dicom":
            write_dicom_series(os.path.join(dest, stem), Volume(np.round(volume.array).astype(np.int16),
                                                                volume.geometry))
        else:
            write_volume(os.path.join(dest, stem + suffix), volume)


@pytest.mark.slow
def test_volume_formats_keep_shape_and_geometry_and_equal_evaluate(predictor_3d, run_3d, lesion_volume_dir,
                                                                   tmp_path):
    evaluation, evaluator = evaluate_split(run_3d, "test")
    (case,) = evaluator.names
    source = os.path.join(_source_cases(lesion_volume_dir), case)
    cases = tmp_path / "cases"
    for suffix in (".nii.gz", ".nrrd", ".mha", "dicom"):
        _case_in_format(source, str(cases / f"{case}{suffix.replace('.', '_')}"), suffix)
    out = str(tmp_path / "out")
    result = predict.predict_files(predictor_3d, str(cases), out, labels="lesions*", save_probabilities=True,
                                   progress=False)
    assert [r["status"] for r in result["cases"]] == ["ok"] * 4
    flair = read_volume(next(os.path.join(source, n) for n in os.listdir(source) if n.startswith("FLAIR")))
    outputs = {}
    for suffix, written in ((".nii.gz", f"{case}_nii_gz.nii.gz"), (".nrrd", f"{case}_nrrd.nrrd"),
                            (".mha", f"{case}_mha.mha"), ("dicom", f"{case}dicom")):
        mask = read_volume(os.path.join(out, written))
        assert mask.array.shape == flair.array.shape, suffix
        assert mask.geometry.same_grid(flair.geometry), suffix
        outputs[suffix] = mask.array
    np.testing.assert_array_equal(outputs[".nrrd"], outputs[".nii.gz"])
    np.testing.assert_array_equal(outputs[".mha"], outputs[".nii.gz"])
    assert (outputs["dicom"] == outputs[".nii.gz"]).mean() > 0.99  # intensities rounded to integers there
    # The evaluator predicted the record: the case cropped to its head's bounding box.
    record = decode_example(evaluator.source[0])
    box = tuple(slice(lo, hi) for lo, hi in json.loads(record["geometry"].decode())["crop"])
    np.testing.assert_array_equal(evaluate.as_slices(outputs[".nii.gz"][box]), evaluation.volumes[0][0])
    outside = np.ones(flair.array.shape, bool)
    outside[box] = False
    assert not outputs[".nii.gz"][outside].any()
    score = next(r for r in result["scores"] if r["patient"] == f"{case}_nii_gz")
    assert score["dice_3d"] == pytest.approx(evaluation.patients[0]["dice_3d"])
    if score["tumor_voxels"] and score["pred_voxels"]:
        assert score["hd95"] == pytest.approx(evaluation.patients[0]["hd95"])
    else:  # one mask empty: HD95 is the diagonal of the grid scored, here the whole scan's
        extent = (np.array(flair.array.shape) - 1) * np.array(flair.geometry.spacing)
        assert score["hd95"] == pytest.approx(np.sqrt(np.sum(extent ** 2)))
    probabilities = read_volume(os.path.join(out, f"{case}_nii_gz_probabilities.nii.gz"))
    assert probabilities.array.shape == flair.array.shape  # the foreground class of the softmax
    assert np.array_equal(probabilities.array > 0.5, outputs[".nii.gz"] == 1)
    rows = {r["case"]: r for r in result["cases"]}
    voxel_ml = np.prod(flair.geometry.spacing) / 1000
    assert rows[f"{case}_nii_gz"]["volume_ml"] == pytest.approx(outputs[".nii.gz"].sum() * voxel_ml)


@pytest.mark.slow
def test_probabilities_sum_to_one_and_resampled_runs_predict_on_the_source_grid(predictor_3d, lesion_volume_dir):
    case = sorted(os.listdir(_source_cases(lesion_volume_dir)))[0]
    folder = os.path.join(_source_cases(lesion_volume_dir), case)
    channels = [read_volume(os.path.join(folder, n)) for n in sorted(os.listdir(folder)) if n[:2] in ("FL", "T1")]
    image = np.stack([v.array for v in channels], axis=-1)
    labels, probabilities = predictor_3d(image, spacing=channels[0].geometry.spacing)
    assert labels.shape == image.shape[:-1] and probabilities.shape == (*image.shape[:-1], 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, probabilities.argmax(-1))
    # The same run as if it had trained on data resampled to 1.5x1.5x3 mm.
    manifest = json.loads(json.dumps(predictor_3d.manifest))
    manifest["preprocessing"]["spacing"] = [1.5, 1.5, 3.0]
    resampled = predict.Predictor(predictor_3d.config, manifest, predictor_3d.states, predictor_3d.mesh)
    labels_r, probabilities_r = resampled(image, spacing=channels[0].geometry.spacing)
    assert labels_r.shape == labels.shape
    np.testing.assert_allclose(probabilities_r.sum(-1), 1.0, atol=1e-5)
    assert (labels_r == labels).mean() > 0.9


@pytest.mark.slow
def test_tta_is_the_mean_of_the_flipped_predictions(run_2d, phantom_dir):
    predictor = predict.Predictor.from_workdir(run_2d)
    with_tta = predict.Predictor(predictor.config, predictor.manifest, predictor.states, predictor.mesh, tta=True)
    folder = os.path.join(phantom_dir, sorted(os.listdir(phantom_dir))[0])
    image = read_image(os.path.join(folder, os.path.basename(folder) + "_6.tif"))  # 32x32x3: one window
    flips = [(), (0,), (1,), (0, 1)]
    mean = np.mean([np.flip(predictor(np.flip(image, f).copy())[1], f) for f in flips], axis=0)
    np.testing.assert_allclose(with_tta(image)[1], mean, atol=1e-5)
    assert not np.allclose(predictor(image)[1], mean, atol=1e-5)  # the flips do change the prediction


@pytest.mark.slow
def test_pictures_any_size_and_the_padding_note(run_2d, phantom_dir, tmp_path):
    predictor = predict.Predictor.from_workdir(run_2d)
    folder = os.path.join(phantom_dir, sorted(os.listdir(phantom_dir))[0])
    image = read_image(os.path.join(folder, os.path.basename(folder) + "_6.tif"))
    pictures = tmp_path / "pictures"
    write_image(str(pictures / "large.png"), np.pad(image, ((8, 8), (16, 0), (0, 0))))  # 48x48: four windows
    write_image(str(pictures / "small.png"), image[4:28, 4:28])  # 24x24: padded to the 32x32 input
    write_image(str(pictures / "ignored_mask.png"), np.zeros((32, 32), np.uint8))  # a mask, not a scan
    result = predict.predict_files(predictor, str(pictures), str(tmp_path / "out"), progress=False)
    rows = {r["case"]: r for r in result["cases"]}
    assert set(rows) == {"large", "small"}
    large = read_image(str(tmp_path / "out" / "large_mask.png"))
    assert large.shape == (48, 48, 1) and set(np.unique(large)) <= {0, 255}
    assert read_image(str(tmp_path / "out" / "small_mask.png")).shape == (24, 24, 1)
    assert "zero-padded" in rows["small"]["note"] and rows["large"]["note"] == ""


@pytest.mark.slow
def test_overwrite_skip_bad_and_an_api_equal_to_the_cli(run_3d, predictor_3d, lesion_volume_dir, tmp_path):
    cases = tmp_path / "cases"
    shutil.copytree(_source_cases(lesion_volume_dir), cases)
    names = sorted(os.listdir(cases))[:3]
    for extra in sorted(os.listdir(cases))[3:]:
        shutil.rmtree(cases / extra)
    out = str(tmp_path / "out")
    cli = subprocess.run([sys.executable, "-m", "unet_jax.main", "--mode=predict", f"--workdir={run_3d}",
                          f"--input={cases}", f"--output={out}"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "predicted 3 case(s)" in cli.stdout
    folder = cases / names[0]
    channels = [read_volume(str(folder / n)) for n in sorted(os.listdir(folder)) if n[:2] in ("FL", "T1")]
    labels, _ = predictor_3d(np.stack([v.array for v in channels], -1), spacing=channels[0].geometry.spacing)
    labels = postprocessing.apply(labels, postprocessing.read(run_3d))  # the command applies the run's choice
    np.testing.assert_array_equal(read_volume(os.path.join(out, names[0] + ".nii.gz")).array, labels)

    with pytest.raises(DataError, match=r"already exists; pass --overwrite"):
        predict.predict_files(predictor_3d, str(cases), out, progress=False)
    flair = next(folder / n for n in os.listdir(folder) if n.startswith("FLAIR"))
    data = flair.read_bytes()
    flair.write_bytes(data[:len(data) // 2])  # a truncated scan
    with pytest.raises(DataError, match=str(flair)) as error:
        predict.predict_files(predictor_3d, str(cases), out, overwrite=True, progress=False)
    assert "\n" not in str(error.value)
    result = predict.predict_files(predictor_3d, str(cases), out, overwrite=True, skip_bad=True, progress=False)
    assert [r["status"] for r in result["cases"]] == ["skipped", "ok", "ok"]
    assert result["skipped"][0][0] == str(flair)
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["status"] == "skipped" and str(flair) in rows[0]["note"]


def test_workdirs_and_inputs_that_cannot_work_are_one_line(run_3d, predictor_3d, lesion_volume_dir, tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        predict.Predictor.from_workdir(str(tmp_path))
    empty = tmp_path / "no_checkpoints"
    empty.mkdir()
    for name in ("config.json", "train_manifest.json"):
        shutil.copy(os.path.join(run_3d, name), empty / name)
    with pytest.raises(ConfigError, match="no checkpoints"):
        predict.Predictor.from_workdir(str(empty))
    with pytest.raises(DataError, match=r"the run takes 3-D images with 2 channel\(s\) \(FLAIR\*, T1\*\)"):
        predictor_3d(np.zeros((20, 20, 10), np.float32))
    with pytest.raises(DataError, match="NaN or infinite"):
        predictor_3d(np.full((20, 20, 10, 2), np.nan, np.float32))
    with pytest.raises(DataError, match="no scans found"):
        predict.predict_files(predictor_3d, str(tmp_path / "no_checkpoints"), str(tmp_path / "out"))
    single = tmp_path / "single.nii.gz"
    write_volume(str(single), Volume(np.zeros((20, 20, 10), np.float32), read_volume(
        next(os.path.join(r, f) for r, _, fs in os.walk(_source_cases(lesion_volume_dir)) for f in fs)).geometry))
    with pytest.raises(DataError, match="give those channels"):
        predict.predict_files(predictor_3d, str(single), str(tmp_path / "out"), progress=False)


def test_the_predict_command_says_what_is_missing_in_one_line(tmp_path):
    cli = subprocess.run([sys.executable, "-m", "unet_jax.predict", f"--workdir={tmp_path}", "--input=x",
                          f"--output={tmp_path / 'out'}"], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}: no config.json")


@pytest.mark.slow
def test_an_ensemble_of_identical_runs_predicts_as_one_run(run_2d, phantom_dir, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(run_2d, copy)
    one = predict.Predictor.from_workdir(run_2d, postprocessing="none")
    ensemble = predict.Predictor.from_workdirs([run_2d, copy, run_2d], postprocessing="none")
    assert len(ensemble.states) == 3 and ensemble.workdir == f"{run_2d},{copy},{run_2d}"
    folder = os.path.join(phantom_dir, sorted(os.listdir(phantom_dir))[1])
    stack = np.stack([read_image(os.path.join(folder, f"{os.path.basename(folder)}_{n}.tif"))
                      for n in range(1, 13)], axis=2)  # [H, W, S, C]: predicted slice by slice
    labels, probabilities = one(stack)
    labels_e, probabilities_e = ensemble(stack)
    np.testing.assert_allclose(probabilities_e, probabilities, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels_e, labels)
    assert 0 < labels.sum() < labels.size  # labels worth comparing


def _fake_run(folder, channels=2, out_channels=2, fold=None):
    """A workdir with config.json and train_manifest.json only: enough for the ensemble's checks."""
    config = volume_config(str(folder / "data"))
    config.model.out_channels = out_channels
    write_json(folder / "config.json", config.to_dict())
    write_json(folder / "train_manifest.json", {
        "dataset": "volumes", "num_channels": channels, "channels": ["FLAIR*", "T1*"][:channels], "fold": fold,
        "splits": {"val": {"num_examples": 1 + (fold or 0), "patients": [{"patient": f"case{fold}"}]}},
        "preprocessing": {"intensity": [{"method": "zscore"}] * channels, "spacing": None, "crop": True}})
    return str(folder)


def test_runs_that_disagree_do_not_make_an_ensemble(tmp_path):
    base = _fake_run(tmp_path / "a", fold=0)
    for other, key in ((_fake_run(tmp_path / "one_channel", channels=1), r"input channels \(2 against 1\)"),
                       (_fake_run(tmp_path / "three_classes", out_channels=3), r"model.out_channels \(2 against 3\)")):
        with pytest.raises(ConfigError, match=f"{base} and {other} differ in {key}") as error:
            predict.Predictor.from_workdirs([base, other])
        assert "\n" not in str(error.value)
    # Runs of other folds agree (their splits differ): the next question is their checkpoints.
    with pytest.raises(ConfigError, match="no checkpoints"):
        predict.Predictor.from_workdirs([base, _fake_run(tmp_path / "b", fold=1)])
    with pytest.raises(ConfigError, match="--postprocessing='lcc': choose auto or none"):
        predict.Predictor.from_workdirs([base], postprocessing="lcc")


def _masks(out, patient):
    """A kaggle_3m prediction's masks [H, W, S] as 0/1."""
    files = sorted((n for n in os.listdir(os.path.join(out, patient)) if n.endswith("_mask.tif")),
                   key=lambda n: int(n.split("_")[-2]))
    return np.stack([read_image(os.path.join(out, patient, n))[..., 0] // 255 for n in files], axis=2)


@pytest.mark.slow
def test_the_runs_postprocessing_is_applied_only_when_it_chose_the_class(run_2d, phantom_dir, tmp_path, capsys):
    chosen, unchosen = str(tmp_path / "chosen"), str(tmp_path / "unchosen")
    for workdir, classes in ((chosen, [1]), (unchosen, [])):
        shutil.copytree(run_2d, workdir)
        postprocessing.write(workdir, {"keep_largest_component": classes, "chosen_on": "a test"})

    def predicted(workdirs, **options):
        out = str(tmp_path / f"out{len(os.listdir(tmp_path))}")
        result = predict.run(workdirs, phantom_dir, out, overlays=False, progress=False, **options)
        return out, {r["case"]: r for r in result["cases"]}

    raw_out, raw = predicted(unchosen)
    patient = max(raw, key=lambda c: raw[c]["components"])
    assert raw[patient]["components"] >= 2, "the tiny run should predict a case with two components"
    assert {r["largest_component_of"] for r in raw.values()} == {""}
    out, rows = predicted(chosen)
    assert "post-processing: keeping the largest connected component of class 1" in capsys.readouterr().out
    for case, row in rows.items():
        assert row["components"] == min(raw[case]["components"], 1) and row["largest_component_of"] == "1"
        assert row["voxels"] == row["largest_voxels"] == raw[case]["largest_voxels"]
    np.testing.assert_array_equal(_masks(out, patient),
                                  metrics.largest_connected_component(_masks(raw_out, patient)))
    with open(os.path.join(out, "predictions.csv")) as f:
        assert {r["largest_component_of"] for r in csv.DictReader(f)} == {"1"}
    out, rows = predicted(unchosen, lcc=True)  # --lcc: every class, whatever the run chose
    assert {c: r["components"] for c, r in rows.items()} == {c: min(r["components"], 1) for c, r in raw.items()}
    assert {r["largest_component_of"] for r in rows.values()} == {"1"}
    out, rows = predicted(chosen, postprocessing="none")
    assert {c: r["components"] for c, r in rows.items()} == {c: r["components"] for c, r in raw.items()}
    np.testing.assert_array_equal(_masks(out, patient), _masks(raw_out, patient))
    # An ensemble (--workdir=a,b,c) cuts the classes most of its runs chose: class 1 by 2 of 3.
    out, rows = predicted(f"{chosen},{unchosen},{chosen}")
    assert "(by majority: class 1 chosen by 2 of 3 runs)" in capsys.readouterr().out
    np.testing.assert_array_equal(_masks(out, patient),
                                  metrics.largest_connected_component(_masks(raw_out, patient)))


@pytest.mark.slow
def test_an_external_cohort_is_prepared_into_one_split_and_evaluated(run_2d, phantom_dir, tmp_path):
    external = str(tmp_path / "external")
    manifest = lgg.prepare(phantom_dir, external, val_fraction=0, test_fraction=1, progress=False, command="test")
    assert {k: v["num_patients"] for k, v in manifest["splits"].items()} == {"train": 0, "val": 0, "test": 6}
    config, _ = read_run(run_2d)
    summary = evaluate.evaluate_workdir(config, run_2d, external, "test")
    assert len(summary["patients"]) == 6
    config.data.data_dir = external
    with pytest.raises(ConfigError, match="has no training examples"):
        train.train_and_evaluate(config, str(tmp_path / "run"))


def _nifti(path, value=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(str(path), Volume(np.full((4, 4, 3), value, np.float32), Geometry.identity(3)))


def test_two_scans_with_one_case_name_are_refused_naming_both(tmp_path):
    volumes_ = tmp_path / "volumes"
    volumes_.mkdir()
    _nifti(volumes_ / "a.nii")
    _nifti(volumes_ / "a.nii.gz")
    with pytest.raises(DataError, match=r"a\.nii and .*a\.nii\.gz.*rename one") as error:
        predict.find_scans(str(volumes_), {})
    assert "\n" not in str(error.value)
    pictures = tmp_path / "pictures"
    write_image(str(pictures / "x.png"), np.zeros((8, 8), np.uint8))
    write_image(str(pictures / "x.tif"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"x\.png and .*x\.tif"):
        predict.find_scans(str(pictures), {})


def _kaggle_outputs(tmp_path):
    """A kaggle_3m scan of two 8x8 slices and its (empty) prediction, to write without a model."""
    scan = predict.KaggleScan("P1", (str(tmp_path / "P1"),), str(tmp_path / "P1"), "P1")
    loaded = predict.LoadedScan(np.zeros((8, 8, 2, 3), np.uint8), None, slice_numbers=[1, 2])
    prediction = predict.Prediction(np.zeros((8, 8, 2), np.uint8), np.zeros((8, 8, 2, 1), np.float32), [])
    return scan, loaded, prediction


def test_overwrite_replaces_only_folders_predict_wrote(tmp_path):
    scan, loaded, prediction = _kaggle_outputs(tmp_path)
    mask = tmp_path / "out" / "P1"
    mask.mkdir(parents=True)
    (mask / "notes.txt").write_text("a person's file")
    write = functools.partial(scan.write, loaded, prediction, {"mask": str(mask)}, task=tasks.Segmentation(),
                              overwrite=True, save_probabilities=False)
    with pytest.raises(DataError, match=r"P1: not written by unet_jax.predict \(no \.unet_jax_predict") as error:
        write()
    assert "\n" not in str(error.value) and (mask / "notes.txt").read_text() == "a person's file"
    (mask / "notes.txt").unlink()
    mask.rmdir()
    write()
    marker = json.loads((mask / predict.MARKER).read_text())
    assert marker["written_by"] == "unet_jax.predict" and sorted(os.listdir(mask))[:2] == [".unet_jax_predict",
                                                                                          "P1_1_mask.tif"]
    write()  # predict's own folder is replaced
    assert sorted(os.listdir(mask)) == [".unet_jax_predict", "P1_1_mask.tif", "P1_2_mask.tif"]


def test_outputs_over_labels_or_around_inputs_are_refused_before_predicting(tmp_path):
    no_model = types.SimpleNamespace(manifest={})  # refused before the model is needed
    pictures = tmp_path / "pictures"
    write_image(str(pictures / "x.png"), np.zeros((8, 8), np.uint8))
    labels = tmp_path / "labels"
    write_image(str(labels / "x_mask.png"), np.zeros((8, 8), np.uint8))
    for options in ({}, {"overwrite": True}):
        with pytest.raises(DataError, match=r"x_mask\.png: would overwrite an input \(.*labels"):
            predict.predict_files(no_model, str(pictures), str(labels), labels=str(labels), progress=False,
                                  **options)
    assert read_image(str(labels / "x_mask.png")).shape == (8, 8, 1)
    # A DICOM output folder <case> that holds the case's own scans.
    cases = tmp_path / "cases"
    _nifti(cases / "case1" / "FLAIR.nii.gz")
    manifest = {"source_layout": "folders", "channels": ["FLAIR*"]}
    with pytest.raises(DataError, match=r"case1: would overwrite an input \(.*FLAIR\.nii\.gz"):
        predict.predict_files(types.SimpleNamespace(manifest=manifest), str(cases), str(cases),
                              output_format="dicom", overwrite=True, overlays=False, progress=False)
    assert os.path.exists(cases / "case1" / "FLAIR.nii.gz")


@pytest.mark.parametrize("bits", [8, 16])
def test_regression_pictures_keep_their_range_and_large_outputs_stay_finite(tmp_path, bits):
    """Outputs above float16's 65504 stay finite and exact as float32; a 16-bit
    picture's outputs are written as a 16-bit PNG, never clipped to 8 bits."""
    finalized = tasks.Regression().finalize(np.array([[[70000.5]], [[-3.25]]], np.float32))
    assert finalized.dtype == np.float32 and finalized.tolist() == [[70000.5], [-3.25]]
    dtype = np.uint16 if bits == 16 else np.uint8
    path = tmp_path / "x.png"
    write_image(str(path), np.zeros((2, 3), dtype))
    scan = predict.PictureScan("x", (str(path),), str(tmp_path), "x")
    outputs = np.array([[0.0, 254.6, 300.0], [1000.0, 40000.4, 70000.0]], np.float32)
    prediction = predict.Prediction(outputs, outputs[..., None], [])
    mask = str(tmp_path / "out" / "x_mask.png")
    scan.write(predict.LoadedScan(read_image(str(path)), None), prediction, {"mask": mask}, task=tasks.Regression(),
               overwrite=False, save_probabilities=False)
    written = read_image(mask)[..., 0]
    assert written.dtype == dtype
    expected = np.clip(np.round(outputs), 0, np.iinfo(dtype).max)
    np.testing.assert_array_equal(written, expected)
    # An 8-bit input to a run trained on 16-bit targets: its outputs are in 16-bit units too.
    scan.write(predict.LoadedScan(np.zeros((2, 3, 1), np.uint8), None), prediction, {"mask": mask},
               task=tasks.Regression(), overwrite=True, save_probabilities=False, sixteen_bit=True)
    np.testing.assert_array_equal(read_image(mask)[..., 0], np.clip(np.round(outputs), 0, 65535))


def test_nan_outputs_of_damaged_weights_are_refused_and_not_written(run_2d, phantom_dir, tmp_path):
    predictor = predict.Predictor.from_workdir(run_2d)
    predictor.states = [s.replace(params=jax.tree.map(lambda p: p * np.nan, s.params)) for s in predictor.states]
    patients = tmp_path / "patients"
    for name in sorted(os.listdir(phantom_dir))[:2]:
        shutil.copytree(os.path.join(phantom_dir, name), patients / name)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"NaN or infinite outputs.*{run_2d}.*retrain") as error:
        predict.predict_files(predictor, str(patients), str(out), progress=False)
    assert "\n" not in str(error.value)
    assert not os.path.exists(out / sorted(os.listdir(patients))[0])
    result = predict.predict_files(predictor, str(patients), str(out), skip_bad=True, progress=False)
    assert [r["status"] for r in result["cases"]] == ["skipped", "skipped"]
    assert sorted(os.listdir(out)) == ["predictions.csv"]


def test_a_scan_larger_than_max_voxels_is_one_line_naming_the_file(run_2d, phantom_dir, tmp_path):
    predictor = predict.Predictor.from_workdir(run_2d, max_voxels=1000)  # a slice holds 32x32x3
    folder = os.path.join(phantom_dir, sorted(os.listdir(phantom_dir))[0])
    picture = tmp_path / "pictures" / "x.png"
    write_image(str(picture), read_image(os.path.join(folder, os.path.basename(folder) + "_6.tif")))
    with pytest.raises(DataError, match=rf"{picture}.*--max_voxels") as error:
        predict.predict_files(predictor, str(picture.parent), str(tmp_path / "out"), progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=rf"{folder}.*\.tif.*--max_voxels"):  # kaggle_3m slices
        predict.predict_files(predictor, folder, str(tmp_path / "out"), progress=False)
    predictor.max_voxels = 32 * 32 * 3
    result = predict.predict_files(predictor, str(picture.parent), str(tmp_path / "out"), progress=False)
    assert [r["status"] for r in result["cases"]] == ["ok"]


def test_a_volume_larger_than_max_voxels_is_one_line_naming_the_file(predictor_3d, lesion_volume_dir, tmp_path):
    case = sorted(os.listdir(_source_cases(lesion_volume_dir)))[0]
    shutil.copytree(os.path.join(_source_cases(lesion_volume_dir), case), tmp_path / case)
    predictor_3d.max_voxels = 1000  # a channel is 32x32x12
    try:
        with pytest.raises(DataError, match=rf"{tmp_path / case}.*--max_voxels") as error:
            predict.predict_files(predictor_3d, str(tmp_path / case), str(tmp_path / "out"), progress=False)
    finally:
        predictor_3d.max_voxels = medical_io.MAX_VOXELS
    assert "\n" not in str(error.value)
