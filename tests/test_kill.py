"""A real `kill -9` in the middle of a checkpoint save: the same command then
resumes from the checkpoint before it and ends with exactly the metrics of an
uninterrupted run (launch/kill_soak.sh does this at random moments, many times).
A workdir's lock: a second run on it fails in one line, and a kill -9 leaves
no stale lock. Ctrl-C pressed twice exits at once, keeping the last checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import pytest

from unet_jax import kill_soak, parallel, train
from unet_jax.errors import ConfigError
from unet_jax.run import make_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# unet_jax.main, with orbax's handler of the `state` item wrapped: on save number
# KILL_AT_SAVE it writes the TrainState's arrays into the checkpoint's temporary
# folder and then SIGKILLs its own process, before the iterator and history items
# are written and before orbax renames the folder to its step.
KILLED_MID_SAVE = """
import asyncio, os, runpy, signal, sys
import orbax.checkpoint as ocp

kill_at, saves = int(os.environ["KILL_AT_SAVE"]), 0
real_async_save = ocp.StandardCheckpointHandler.async_save


async def async_save(self, directory, *args, **kwargs):
    global saves
    commit_futures = await real_async_save(self, directory, *args, **kwargs)
    saves += 1
    if saves == kill_at:
        await asyncio.to_thread(lambda: [f.result() for f in commit_futures or []])
        print(f"KILLED MID-SAVE {saves}: the state's arrays are in {directory}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return commit_futures


ocp.StandardCheckpointHandler.async_save = async_save
runpy.run_module("unet_jax.main", run_name="__main__", alter_sys=True)
"""


def _flags(data_dir):
    """The demo's recipe, tiny: 4 train patients x 12 slices at batch 8 make 6 steps an epoch."""
    return ["--config=configs/demo.py", f"--config.data.data_dir={data_dir}", "--config.model.features=4",
            "--config.model.depth=2", "--config.batch_size=8", "--config.eval_batch_size=8",
            "--config.num_epochs=3", "--config.warmup_steps=2", "--config.log_every_steps=2",
            "--config.num_preview_images=2"]


def _read(path):
    with open(path, errors="replace") as f:
        return f.read()


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_then_resume_ends_with_the_same_metrics(prepared_dir, tmp_path):
    # The subprocesses share the session's compilation cache and its 4 simulated devices.
    env = kill_soak.subprocess_env(jax.config.jax_compilation_cache_dir)
    flags, timeout = _flags(prepared_dir), 300
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    log = str(tmp_path / "reference.log")
    assert kill_soak.run(kill_soak.main_command(flags, reference), log, env, timeout) == 0, kill_soak.tail(log)

    # Killed inside the second save (epoch 2, step 12): the first (step 6) is whole.
    log = str(tmp_path / "killed.log")
    argv = [sys.executable, "-c", KILLED_MID_SAVE, *kill_soak.main_command(flags, killed)[3:]]
    rc = kill_soak.run(argv, log, {**env, "KILL_AT_SAVE": "2"}, timeout)
    assert rc == -signal.SIGKILL, kill_soak.tail(log)
    assert "KILLED MID-SAVE 2" in _read(log)
    folder = kill_soak.checkpoint_folder(killed)
    left = sorted(kill_soak.tmp_checkpoints(killed))
    assert [name.split(".")[0] for name in left] == ["12"], os.listdir(folder)  # really mid-save
    assert any(item.startswith("state") for item in os.listdir(os.path.join(folder, left[0])))
    assert sorted(int(name) for name in os.listdir(folder) if name.isdigit()) == [6]
    assert [row.split(",")[0] for row in _read(os.path.join(killed, "metrics.csv")).splitlines()[1:]] == ["1"]
    assert not os.path.exists(os.path.join(killed, "test_metrics.json"))

    log = str(tmp_path / "resumed.log")
    assert kill_soak.run(kill_soak.main_command(flags, killed), log, env, timeout) == 0, kill_soak.tail(log)
    assert "Resumed at step 6 of 18 (epoch 2 of 3)." in _read(log)
    assert not kill_soak.tmp_checkpoints(killed)

    result = kill_soak.compare_runs(reference, killed)
    assert result.differences == [] and result.identical
    assert result.compared["metrics.csv"] == 3 * (len(_read(os.path.join(killed, "metrics.csv")).splitlines()[0]
                                                    .split(",")) - 1)  # 3 epochs, every column but seconds
    assert result.compared["test_metrics.json"] > 10


def test_compare_runs_names_the_metric_that_differs(tmp_path):
    def run(name, dice, loss, seconds):
        workdir = tmp_path / name
        workdir.mkdir()
        summary = {"best_epoch": 1, "data_dir": str(workdir / "data" / "prepared"),
                   "metrics": {"dice": dice, "hd95": None}, "patients": [{"patient": "P1", "dice_3d": dice}]}
        (workdir / "test_metrics.json").write_text(json.dumps(summary))
        (workdir / "metrics.csv").write_text(f"epoch,step,train_loss,val_dice,seconds\n1,6,{loss!r},nan,{seconds}\n")
        return str(workdir)

    a = run("a", 0.5, 0.25, 3.0)
    assert kill_soak.compare_runs(a, run("b", 0.5, 0.25, 9.5)).identical  # own data paths, seconds, NaN, null
    other = kill_soak.compare_runs(a, run("c", 0.5 + 1e-9, 0.25, 3.0))
    assert other.differences == ["test_metrics.json metrics.dice: A=0.5 B=0.500000001",
                                 "test_metrics.json patients[0].dice_3d: A=0.5 B=0.500000001"]
    close = kill_soak.compare_runs(a, run("d", 0.5, 0.25 + 1e-9, 3.0), atol=1e-6)
    assert close.differences == [] and not close.identical and 0 < close.max_abs_diff < 1e-6
    assert kill_soak.compare_runs(a, run("e", 0.5, 0.25 + 1e-9, 3.0)).differences == [
        "metrics.csv epoch 1 train_loss: A=0.25 B=0.250000001"]


def test_the_soak_reads_where_a_run_resumes_and_its_epochs_from_files(tmp_path):
    workdir = str(tmp_path)
    assert kill_soak.resume_step(workdir) is None and kill_soak.epochs_written(workdir) == set()
    for name in ("6", "12", "18.orbax-checkpoint-tmp-1"):  # two finished checkpoints, one being written
        os.makedirs(os.path.join(kill_soak.checkpoint_folder(workdir), name))
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,seconds\n1,6,0.5,1.0\n2,12,0.25,1.0\n")
    assert kill_soak.finished_checkpoints(workdir) == {6, 12} and kill_soak.resume_step(workdir) == 12
    assert kill_soak.tmp_checkpoints(workdir) == {"18.orbax-checkpoint-tmp-1"}
    assert kill_soak.epochs_written(workdir) == {1, 2}
    watcher = kill_soak.Watcher(str(tmp_path / "missing.log"), workdir)
    assert watcher.resumed == 12 and watcher.earlier == {6, 12}


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_fails_in_one_line_and_kill_9_frees_it(prepared_dir, tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from unet_jax.run import make_workdir
make_workdir({workdir!r})
print("locked", flush=True)
time.sleep(600)
"""], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        held = (f"{workdir}: another run (pid {holder.pid} on host {socket.gethostname()}) is using this workdir; "
                "wait for it or choose another --workdir")
        with pytest.raises(ConfigError) as raised:
            make_workdir(workdir)
        assert str(raised.value) == held
        done = subprocess.run([sys.executable, "-m", "unet_jax.main", *_flags(prepared_dir), f"--workdir={workdir}"],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                              timeout=300)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == f"error: {held}"
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    finally:
        holder.kill()  # SIGKILL: no chance to unlock, the kernel releases the lock
        holder.wait()
    assert make_workdir(workdir) == workdir


@pytest.mark.slow
def test_ctrl_c_twice_exits_at_once_keeping_the_last_checkpoint(prepared_dir, tmp_path):
    workdir = str(tmp_path / "run")
    # The driver presses Ctrl-C twice as it fetches batch 10 (0-based): step 11, inside epoch 2 of 6 steps.
    done = subprocess.run([os.path.join(ROOT, "launch", "cpu_devices.sh"), "4", sys.executable,
                           os.path.join(ROOT, "tests", "process_driver.py"), prepared_dir, workdir,
                           str(tmp_path / "record.json"), "--sigint_twice_at_batch=10"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT},
                          timeout=300)
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-3000:]
    assert done.stderr.count("Received SIGINT: saving a checkpoint and stopping.") == 1
    assert "second Ctrl-C: exiting without saving; the checkpoint of step 6 is kept" in done.stderr
    assert not os.path.exists(tmp_path / "record.json")  # train_and_evaluate never returned
    folder = os.path.join(workdir, "checkpoints")
    assert sorted(int(s) for s in os.listdir(folder) if s.isdigit()) == [6]


def test_a_hang_up_saves_and_stops_like_sigterm():
    # Closing the terminal or ssh session of a run sends SIGHUP, whose default ends the process without saving.
    unhandled = []

    def record(*args):
        unhandled.append(args)

    previous = signal.signal(signal.SIGHUP, record)
    try:
        with train.StopRequest(parallel.make_mesh()) as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            assert stop.signal == signal.SIGHUP and not unhandled
        assert signal.getsignal(signal.SIGHUP) is record  # restored on leaving
    finally:
        signal.signal(signal.SIGHUP, previous)
