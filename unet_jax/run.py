"""A run on disk: its workdir, its checkpoints, and a finished run opened again.

Training makes and locks the workdir (`make_workdir`), builds the model and
its state from the config (`build_model`, `initial_state`) and resumes from
the newest readable checkpoint (`resume`); evaluation and prediction open a
finished run with `Run.open`: the config and data manifest it trained on, a
checkpoint's TrainState on the device mesh (the best by default), and the
jitted eval and predict steps that take it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from unet_jax import checkpoint, parallel, steps, tasks
from unet_jax.builders import best_metric, input_shape, model_from_config
from unet_jax.config_checks import check_run_config
from unet_jax.data import pipeline
from unet_jax.errors import ConfigError, Damaged
from unet_jax.models.unet import UNet

TRAIN_MANIFEST = "train_manifest.json"  # the manifest of the data a run trained on, in its workdir


# --- the model and its steps ---------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> UNet:
    return model_from_config(config, dtype=jnp.bfloat16 if config.mixed_precision else jnp.float32)


def initial_state(config, model, mesh, image_shape, total_steps: int) -> steps.TrainState:
    """A fresh TrainState, replicated over the mesh."""
    tx = steps.make_optimizer(config.learning_rate, total_steps=total_steps,
                              warmup_steps=config.warmup_steps, schedule=config.lr_schedule,
                              weight_decay=config.weight_decay, clip_norm=config.clip_norm,
                              optimizer=config.get("optimizer", "adamw"), momentum=config.get("momentum", 0.99))
    init = jax.jit(functools.partial(steps.create_train_state, model, tx), out_shardings=parallel.replicated(mesh))
    args = (jax.random.PRNGKey(config.seed), jnp.zeros((1, *image_shape), jnp.float32))
    # It runs once: on a CPU, XLA's optimisation passes cost more than they save
    # (11 s against 5 s for the classic U-Net's initialisation).
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return init.lower(*args).compile(compiler_options=options)(*args)


def compile_eval_steps(config, task: tasks.Task, mesh):
    """The jitted eval and predict steps: state replicated, batch sharded on `data`."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    eval_step = jax.jit(functools.partial(steps.eval_step, loss_fn=task.loss(config.loss),
                                          metrics_fn=task.batch_metrics, predict_fn=task.predict),
                        in_shardings=(repl, data), out_shardings=(repl, data))
    predict_step = jax.jit(functools.partial(steps.predict_step, output_fn=task.window_output),
                           in_shardings=(repl, data), out_shardings=data)
    return eval_step, predict_step


# --- the workdir -----------------------------------------------------------------

# The workdirs this process locked, with their open .lock files: a lock lasts
# as long as its file is open, so for the rest of the process.
_workdir_locks: dict[str, Any] = {}


def make_workdir(workdir: str) -> str:
    """The workdir as an absolute path, with its figures/ folder, locked by
    process 0 so that two runs never write one workdir; ConfigError naming
    the folder when it cannot be written or another run holds it."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):  # an existing folder may still be read-only
            pass
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: cannot write there ({e.strerror}); choose a folder you can "
                          "write to") from None
    if jax.process_index() == 0 and workdir not in _workdir_locks:  # every process of a run shares the workdir
        _workdir_locks[workdir] = _lock_workdir(workdir)
    return workdir


def _lock_workdir(workdir: str):
    """`<workdir>/.lock`, open and under an exclusive flock that names its
    holder inside. The kernel drops the lock when the process ends, however
    it ends (kill -9 too), so a lock is never stale."""
    lock = open(os.path.join(workdir, ".lock"), "a+")  # not "w": that would erase the holder's name
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise ConfigError(f"{workdir}: another run ({holder or 'its process is starting'}) is using this workdir; "
                          "wait for it or choose another --workdir") from None
    except OSError as e:  # a filesystem without flock (some NFS and Lustre mounts)
        logging.warning("%s: cannot lock the workdir (%s); make sure that no other run uses it.", workdir, e.strerror)
        return lock
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
    lock.flush()
    return lock



# --- checkpoints -------------------------------------------------------------------

def restore(manager, step: int, template, data_iter=None):
    """`checkpoint.restore`, with a checkpoint of another model (another config,
    or module names of an older unet_jax) and a failing disk refused in one
    line; `Damaged` when the step's files cannot be decoded."""
    folder = os.path.join(str(manager.directory), str(step))
    try:
        return checkpoint.restore(manager, step, template, data_iter)
    except Exception as e:  # noqa: BLE001  (orbax, tensorstore and JSON each raise their own errors)
        if isinstance(e, ValueError) and "do not match" in str(e):  # orbax's words for a tree of another structure
            raise ConfigError(f"{manager.directory}: the checkpoint of step {step} holds another model than this "
                              "config builds (another config, or an older unet_jax); use a new --workdir") from None
        if (words := checkpoint.read_failure(e)) is not None:
            raise ConfigError(f"{folder}: cannot read the checkpoint ({words}); nothing was changed: fix the disk or "
                              "permissions, then run the same command") from None
        if checkpoint.is_damage(e):
            raise Damaged((str(e).strip().splitlines() or [type(e).__name__])[0][:200]) from e
        raise


