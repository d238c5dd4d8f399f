"""Real multi-process runs: train_and_evaluate as 2 JAX processes x 2 CPU
devices (launch/local_processes.sh, gloo) against 1 process x 4 devices on
the same tiny phantoms: the same losses step by step, the same validation
metrics and best epoch, each process reading only its rows of every global
batch, only process 0 writing results; and a SIGTERM to one process stopping
both at the same step with one checkpoint, from which the run resumes with
the same batches."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import _tensorboard_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "process_driver.py")
STEPS = 18  # 3 epochs of 48 training slices in global batches of 8

pytestmark = pytest.mark.slow


def _launch(launcher, count, data_dir, workdir, *extra):
    """Runs the driver under a launcher script; returns (exit code, output, records by process)."""
    records = [f"{workdir}.process{i}.json" for i in range(count)]
    env = {**os.environ, "PYTHONPATH": ROOT, "DEVICES_PER_PROCESS": "2", "JAX_PLATFORMS": "cpu"}
    if launcher == "cpu_devices.sh":
        command = [os.path.join(ROOT, "launch", launcher), "4", sys.executable, DRIVER, data_dir, workdir, records[0],
                   *extra]
    else:
        command = [os.path.join(ROOT, "launch", launcher), str(count), "bash", "-c",
                   f'exec {sys.executable} {DRIVER} {data_dir} {workdir} {workdir}.process$JAX_PROCESS_ID.json '
                   + " ".join(extra)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    found = [json.load(open(r)) for r in records if os.path.exists(r)]
    return done.returncode, done.stdout + done.stderr, found


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(prepared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    out = {}
    for name, launcher, count in (("one", "cpu_devices.sh", 1), ("two", "local_processes.sh", 2)):
        code, log, records = _launch(launcher, count, prepared_dir, str(root / name))
        assert code == 0, log[-3000:]
        out[name] = (str(root / name), records)
    return out


def test_two_processes_train_like_one(runs):
    (one, [single]), (two, pair) = runs["one"], runs["two"]
    assert (single["processes"], single["devices"]) == (1, 4)
    assert [(r["process"], r["processes"], r["devices"]) for r in pair] == [(0, 2, 4), (1, 2, 4)]
    losses_one, losses_two = _tensorboard_scalars(one, "train_loss"), _tensorboard_scalars(two, "train_loss")
    assert sorted(losses_one) == sorted(losses_two) == list(range(1, STEPS + 1))
    # The same arithmetic up to the order of the all-reduce's sums (gloo vs in-process).
    np.testing.assert_allclose([losses_two[s] for s in range(1, STEPS + 1)],
                               [losses_one[s] for s in range(1, STEPS + 1)], rtol=1e-4)
    rows_one, rows_two = _rows(one), _rows(two)
    assert len(rows_one) == len(rows_two) == 3
    for a, b in zip(rows_one, rows_two):
        for key in a:
            if key != "seconds":
                np.testing.assert_allclose(float(b[key]), float(a[key]), err_msg=key, **_tolerance(key))
    test_one = json.load(open(os.path.join(one, "test_metrics.json")))
    test_two = json.load(open(os.path.join(two, "test_metrics.json")))
    assert test_one["best_epoch"] == test_two["best_epoch"]
    for key, value in test_one["metrics"].items():
        if value is not None:
            np.testing.assert_allclose(test_two["metrics"][key], value, err_msg=key, **_tolerance(key))


def _tolerance(key):
    """Losses agree to 1e-4; scores of thresholded predictions move where a
    pixel sits on the threshold (runs here: per-image Dice 3.5e-4 apart)."""
    return dict(rtol=1e-4, atol=1e-6) if "loss" in key else dict(rtol=1e-2, atol=1e-3)


def test_each_process_reads_only_its_rows_of_every_global_batch(runs):
    (_, [single]), (_, pair) = runs["one"], runs["two"]
    assert len(single["batches"]) == len(pair[0]["batches"]) == len(pair[1]["batches"]) == STEPS
    for step, whole in enumerate(single["batches"]):
        first, second = pair[0]["batches"][step], pair[1]["batches"][step]
        assert len(first) == len(second) == 4 and first + second == whole  # process order = mesh order


def test_only_process_0_writes_results_and_checkpoints_are_whole(runs):
    two, (first, second) = runs["two"]
    assert {"metrics.csv", "test_metrics.json", "config.json", "train_manifest.json",
            os.path.join("figures", "learning_curves.png")} <= set(first["renamed"])
    assert all(path.startswith("checkpoints" + os.sep) for path in second["renamed"]), second["renamed"]
    assert sum(name.startswith("events.out.tfevents") for name in os.listdir(two)) == 1
    folder = os.path.join(two, "checkpoints")
    for step in (s for s in os.listdir(folder) if s.isdigit()):
        assert sorted(os.listdir(os.path.join(folder, step, "data_iter"))) == [
            "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_run_resumes(runs, prepared_dir, tmp_path):
    two, uninterrupted = runs["two"]
    workdir = str(tmp_path / "stopped")
    code, log, records = _launch("local_processes.sh", 2, prepared_dir, workdir, "--sigterm_at_batch=8")
    assert code == 0, log[-3000:]
    assert "[1] " in log and "Received SIGTERM" in log and log.count("Received SIGTERM") == 1
    assert [r["stopped_early"] for r in records] == [True, True]
    # The signal reached process 1 before batch 9; both agreed on the step after.
    assert len(records[0]["batches"]) == len(records[1]["batches"]) == 10
    assert log.count("Stopped at step 10 with a checkpoint") == 2
    folder = os.path.join(workdir, "checkpoints")
    assert sorted(int(s) for s in os.listdir(folder) if s.isdigit()) == [6, 10]  # epoch 1's, and the stop's
    assert not [s for s in os.listdir(folder) if "tmp" in s]

    code, log, records = _launch("local_processes.sh", 2, prepared_dir, workdir)
    assert code == 0, log[-3000:]
    for resumed, full in zip(records, uninterrupted, strict=True):  # resumed at step 10, with the same batches
        assert resumed["batches"] == full["batches"][10:] and len(resumed["batches"]) == STEPS - 10
    for a, b in zip(_rows(two), _rows(workdir), strict=True):
        for key in a:
            if key != "seconds":
                np.testing.assert_allclose(float(b[key]), float(a[key]), rtol=1e-6, err_msg=key)
