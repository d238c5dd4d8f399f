"""train_and_evaluate end to end on tiny phantoms, on 4 simulated devices:
workdir contents, best-epoch choice, resume after an interruption, evaluate
mode, and the command line's one-line errors."""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from data_prep import lgg, synthetic
from unet_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(prepared_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run") / "workdir")
    summary = train.train_and_evaluate(tiny_config(prepared_dir), workdir)
    return workdir, summary


def test_workdir_holds_the_whole_run(trained):
    workdir, summary = trained
    files = set(os.listdir(workdir))
    assert {"config.json", "checkpoints", "metrics.csv", "test_metrics.json", "figures"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert set(os.listdir(os.path.join(workdir, "figures"))) == {"learning_curves.png", "test_best_worst.png"}
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


def test_best_epoch_is_chosen_by_the_validation_metric(trained):
    workdir, summary = trained
    rows = _rows(workdir)
    scores = [float(r["val_dice_3d"]) for r in rows]
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


@pytest.mark.parametrize("halt,epochs_done", [(8, [1]), (12, [1, 2])], ids=["mid_epoch", "epoch_end"])
def test_interrupted_run_resumes_with_the_same_batches_and_losses(trained, prepared_dir, tmp_path, halt,
                                                                  epochs_done):
    workdir, _ = trained
    config = tiny_config(prepared_dir)
    config.halt_after_steps = halt  # 8: inside epoch 2; 12: on epoch 2's last step (validated first)
    resumed = str(tmp_path / "resumed")
    assert train.train_and_evaluate(config, resumed) is None
    assert [int(r["epoch"]) for r in _rows(resumed)] == epochs_done
    config.halt_after_steps = 0
    train.train_and_evaluate(config, resumed)
    for a, b in zip(_rows(workdir), _rows(resumed), strict=True):
        for k in a:
            if k != "seconds":
                np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-5, err_msg=k)


def test_stop_request_turns_sigterm_into_a_flag():
    with train.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_evaluate_mode_on_another_prepared_folder(trained, prepared_dir, tmp_path):
    workdir, _ = trained
    phantoms = tmp_path / "other"
    synthetic.write_phantoms(phantoms, num_patients=3, num_slices=8, size=32, seed=5, progress=False)
    other = str(tmp_path / "other_prepared")
    lgg.prepare(str(phantoms), other, val_fraction=0.34, test_fraction=0.34, progress=False, command="test")
    summary = train.evaluate_workdir(tiny_config(prepared_dir), workdir, other, "test")
    out = json.load(open(os.path.join(workdir, "evaluate_other_prepared_test_metrics.json")))
    assert out["data_dir"] == other and out["metrics"] == summary["metrics"]
    assert out["best_epoch"] == json.load(open(os.path.join(workdir, "test_metrics.json")))["best_epoch"]
    assert sum(p["num_slices"] for p in out["patients"]) == 8
    assert os.path.exists(os.path.join(workdir, "figures", "evaluate_other_prepared_test_best_worst.png"))


def _main(*args):
    return subprocess.run([sys.executable, "-m", "unet_jax.main", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_errors_are_one_line(tmp_path):
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


def test_deep_supervision_weights_must_match_the_model(prepared_dir):
    from unet_jax import parallel

    config = tiny_config(prepared_dir)
    config.model.deep_supervision = 1
    with pytest.raises(ValueError, match="deep_supervision_weights has 0 entries but model.deep_supervision=1"):
        train.compile_steps(config, parallel.make_mesh())
    config.deep_supervision_weights = (0.5,)
    assert len(train.compile_steps(config, parallel.make_mesh())) == 2


def test_unknown_best_metric_is_refused_before_training(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.best_metric = "val_dice3d"
    with pytest.raises(ValueError, match="best_metric='val_dice3d': choose one of"):
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_eval_batch_size_must_split_over_the_devices(trained, prepared_dir):
    workdir, _ = trained
    config = tiny_config(prepared_dir)
    config.eval_batch_size = 6  # 4 simulated devices
    with pytest.raises(ValueError, match="eval_batch_size=6 must be a multiple of the 4 devices"):
        train.evaluate_workdir(config, workdir, prepared_dir, "test")


def test_softmax_head_trains_and_scores_like_the_sigmoid_one(prepared_dir, tmp_path):
    """Two softmax classes on the binary phantoms: the same columns, per-patient
    Dice of the one foreground class, and the loss falls."""
    config = tiny_config(prepared_dir)
    config.model.out_channels = 2
    config.loss = "dice_ce"
    config.num_epochs = 2
    summary = train.train_and_evaluate(config, str(tmp_path / "softmax"))
    rows = _rows(str(tmp_path / "softmax"))
    assert list(rows[0]) == train.csv_columns("segmentation")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert 0 <= summary["metrics"]["dice_3d"] <= 1
    assert "dice_3d_class1" not in summary["patients"][0]  # one foreground class: no per-class columns


def test_regression_head_trains_on_the_mask_as_a_grey_level_target(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.task = "regression"
    config.loss = "l1"
    config.best_metric = "val_soft_jaccard"
    config.num_epochs = 2
    workdir = str(tmp_path / "regression")
    summary = train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    assert list(rows[0]) == train.csv_columns("regression")
    assert "val_soft_jaccard" in rows[0] and "val_dice_3d" not in rows[0]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert set(summary["metrics"]) == {"loss", "mae", "rmse", "soft_jaccard", "soft_jaccard_per_image"}
    assert set(os.listdir(os.path.join(workdir, "figures"))) == {"learning_curves.png", "test_predictions.png"}


def test_regression_rejects_a_segmentation_loss_and_metric(prepared_dir, tmp_path):
    config = tiny_config(prepared_dir)
    config.task = "regression"
    with pytest.raises(ValueError, match="best_metric='val_dice_3d': choose one of"):
        train.train_and_evaluate(config, str(tmp_path / "a"))
    config.best_metric = "val_mae"
    config.best_mode = "min"
    with pytest.raises(ValueError, match="loss='dice_bce' is not a regression loss"):
        train.train_and_evaluate(config, str(tmp_path / "b"))


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