def open_checkpoints(folder: str, metric: str, mode: str, training: bool = False):
    """`checkpoint.make_manager`, with a step's unreadable metadata (which orbax
    reads up front) refused in one line."""
    try:
        return checkpoint.make_manager(folder, best_metric=metric, best_mode=mode, training=training)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{folder}: a checkpoint's metadata is unreadable ({e}); move the damaged step folder "
                          "(the one named in the log above) away to use another") from None


def restore_needed(manager, step: int, template):
    """`restore` of the best step (or another chosen one), whose damage is a
    ConfigError: testing, evaluate and predict need that very checkpoint."""
    try:
        return restore(manager, step, template)
    except Damaged as e:
        which = "the best checkpoint" if step == manager.best_step() else f"the checkpoint of step {step}"
        raise ConfigError(f"{os.path.join(str(manager.directory), str(step))}: {which} is damaged ({e}); "
                          "testing, --mode=evaluate and predict need it: move that folder away to use the best of the "
                          "checkpoints left, or train again in a new --workdir") from None


# How each process fared restoring a step; all processes go on from the worst.
_RESTORED, _DAMAGED, _FAILED = 0, 1, 2


def _worst(outcome: int) -> int:
    """The worst outcome over all processes, so that they all resume from one step."""
    if jax.process_count() == 1:
        return outcome
    return int(multihost_utils.process_allgather(np.int32(outcome)).max())


def resume(manager, template, data_iter) -> tuple[Any, list[dict]]:
    """Restores the newest readable checkpoint, and the iterator in place.

    One whose files cannot be decoded (a kill during its write, a truncated or
    edited file) is named in one line, set aside as `<step>.damaged` for the
    user to inspect, and the one before it used, so a run never crashes on it
    or starts again from zero. A failing disk (EIO, EACCES, ...) is a
    ConfigError with nothing renamed: the checkpoint may well be whole. All
    processes resume from the same step. ConfigError when none can be read.
    """
    steps, damaged = sorted(manager.all_steps(), reverse=True), []
    for i, step in enumerate(steps):
        restored, problem = None, None
        try:
            restored = restore(manager, step, template, data_iter)
        except (Damaged, ConfigError) as e:
            problem = e
        outcome = _worst(_RESTORED if problem is None else _DAMAGED if isinstance(problem, Damaged)
                         else _FAILED)
        if outcome == _FAILED:
            if isinstance(problem, ConfigError):
                raise problem
            raise ConfigError(f"{manager.directory}: another process could not read the checkpoint of step {step} "
                              "(see its error); nothing was changed")
        if outcome == _DAMAGED:
            reason = str(problem) if problem is not None else "unreadable on another process"
            older = f"resuming from step {steps[i + 1]}" if i + 1 < len(steps) else "no older checkpoint is left"
            logging.warning("%s: the checkpoint of step %d is unreadable (%s); %s.", manager.directory, step, reason,
                            older)
            damaged.append(step)
            continue
        if damaged:  # training passes these steps again and saves them anew
            if jax.process_index() == 0:
                for bad in damaged:
                    logging.warning("Set the damaged checkpoint aside as %s.", checkpoint.set_aside(manager, bad))
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("damaged checkpoints set aside")
            manager.reload()
        return restored
    raise ConfigError(f"{manager.directory}: no checkpoint here can be read (see the warnings above); move the "
                      "folder away to train from the start")



