"""A run on disk: resuming from the newest readable checkpoint, with a failing
disk, a damaged step and a save cut short (training a run and opening it
again is tested in test_train.py)."""

import errno
import os

import grain
import numpy as np
import pytest

from unet_jax import checkpoint, run
from unet_jax.config_checks import ConfigError


def _two_steps(folder, **manager_options):
    """A manager over checkpoints of steps 1 (the best) and 2 (the latest) of a tiny pytree."""
    manager = checkpoint.make_manager(str(folder), best_metric="val_dice", **manager_options)
    data_iter = iter(grain.MapDataset.range(8).to_iter_dataset())
    for step, dice in ((1, 0.5), (2, 0.4)):
        if step in manager.all_steps():  # a second call writes step 2 again
            continue
        checkpoint.save(manager, step, {"w": np.full(4, step, np.float32)}, data_iter, [{"step": step}],
                        {"val_dice": dice})
    return manager, data_iter


@pytest.mark.parametrize("error", [
    OSError(errno.EIO, os.strerror(errno.EIO)), PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
    ValueError("UNKNOWN: Error reading local file \"x/state/d/1f\": [OS error: Input/output error]")],
    ids=["eio", "eacces", "tensorstore_eio"])
def test_a_failing_disk_on_resume_is_one_line_and_changes_nothing(tmp_path, monkeypatch, error):
    """A read error of the disk says nothing about the checkpoint: the run
    stops in one line naming the step folder, with every checkpoint left."""
    manager, data_iter = _two_steps(tmp_path / "ckpt")
    before = sorted(os.listdir(tmp_path / "ckpt"))

    def failing(step, *args, **kwargs):
        raise error
    monkeypatch.setattr(manager, "restore", failing)
    with pytest.raises(ConfigError) as raised:
        run.resume(manager, {"w": np.zeros(4, np.float32)}, data_iter)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'ckpt' / '2'}: cannot read the checkpoint (") and "\n" not in message
    assert os.strerror(error.errno if isinstance(error, OSError) else errno.EIO) in message
    assert "fix the disk or permissions" in message
    assert sorted(os.listdir(tmp_path / "ckpt")) == before == ["1", "2"]


def test_a_damaged_step_is_set_aside_and_orbax_no_longer_counts_it(tmp_path):
    """A cut checkpoint is renamed <step>.damaged (then .damaged-2) for the
    user to inspect; orbax, now and in a new manager, does not take it for a step."""
    folder = tmp_path / "ckpt"
    for attempt, aside in ((1, "2.damaged"), (2, "2.damaged-2")):
        manager, data_iter = _two_steps(folder)
        for f in (folder / "2" / "data_iter").glob("*.json"):
            os.truncate(f, f.stat().st_size // 2)
        state, history = run.resume(manager, {"w": np.zeros(4, np.float32)}, data_iter)
        assert state["w"][0] == 1 and history == [{"step": 1}]
        assert (folder / aside / "data_iter").is_dir()
        assert manager.all_steps() == [1] and manager.latest_step() == 1
        assert checkpoint.make_manager(str(folder), best_metric="val_dice").all_steps() == [1]
    assert sorted(os.listdir(folder)) == ["1", "2.damaged", "2.damaged-2"]


def test_a_save_cut_short_leaves_no_temporary_folder_to_a_resumed_run(tmp_path):
    """orbax's temporary folder of a save killed midway is removed when
    training starts again (not by a reader such as evaluate), and the same
    step saves anew."""
    folder = tmp_path / "ckpt"
    manager, data_iter = _two_steps(folder)
    tmp = folder / "3.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    checkpoint.make_manager(str(folder), best_metric="val_dice").wait_until_finished()
    assert tmp.is_dir()
    manager = checkpoint.make_manager(str(folder), best_metric="val_dice", training=True)
    state, _ = run.resume(manager, {"w": np.zeros(4, np.float32)}, data_iter)
    checkpoint.save(manager, 3, state, data_iter, [], {"val_dice": 0.6})
    assert not tmp.exists() and manager.all_steps() == [3]
    assert sorted(os.listdir(folder)) == ["3"]
