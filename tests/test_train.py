"""train_and_evaluate end to end on tiny phantoms, on 4 simulated devices:
workdir contents, best-epoch choice, resume after an interruption, evaluate
mode, and the command line's one-line errors."""

import csv
import itertools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from run_configs import tiny_config, volume_config
from data_prep import lgg
from data_prep.phantoms import lesions
from data_prep.phantoms import lgg as lgg_phantoms
from unet_jax import checkpoint, evaluate, parallel, run, tasks, train
from unet_jax.config_checks import validate_config
from unet_jax.data import pipeline
from unet_jax.errors import ConfigError, DataError, Diverged, SaveError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "workdir")
    summary = train.train_and_evaluate(tiny_config(prepared_dir), workdir)
    return workdir, summary


@pytest.mark.slow
def test_workdir_holds_the_whole_run(trained):
    workdir, summary = trained
    files = set(os.listdir(workdir))
    assert {"config.json", "train_manifest.json", "checkpoints", "metrics.csv", "val_metrics.json",
            "postprocessing.json", "test_metrics.json", "figures"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert set(os.listdir(os.path.join(workdir, "figures"))) == {"learning_curves.png", "val_best_worst.png",
                                                                  "test_best_worst.png"}
    val = json.load(open(os.path.join(workdir, "val_metrics.json")))
    assert val["split"] == "val" and val["fold"] is None and val["best_epoch"] == summary["best_epoch"]
    assert [row["patient"] for row in val["patients"]] == [
        p["patient"] for p in json.load(open(os.path.join(workdir, "train_manifest.json")))["splits"]["val"]["patients"]]
    assert "validation: 1 cases" in json.load(open(os.path.join(workdir, "postprocessing.json")))["chosen_on"]
    for png in os.listdir(os.path.join(workdir, "figures")):
        with open(os.path.join(workdir, "figures", png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = _rows(workdir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [6, 12, 18]  # 48 train slices / batch 8
    for r in rows:
        for k in ("train_loss", "val_loss", "val_dice", "val_iou", "val_dice_3d", "val_dice_3d_lcc"):
            assert np.isfinite(float(r[k])), k
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learns
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["features"] == 4


@pytest.mark.slow
def test_best_epoch_is_chosen_by_the_validation_metric(trained):
    workdir, summary = trained
    rows = _rows(workdir)
    scores = [float(r["val_dice"]) for r in rows]  # the default: Dice over all validation voxels
    best = int(np.argmax(scores)) + 1
    saved = json.load(open(os.path.join(workdir, "test_metrics.json")))
    assert saved["best_epoch"] == summary["best_epoch"] == best
    assert saved["split"] == "test"
    assert len(saved["patients"]) == 1 and saved["patients"][0]["num_slices"] == 12
    for k in ("dice", "iou", "dice_per_image", "iou_per_image", "dice_3d", "dice_3d_lcc", "loss"):
        assert 0 <= saved["metrics"][k] <= 1 or k == "loss", k
    # Only the latest and the best checkpoints are kept.
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == sorted({18, 6 * best})


@pytest.mark.slow
@pytest.mark.parametrize("halt,epochs_done", [(8, [1]), (12, [1, 2])], ids=["mid_epoch", "epoch_end"])
def test_interrupted_run_resumes_with_the_same_batches_and_losses(trained, prepared_dir, tmp_path, halt,
                                                                  epochs_done, caplog):
    workdir, _ = trained
    config = tiny_config(prepared_dir)
    config.halt_after_steps = halt  # 8: inside epoch 2; 12: on epoch 2's last step (validated first)
    resumed = str(tmp_path / "resumed")
    assert train.train_and_evaluate(config, resumed) is None
    assert [int(r["epoch"]) for r in _rows(resumed)] == epochs_done
    config.halt_after_steps = 0
    with caplog.at_level(logging.INFO):
        train.train_and_evaluate(config, resumed)
    assert f"Resumed at step {halt} of 18 (epoch {halt // 6 + 1} of 3)." in caplog.text
    for a, b in zip(_rows(workdir), _rows(resumed), strict=True):
        for k in a:
            if k != "seconds":
                np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5, err_msg=k)


def test_stop_request_turns_sigterm_into_a_flag():
    with train.StopRequest(parallel.make_mesh()) as stop:
        assert not stop.agreed(None) and not np.asarray(stop.flags()).any()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM and stop.agreed(None) and np.asarray(stop.flags()).all()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _other_patients(tmp_path, name, *, num_patients, num_slices, size, seed, val_fraction, test_fraction):
    """Phantoms the run never saw, prepared under tmp_path/<name>_prepared."""
    phantoms = tmp_path / name
    lgg_phantoms.write_phantoms(phantoms, num_patients=num_patients, num_slices=num_slices, size=size, seed=seed,
                                progress=False)
    out = str(tmp_path / f"{name}_prepared")
    lgg.prepare(str(phantoms), out, val_fraction=val_fraction, test_fraction=test_fraction, progress=False,
                command="test")
    return out


@pytest.mark.slow
def test_evaluate_mode_on_another_prepared_folder(trained, prepared_dir, tmp_path):
    workdir, _ = trained
    other = _other_patients(tmp_path, "other", num_patients=3, num_slices=8, size=32, seed=5, val_fraction=0.34,
                            test_fraction=0.34)
    summary = evaluate.evaluate_workdir(tiny_config(prepared_dir), workdir, other, "test")
    out = json.load(open(os.path.join(workdir, "evaluate_other_prepared_test_metrics.json")))
    assert out["data_dir"] == other and out["metrics"] == summary["metrics"]
    assert out["best_epoch"] == json.load(open(os.path.join(workdir, "test_metrics.json")))["best_epoch"]
    assert sum(p["num_slices"] for p in out["patients"]) == 8
    assert os.path.exists(os.path.join(workdir, "figures", "evaluate_other_prepared_test_best_worst.png"))


def _main(*args):
    return subprocess.run([sys.executable, "-m", "unet_jax.main", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path, prepared_dir):
    def error_line(result):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr
        return errors[0]

    missing = _main("--config=configs/lgg.py", f"--workdir={tmp_path / 'w'}",
                    f"--config.data.data_dir={tmp_path / 'nodata'}")
    assert "no prepared data here; make it with python -m data_prep.lgg --data_dir=" in error_line(missing)
    typo = _main("--config=configs/lgg.py", f"--workdir={tmp_path / 'w'}", "--config.learnin_rate=0.1")
    assert error_line(typo) == ("error: --config has no key 'learnin_rate'; "
                                'Did you mean "learning_rate" instead of "learnin_rate"?')
    no_file = _main("--config=configs/nope.py", f"--workdir={tmp_path / 'w'}")
    assert "cannot load --config" in error_line(no_file) and "configs/nope.py" in error_line(no_file)
    (tmp_path / "a_file").write_text("")
    unwritable = _main("--config=configs/lgg.py", f"--workdir={tmp_path / 'a_file' / 'run'}",
                       f"--config.data.data_dir={prepared_dir}")
    assert error_line(unwritable).startswith(f"error: --workdir={tmp_path / 'a_file' / 'run'}: cannot write there")


def test_deep_supervision_weights_must_match_the_model(prepared_dir):
    config = tiny_config(prepared_dir)
    config.model.deep_supervision = 1
    manifest = pipeline.read_manifest(prepared_dir)
    with pytest.raises(ConfigError, match="deep_supervision_weights has 0 entries but model.deep_supervision=1"):
        validate_config(config, manifest, num_devices=4)
    config.deep_supervision_weights = (0.5,)
    validate_config(config, manifest, num_devices=4)
    assert len(train.compile_steps(config, tasks.get_task(config), parallel.make_mesh())) == 3


def test_unknown_best_metric_is_refused_before_training(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.best_metric = "val_dice3d"
    with pytest.raises(ConfigError, match="best_metric='val_dice3d' is not a segmentation metric; choose one of"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_eval_batch_size_must_split_over_the_devices(trained, prepared_dir):
    workdir, _ = trained
    config = tiny_config(prepared_dir)
    config.eval_batch_size = 6  # 4 simulated devices
    with pytest.raises(ConfigError, match="eval_batch_size=6 must be a positive multiple of the 4 devices"):
        evaluate.evaluate_workdir(config, workdir, prepared_dir, "test")


@pytest.mark.slow
def test_softmax_head_trains_and_scores_like_the_sigmoid_one(prepared_dir, tmp_path):
    """Two softmax classes on the binary phantoms: the same columns, per-patient
    Dice of the one foreground class, and the loss falls."""
    config = tiny_config(prepared_dir)
    config.model.out_channels = 2
    config.loss = "dice_ce"
    config.num_epochs = 2
    summary = train.train_and_evaluate(config, str(tmp_path / "softmax"))
    rows = _rows(str(tmp_path / "softmax"))
    assert list(rows[0]) == train.csv_columns(tasks.get_task(config))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert 0 <= summary["metrics"]["dice_3d"] <= 1
    assert "dice_3d_class1" not in summary["patients"][0]  # one foreground class: no per-class columns


@pytest.mark.slow
def test_regression_head_trains_on_the_mask_as_a_grey_level_target(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.task = "regression"
    config.loss = "l1"
    config.best_metric = "val_soft_jaccard"
    config.num_epochs = 2
    workdir = str(tmp_path / "regression")
    summary = train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    assert list(rows[0]) == train.csv_columns(tasks.get_task(config))
    assert "val_soft_jaccard" in rows[0] and "val_dice_3d" not in rows[0]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert set(summary["metrics"]) == {"loss", "mae", "rmse", "soft_jaccard", "soft_jaccard_per_image",
                                       "soft_jaccard_3d", "mae_3d", "rmse_3d", "psnr_3d", "ssim_3d"}
    assert set(os.listdir(os.path.join(workdir, "figures"))) == {"learning_curves.png", "val_predictions.png",
                                                                  "test_predictions.png"}
    assert not os.path.exists(os.path.join(workdir, "postprocessing.json"))  # segmentation only


def test_regression_rejects_a_segmentation_loss_and_metric(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.task = "regression"
    with pytest.raises(ConfigError, match="loss='dice_bce' is not a regression loss"):
        train.train_and_evaluate(config, str(tmp_path / "a"))
    config.loss = "l1"
    config.best_metric = "val_dice_3d"
    with pytest.raises(ConfigError, match="best_metric='val_dice_3d' is not a regression metric; choose one of"):
        train.train_and_evaluate(config, str(tmp_path / "b"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_3d_unet_trains_on_patient_volumes_and_scores_every_slice(volume_dir, tmp_path):
    config = tiny_config(volume_dir)
    config.model.kernel_size = ((3, 3, 1), (3, 3, 3), (3, 3, 3))
    config.model.pool_strides = ((2, 2, 1), (2, 2, 2))
    config.model.norm = "none"
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_epochs = 2
    workdir = str(tmp_path / "volumes")
    summary = train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    assert [int(r["step"]) for r in rows] == [2, 4]  # 4 patients x 2 blocks / batch 4
    # Padding slices are dropped: the test patient's 12 real slices, in order.
    assert summary["patients"][0]["num_slices"] == 12
    assert 0 <= summary["metrics"]["dice_3d"] <= 1


def _tensorboard_scalars(workdir, tag):
    """{step: value} of a scalar that clu's writer logged to the workdir's
    events; a step logged twice raises."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    values = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
    assert len({step for step, _ in values}) == len(values), f"{tag} logged twice at a step"
    return dict(values)


@pytest.mark.slow
def test_tensorboard_train_scalars_are_means_over_the_logging_window(trained):
    workdir, _ = trained
    logged = _tensorboard_scalars(workdir, "train_loss")
    assert sorted(logged) == list(range(2, 19, 2))  # log_every_steps=2, one value per step
    assert sorted(_tensorboard_scalars(workdir, "val_dice")) == [6, 12, 18]
    rows = _rows(workdir)
    # Windows of 2 steps tile each 6-step epoch: their mean is the epoch's mean loss.
    for row in rows:
        end = int(row["step"])
        windows = [logged[s] for s in range(end - 4, end + 1, 2)]
        np.testing.assert_allclose(np.mean(windows), float(row["train_loss"]), rtol=1e-5)


@pytest.mark.slow
def test_a_run_without_test_patients_trains_and_says_so(phantom_dir, tmp_path):
    data = str(tmp_path / "no_test")
    lgg.prepare(phantom_dir, data, val_fraction=1 / 6, test_fraction=0, seed=0, progress=False, command="t")
    config = tiny_config(data)
    config.num_epochs = 1
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(config, workdir)
    assert summary["best_epoch"] == 1 and summary["metrics"] == {} and "nothing was tested" in summary["note"]
    saved = json.load(open(os.path.join(workdir, "test_metrics.json")))
    assert saved["note"] == summary["note"] and len(_rows(workdir)) == 1
    assert sorted(os.listdir(os.path.join(workdir, "figures"))) == ["learning_curves.png", "val_best_worst.png"]


def test_an_unwritable_workdir_is_one_line(prepared_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"--workdir={blocker}/run: cannot write there"):
        train.train_and_evaluate(tiny_config(prepared_dir), str(blocker / "run"))


def test_the_demo_trains_on_a_data_dir_given_on_the_command_line(prepared_dir, tmp_path):
    from configs import demo
    from unet_jax import main

    config = demo.get_config()
    with config.unlocked():
        config.data.data_dir = prepared_dir
    assert main.demo_data(config, str(tmp_path)) == prepared_dir
    assert not (tmp_path / "data").exists()  # no phantoms were made


def test_the_demo_names_an_unknown_kind_of_phantoms_in_one_line(tmp_path):
    from unet_jax import phantoms

    with pytest.raises(ConfigError) as raised:
        phantoms.prepare(str(tmp_path), {"kind": "lungs", "seed": 0})
    assert str(raised.value) == "config.data.synthetic.kind='lungs': choose one of lgg, lesions_3d, chest_ct, pairs_2d"
    assert not os.listdir(tmp_path)  # refused before anything ran


def test_the_demo_kinds_are_those_data_prep_prepares():
    from data_prep import demo
    from unet_jax import phantoms

    assert tuple(demo.DEMOS) == phantoms.KINDS


@pytest.mark.slow
def test_evaluating_at_another_size_restores_from_the_training_shape(trained, prepared_dir, tmp_path):
    """The run trained on 32x32: a conv U-Net evaluates 64x64 data; a transformer
    bottleneck (position embeddings of one size) is refused in one line."""
    workdir, _ = trained
    large = _other_patients(tmp_path, "large", num_patients=2, num_slices=4, size=64, seed=3, val_fraction=0,
                            test_fraction=0.5)
    summary = evaluate.evaluate_workdir(tiny_config(prepared_dir), workdir, large, "test")
    assert summary["patients"][0]["num_slices"] == 4 and 0 <= summary["metrics"]["dice"] <= 1
    config = tiny_config(prepared_dir)
    config.model.bottleneck = "transformer"
    with pytest.raises(DataError, match="transformer's position embeddings fit one size only"):
        evaluate.evaluate_workdir(config, workdir, large, "test")


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused_in_one_line(trained, prepared_dir):
    workdir, _ = trained
    config = tiny_config(prepared_dir)
    config.model.attention = True  # gate_<level> modules the checkpoint does not have
    with pytest.raises(ConfigError, match="holds another model than this config builds"):
        evaluate.evaluate_workdir(config, workdir, prepared_dir, "test")


@pytest.mark.slow
def test_3d_patch_training_validates_whole_volumes_and_keeps_the_best_hd95(lesion_volume_dir, tmp_path):
    config = volume_config(lesion_volume_dir)
    config.best_metric = "val_hd95"  # any per-case metric can pick the best epoch; HD95 is lower-better
    workdir = str(tmp_path / "patches")
    summary = train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    assert [int(r["step"]) for r in rows] == [2, 4]  # 4 volumes x 4 patches / batch 8
    for key in ("val_hd95", "val_assd", "val_avd", "val_lesion_recall", "val_lesion_f1", "val_iou_3d"):
        assert key in rows[0], key
    hd95 = [float(r["val_hd95"]) for r in rows]
    assert summary["best_epoch"] == int(np.argmin(hd95)) + 1
    case = summary["patients"][0]
    assert case["num_slices"] > 0 and case["hd95"] >= 0 and 0 <= case["lesion_f1"] <= 1
    assert os.path.exists(os.path.join(workdir, "figures", "test_best_worst.png"))


def test_volumes_of_different_sizes_need_a_patch_size(lesion_volume_dir):
    config = volume_config(lesion_volume_dir)
    config.data.patch_size = None
    with pytest.raises(ConfigError, match="holds whole volumes of data_prep.volumes; set config.data.patch_size"):
        validate_config(config, pipeline.read_manifest(lesion_volume_dir), num_devices=4)
    config.data.patch_size = (16, 16)
    with pytest.raises(ConfigError, match=r"patch_size=\(16, 16\): give 3 positive sizes"):
        validate_config(config, pipeline.read_manifest(lesion_volume_dir), num_devices=4)


def test_whole_volumes_need_patches_and_a_metric_sliding_windows_compute(lesion_volume_dir):
    manifest = pipeline.read_manifest(lesion_volume_dir)
    config = volume_config(lesion_volume_dir)
    config.best_metric = "val_loss"
    with pytest.raises(ConfigError, match="computes no loss"):
        validate_config(config, manifest, num_devices=4)
    config.best_metric = None
    config.data.patch_size = None
    equal_sizes = {**manifest, "image_shape": [32, 32, 12, 2]}  # as with --no-crop on equal grids
    with pytest.raises(ConfigError, match="holds whole volumes of data_prep.volumes; set config.data.patch_size"):
        validate_config(config, equal_sizes, num_devices=4)


@pytest.mark.slow
def test_2d_unet_trains_on_axial_slices_of_the_volumes(tmp_path):
    from data_prep import volumes

    cases = tmp_path / "cases"
    lesions.write_lesion_phantoms(cases, num_cases=4, shape=(28, 30, 8), spacing=(1.0, 1.0, 3.0), seed=2,
                                  progress=False)
    data_dir = str(tmp_path / "slices")
    volumes.prepare(str(cases), data_dir, channels="FLAIR*,T1*", label="lesions*", slices="axial",
                    slice_size="32,32", val_fraction=0.25, test_fraction=0.25, progress=False, command="test")
    config = tiny_config(data_dir)
    config.data.normalization = "none"
    config.num_epochs = 1
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["patients"][0]["num_slices"] == len(
        pipeline.split_source(data_dir, "test"))  # every axial slice of the test case, reassembled
    assert 0 <= summary["metrics"]["dice_3d"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["array", "iterator"])
def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(prepared_dir, tmp_path, damage, caplog):
    """A latest checkpoint cut in half (its largest array file, or the data
    iterator's JSON) is named in one line, set aside as 8.damaged, and the run resumes from the
    epoch checkpoint before it and finishes; with nothing readable, one line."""
    config = tiny_config(prepared_dir)
    config.num_epochs, config.halt_after_steps = 2, 8  # epoch 1 ends at step 6; step 8 is mid-epoch 2
    workdir = str(tmp_path / "run")
    assert train.train_and_evaluate(config, workdir) is None
    folder = os.path.join(workdir, "checkpoints")
    assert sorted(int(s) for s in os.listdir(folder) if s.isdigit()) == [6, 8]
    files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(folder, "8")) for f in names]
    if damage == "array":  # every file of the saved TrainState cut in half
        victims = [f for f in files if os.sep + "state" + os.sep in f]
    else:
        victims = [f for f in files if "data_iter" in f and f.endswith(".json")]
    assert victims
    for victim in victims:
        os.truncate(victim, os.path.getsize(victim) // 2)
    config.halt_after_steps = 0
    with caplog.at_level(logging.INFO):
        summary = train.train_and_evaluate(config, workdir)
    warnings = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "the checkpoint of step 8 is unreadable" in warnings[0]
    assert warnings[0].endswith("; resuming from step 6.") and "\n" not in warnings[0]
    assert "Resumed at step 6 of 12" in caplog.text
    assert os.path.isdir(os.path.join(folder, "8.damaged"))
    assert summary is not None and [int(r["epoch"]) for r in _rows(workdir)] == [1, 2]
    for step in os.listdir(folder):  # every array file cut: nothing left to resume from
        if step.isdigit():
            for root, _, names in os.walk(os.path.join(folder, step, "state")):
                for name in names:
                    os.truncate(os.path.join(root, name), 0)
    config.num_epochs, config.allow_changed_config = 3, True
    with pytest.raises(ConfigError, match="no checkpoint here can be read"):
        train.train_and_evaluate(config, workdir)
    for step in os.listdir(folder):  # every file cut, the metrics orbax reads up front too: one line as well
        if step.isdigit():
            for root, _, names in os.walk(os.path.join(folder, step)):
                for name in names:
                    os.truncate(os.path.join(root, name), 0)
    with pytest.raises(ConfigError, match="a checkpoint's metadata is unreadable"):
        train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_resuming_with_a_changed_config_is_refused_unless_allowed(prepared_dir, tmp_path, caplog):
    """A longer num_epochs changes the schedule of a half-done run: refused in
    one line listing it, config.json left; allowed, a warning and the new
    config.json. Where the run stops (halt_after_steps) is no change."""
    config = tiny_config(prepared_dir)
    config.num_epochs, config.halt_after_steps = 2, 2
    workdir = str(tmp_path / "run")
    assert train.train_and_evaluate(config, workdir) is None
    config.num_epochs, config.halt_after_steps = 3, 4
    with pytest.raises(ConfigError) as raised:
        train.train_and_evaluate(config, workdir)
    assert "(num_epochs: 2 -> 3)" in str(raised.value) and "--config.allow_changed_config=True" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 2
    config.allow_changed_config = True
    with caplog.at_level(logging.WARNING):
        assert train.train_and_evaluate(config, workdir) is None
    assert "resuming with a changed config (num_epochs: 2 -> 3)" in caplog.text
    assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 3


@pytest.fixture
def damaged_copy(trained, tmp_path):
    """A copy of the trained run, to damage."""
    workdir = str(tmp_path / "copy")
    shutil.copytree(trained[0], workdir, ignore=shutil.ignore_patterns(".lock"))
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("damage,message", [
    ("{}", "config.json: no key batch_size"),
    ('{"learning_rate": 0.1, "epochs": 3', "config.json: not valid JSON"),
    (None, "no config.json and train_manifest.json"),
], ids=["empty_object", "not_json", "missing"])
def test_predict_on_a_workdir_without_a_good_config_is_one_line(damaged_copy, prepared_dir, tmp_path, damage, message):
    path = os.path.join(damaged_copy, "config.json")
    if damage is None:
        os.remove(path)
    else:
        with open(path, "w") as f:
            f.write(damage)
    with pytest.raises(ConfigError, match=message):
        run.read_run(damaged_copy)
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "unet_jax.main", "--mode=predict", f"--workdir={damaged_copy}",
                             f"--input={scan}", f"--output={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr


@pytest.mark.slow
def test_a_cut_best_checkpoint_is_one_line_for_evaluate(damaged_copy):
    folder = os.path.join(damaged_copy, "checkpoints")
    config, manifest = run.read_run(damaged_copy)
    best = checkpoint.make_manager(folder, best_metric="val_dice").best_step()
    for root, _, names in os.walk(os.path.join(folder, str(best), "state")):
        for name in names:
            os.truncate(os.path.join(root, name), os.path.getsize(os.path.join(root, name)) // 2)
    with pytest.raises(ConfigError) as raised:
        run.restore_best(config, damaged_copy, parallel.make_mesh(), train.input_shape(config, manifest))
    assert str(raised.value).startswith(f"{os.path.join(folder, str(best))}: the best checkpoint is damaged (")
    assert "\n" not in str(raised.value) and "--mode=evaluate and predict need it" in str(raised.value)
    assert os.path.isdir(os.path.join(folder, str(best)))  # a reader sets nothing aside
    for root, _, names in os.walk(folder):  # every file cut, the metadata orbax reads up front too
        for name in names:
            os.truncate(os.path.join(root, name), 0)
    with pytest.raises(ConfigError, match="a checkpoint's metadata is unreadable"):
        run.restore_best(config, damaged_copy, parallel.make_mesh(), train.input_shape(config, manifest))


@pytest.mark.slow
def test_run_open_gives_the_best_or_a_chosen_checkpoint_and_its_steps(trained):
    workdir, summary = trained
    opened = run.Run.open(workdir)
    assert opened.workdir == workdir and opened.epoch == summary["best_epoch"]
    assert opened.config.to_dict() == run.read_run(workdir)[0].to_dict()
    assert opened.manifest == json.load(open(os.path.join(workdir, "train_manifest.json")))
    assert opened.task == tasks.get_task(opened.config)
    best, _ = run.restore_best(opened.config, workdir, opened.mesh, (32, 32, 3))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(opened.state.params), jax.tree.leaves(best.params)))
    outputs = opened.predict_step(opened.state, np.zeros((4, 32, 32, 3), np.float32))
    assert outputs.shape == (4, 32, 32, 1) and np.isfinite(np.asarray(outputs)).all()
    first = min(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
    chosen = run.Run.open(workdir, opened.mesh, step=first)
    assert chosen.epoch == next(int(r["epoch"]) for r in _rows(workdir) if int(r["step"]) == first)
    with pytest.raises(ConfigError, match=r"checkpoints: no checkpoint of step 999; choose one of "):
        run.Run.open(workdir, opened.mesh, step=999)


def _poisoned(steps_to_poison):
    """compile_steps whose train step gets all-NaN images at these (0-based) steps."""
    real = train.compile_steps

    def compile_steps(config, task, mesh):
        train_step, *others = real(config, task, mesh)
        calls = itertools.count()

        def poisoned(state, batch, stop):
            if next(calls) in steps_to_poison:
                batch = {**batch, "image": batch["image"] * np.nan}
            return train_step(state, batch, stop)

        return poisoned, *others
    return compile_steps


@pytest.mark.slow
def test_nan_batches_are_skipped_and_too_many_in_a_row_stop_with_one_line(prepared_dir, tmp_path, monkeypatch,
                                                                          caplog):
    config = tiny_config(prepared_dir)
    config.num_epochs, config.max_nonfinite_steps = 2, 3
    monkeypatch.setattr(train, "compile_steps", _poisoned({2}))
    with caplog.at_level(logging.WARNING):
        summary = train.train_and_evaluate(config, str(tmp_path / "one"))
    assert summary is not None and np.isfinite(summary["metrics"]["loss"])
    assert "step 4: 1 step(s) skipped since the last report" in caplog.text  # logged every 2 steps
    assert all(np.isfinite(float(r["train_loss"])) for r in _rows(str(tmp_path / "one")))

    # From step 8 (mid-epoch 2) every batch is bad: the run stops at the third in a row.
    monkeypatch.setattr(train, "compile_steps", _poisoned(set(range(7, 12))))
    workdir = str(tmp_path / "many")
    with pytest.raises(Diverged) as stopped:
        train.train_and_evaluate(config, workdir)
    assert str(stopped.value).startswith("steps 8-10: the loss or gradients were not finite (NaN or inf) for 3 ")
    assert "the checkpoint of step 6 holds" in str(stopped.value) and "learning_rate=0.003" in str(stopped.value)
    assert "\n" not in str(stopped.value)
    folder = os.path.join(workdir, "checkpoints")
    assert sorted(int(s) for s in os.listdir(folder) if s.isdigit()) == [6]  # nothing saved after the NaNs
    config.max_nonfinite_steps = 10
    state = run.initial_state(config, run.build_model(config), parallel.make_mesh(), (32, 32, 3), 1)
    manager = train.checkpoint.make_manager(folder, best_metric="val_dice")
    (restored, _), _ = run.restore(manager, 6, (state, tasks.get_task(config).empty_metrics()))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_the_checkpoints_before(prepared_dir, tmp_path, monkeypatch):
    config = tiny_config(prepared_dir)
    config.num_epochs = 2
    workdir = str(tmp_path / "run")
    real = train.checkpoint.shutil.disk_usage
    saves = []

    def usage(path):  # room for the first checkpoint only
        saves.append(path)
        return real(path)._replace(free=real(path).free if len(saves) == 1 else 1000)

    monkeypatch.setattr(train.checkpoint.shutil, "disk_usage", usage)
    with pytest.raises(SaveError) as full:
        train.train_and_evaluate(config, workdir)
    assert str(full.value).startswith(f"{workdir}/checkpoints: cannot write the checkpoint of step 12: it needs "
                                      "about ")
    assert str(full.value).endswith("MiB free; free space, then run the same command to resume from step 6")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]
    assert [int(r["epoch"]) for r in _rows(workdir)] == [1]

    # What orbax raises when the disk fills during the write: the partial step goes too.
    monkeypatch.setattr(train.checkpoint.shutil, "disk_usage", real)
    manager = train.checkpoint.make_manager(os.path.join(workdir, "checkpoints"), best_metric="val_dice")

    def fill(step, **kwargs):
        os.makedirs(os.path.join(workdir, "checkpoints", f"{step}.orbax-checkpoint-tmp", "state"))
        raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x": No space left on device '
                         "[os_error_code='28']")

    monkeypatch.setattr(manager, "save", fill)
    with pytest.raises(SaveError, match=r"step 12 \(No space left on device\); free space"):
        train.checkpoint.save(manager, 12, {"x": np.zeros(3)}, None, [])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]


@pytest.mark.slow
def test_augmentation_on_the_devices_trains_and_the_host_only_reads(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.num_epochs, config.data.augment_on = 1, "device"
    config.data.augment.update(rotate_prob=1.0, gamma_prob=0.5)
    mesh = parallel.make_mesh()
    host = next(train.train_iterator(config, mesh))
    plain = next(pipeline.make_iterator(pipeline.train_dataset(prepared_dir, batch_size=8, seed=config.seed,
                                                               augment_options=None)))
    np.testing.assert_array_equal(host["image"], plain["image"])  # not augmented on the host
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary is not None and np.isfinite(summary["metrics"]["loss"])
    config.data.pathology.update(prob=0.5, shapes=("disc", "blob"))
    with pytest.raises(ConfigError, match="blob lesions are drawn on the host only"):
        validate_config(config, pipeline.read_manifest(prepared_dir), num_devices=4)