# --- a finished run ------------------------------------------------------------------

def _tuples(value):
    """JSON lists back to the tuples a config holds (sizes, ranges)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def read_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """A run's config (config.json) and the manifest of the data it trained on,
    as the workdir keeps them; ConfigError in one line when they are absent,
    or the config is not one that unet_jax wrote."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not os.path.exists(os.path.join(workdir, TRAIN_MANIFEST)):
        raise ConfigError(f"{workdir}: no config.json and {TRAIN_MANIFEST}; point --workdir at the folder of a run "
                          "that unet_jax.main --mode=train wrote")
    try:
        with open(path) as f:
            values = json.load(f)
    except ValueError as e:  # not JSON, or not UTF-8
        raise ConfigError(f"{path}: not valid JSON ({str(e).splitlines()[0]}); restore it from the run's config "
                          "file") from None
    check_run_config(values, path)
    return ml_collections.ConfigDict(_tuples(values)), pipeline.read_manifest(workdir, TRAIN_MANIFEST)


def restore_best(config: ml_collections.ConfigDict, workdir: str, mesh, image_shape,
                 step: int | None = None) -> tuple[steps.TrainState, int | None]:
    """The best checkpoint's TrainState of a run, or with `step` that step's
    (built for inputs of `image_shape`, the training shape), replicated over
    `mesh`, and its epoch; ConfigError in one line when the workdir holds none."""
    task, (metric, mode) = tasks.get_task(config), best_metric(config)
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: no checkpoints; is {workdir} the --workdir of a run? Train first with "
                          "--mode=train")
    manager = open_checkpoints(folder, metric, mode)
    best = manager.best_step() if step is None else step
    if step is not None and step not in manager.all_steps():
        raise ConfigError(f"{folder}: no checkpoint of step {step}; choose one of "
                          f"{', '.join(map(str, manager.all_steps())) or 'none'}")
    if best is None:
        raise ConfigError(f"{folder}: no checkpoint with validation metrics (no epoch finished); train first with "
                          "--mode=train")
    template = initial_state(config, build_model(config), mesh, image_shape, 1)
    (state, _), history = restore_needed(manager, best, (template, task.empty_metrics()))
    return state, next((row["epoch"] for row in history if row["step"] == best), None)


class Run:
    """A finished run opened from its workdir: `config`, `manifest` (the data it
    trained on), `task`, `state` (a checkpoint's TrainState, replicated over
    `mesh`) and its `epoch`, and the jitted `eval_step` and `predict_step`."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, manifest: dict, mesh, state, epoch):
        self.workdir, self.config, self.manifest, self.mesh = workdir, config, manifest, mesh
        self.state, self.epoch = state, epoch
        self.task = tasks.get_task(config)
        self.eval_step, self.predict_step = compile_eval_steps(config, self.task, mesh)

    @classmethod
    def open(cls, workdir: str, mesh=None, *, config: ml_collections.ConfigDict | None = None,
             manifest: dict | None = None, step: int | None = None) -> Run:
        """The run in `workdir` on `mesh` (default: every device), from its best
        checkpoint or that of `step`. Its own config.json and manifest
        (`read_run`) unless `config` and `manifest` are given (evaluate takes
        the config of its command line); ConfigError in one line for a workdir
        that is not a finished run."""
        workdir = os.path.abspath(workdir)
        if config is None:
            config, manifest = read_run(workdir)
        mesh = parallel.make_mesh() if mesh is None else mesh
        state, epoch = restore_best(config, workdir, mesh, input_shape(config, manifest), step)
        return cls(workdir, config, manifest, mesh, state, epoch)
