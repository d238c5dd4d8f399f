"""train_and_evaluate: train a U-Net on prepared data, validate every epoch, keep
the best epoch, and test it on held-out patients.

A workdir is a run: config.json, train_manifest.json (the data it trained
on), checkpoints/, TensorBoard events, metrics.csv, val_metrics.json and
test_metrics.json (the best epoch per case), postprocessing.json (whether
keeping each class's largest component helped on validation), and figures/
all live there, and starting again with the same workdir resumes where it
stopped.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import json
import os
import signal
import socket
import tempfile
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from unet_jax import auto_config, checkpoint, evaluate, parallel, postprocessing, report, steps, tasks
from unet_jax.builders import (best_metric, device_augment, input_shape, model_from_config, pathology_options,
                               patch_options, window_options)
from unet_jax.config_checks import check_run_config, config_changes, flat_config, validate_config
from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.errors import ConfigError, Damaged, DataError, Diverged
from unet_jax.files import atomic_write, write_json
from unet_jax.models.unet import UNet

TRAIN_MANIFEST = "train_manifest.json"  # the manifest of the data a run trained on, in its workdir


# --- setup -----------------------------------------------------------------

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


def _train_step_and_stop(state, batch, stop, **kwargs):
    """`steps.train_step`, and whether any process asked to stop (`stop`: a
    flag per device). In one program with the step: run as a program of its
    own, its collective could overlap the step's on a CPU and pair up
    differently in each process, which hung multi-process runs over gloo."""
    state, metrics = steps.train_step(state, batch, **kwargs)
    return state, metrics, jnp.any(stop)


def compile_steps(config, task: tasks.Task, mesh):
    """The jitted train, eval and predict steps: state replicated, batch sharded
    on `data`; the train step takes and agrees a stop flag too (`StopRequest`)."""
    loss_fn = task.loss(config.loss)
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_step = jax.jit(
        functools.partial(_train_step_and_stop, loss_fn=loss_fn, metrics_fn=task.batch_metrics,
                          grad_accum_steps=config.grad_accum_steps,
                          aux_weights=tuple(config.deep_supervision_weights),
                          augment_fn=device_augment(config, task)),
        in_shardings=(repl, data, data), out_shardings=(repl, repl, repl), donate_argnums=0)
    eval_step = jax.jit(functools.partial(steps.eval_step, loss_fn=loss_fn, metrics_fn=task.batch_metrics,
                                          predict_fn=task.predict),
                        in_shardings=(repl, data), out_shardings=(repl, data))
    predict_step = jax.jit(functools.partial(steps.predict_step, output_fn=task.window_output),
                           in_shardings=(repl, data), out_shardings=data)
    return train_step, eval_step, predict_step


def make_evaluator(config, task, compiled, mesh, data_dir: str, split: str, fold: int | None = None):
    """An `Evaluator` of the records, or with patch training a `VolumeEvaluator`
    of whole volumes by sliding window, of `split` (of cross-validation fold
    `fold`'s cases, if given); `compiled` is `compile_steps`' result."""
    _, eval_step, predict_step = compiled
    window = window_options(config)
    pathology = pathology_options(config, evaluation=True)
    if window is None:
        return evaluate.Evaluator(task, eval_step, data_dir, split, batch_size=config.eval_batch_size,
                                  normalization=config.data.normalization, mesh=mesh, pathology=pathology,
                                  seed=config.seed, fold=fold)
    return evaluate.VolumeEvaluator(task, predict_step, data_dir, split, batch_size=config.eval_batch_size,
                                    normalization=config.data.normalization, mesh=mesh, window=window,
                                    pathology=pathology, seed=config.seed, fold=fold)


def train_iterator(config, mesh) -> grain.DatasetIterator:
    """This process's share of the shuffled training batches, augmented unless
    augmentation runs on the devices (`config.data.augment_on`)."""
    on_host = config.data.augment_on == "host"
    augment = AugmentOptions(**config.data.augment) if config.data.augment and on_host else None
    ds = pipeline.train_dataset(config.data.data_dir,
                                batch_size=parallel.check_batch_size(config.batch_size, mesh.size,
                                                                     config.grad_accum_steps),
                                seed=config.seed, normalization=config.data.normalization,
                                augment_options=augment, patches=patch_options(config),
                                pathology=pathology_options(config) if on_host else None,
                                fold=config.data.get("fold"), shard_index=jax.process_index(),
                                shard_count=jax.process_count())
    return pipeline.make_iterator(ds, pipeline.LoaderOptions(
        num_workers=config.data.num_workers, prefetch_buffer_size=config.data.prefetch_buffer_size))


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


class StopRequest:
    """Turns SIGTERM, a hang-up (SIGHUP: the terminal or ssh session closed)
    and Ctrl-C into a flag that the loop checks after each step, so the run
    saves a checkpoint before it exits; with several processes, a signal to
    any one of them stops them all at the same step. A second Ctrl-C exits
    at once without saving, naming the newest checkpoint in `checkpoints`
    (the folder), which a resume starts from."""

    def __init__(self, mesh, checkpoints: str | None = None):
        self.signal: int | None = None
        self._checkpoints, self._pending, self._previous = checkpoints, None, {}
        # Both possible inputs made once: building one every step would put a transfer on the hot path.
        self._flags = {flag: parallel.device_flags(flag, mesh) for flag in (False, True)}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal is not None:
            newest = self._newest_checkpoint()
            kept = "no checkpoint was written yet" if newest is None else f"the checkpoint of step {newest} is kept"
            logging.warning("second Ctrl-C: exiting without saving; %s", kept)
            os._exit(128 + signal.SIGINT)  # the shell's code for a Ctrl-C; no cleanup that could wait on the devices
        logging.warning("Received %s: saving a checkpoint and stopping.", signal.Signals(signum).name)
        self.signal = signum

    def _newest_checkpoint(self) -> int | None:
        """The newest step in the checkpoint folder. Listed rather than asked of
        orbax, which may hold a lock in the save this signal interrupted; a step's
        folder gets its number only once it is written whole."""
        if not self._checkpoints or not os.path.isdir(self._checkpoints):
            return None
        return max((int(name) for name in os.listdir(self._checkpoints) if name.isdigit()), default=None)

    def flags(self) -> jax.Array:
        """This process's flag, per device, for the train step to agree on."""
        return self._flags[self.signal is not None]

    def agreed(self, any_stop: jax.Array) -> bool:
        """Whether to stop after this step, given the step's `any_stop`. One
        process: whether it got a signal. Several: whether any had got one by
        the step before (that step's `any_stop`), so every process stops at the
        same step and the host waits only for the step before."""
        if jax.process_count() == 1:
            return self.signal is not None
        previous, self._pending = self._pending, any_stop
        return previous is not None and bool(previous)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_finite(state: steps.TrainState, step: int, reported: int, config, manager) -> int:
    """Says in one line when steps were skipped for a non-finite loss or
    gradient since `reported` (the count said before; returns the new one),
    and raises `Diverged` once `config.max_nonfinite_steps` came in a row.
    Reading the counters waits for the step, so the loop calls this only
    where it waits anyway (logging, epoch ends)."""
    skipped, in_a_row = int(state.skipped), int(state.skipped_in_a_row)
    if in_a_row >= config.max_nonfinite_steps:
        latest = manager.latest_step()
        raise Diverged(
            f"steps {step - in_a_row + 1}-{step}: the loss or gradients were not finite (NaN or inf) for {in_a_row} "
            f"steps in a row, so they were skipped and the run stopped; "
            + (f"the checkpoint of step {latest} holds the last good parameters. " if latest is not None else
               "no checkpoint was written. ")
            + f"Likely causes: learning_rate={config.learning_rate:g} too high (lower it), or NaN/inf in the input "
            f"(check the prepared data)")
    if skipped > reported:
        logging.warning("step %d: %d step(s) skipped since the last report because the loss or gradients were not "
                        "finite (%d in all); a NaN or inf in the input, or too high a learning rate?", step,
                        skipped - reported, skipped)
    return skipped


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


def _restore_best(manager, best: int, template):
    """`restore` of the best step, whose damage is a ConfigError: testing,
    evaluate and predict need that very checkpoint."""
    try:
        return restore(manager, best, template)
    except Damaged as e:
        raise ConfigError(f"{os.path.join(str(manager.directory), str(best))}: the best checkpoint is damaged ({e}); "
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


def csv_columns(task: tasks.Task) -> list[str]:
    """metrics.csv's columns, derived from what the task computes."""
    train = [f"train_{n}" for n in task.collection.__annotations__]
    return ["epoch", "step", *train, *(f"val_{n}" for n in task.metric_names()), "seconds"]


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    """Rows with exactly these columns (a missing or extra key raises)."""
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in values.items()}


def epoch_row(epoch: int, step: int, train: dict, val: dict, seconds: float) -> dict:
    return {"epoch": epoch, "step": step, **scalars("train", train), **scalars("val", val),
            "seconds": round(seconds, 2)}


def log_epoch(writer, workdir: str, task: tasks.Task, history: list[dict], val: evaluate.Evaluation,
              config) -> None:
    """The last epoch's row to the log and metrics.csv, and its validation
    scores and a picture of its predictions to TensorBoard (which has the
    training scores per logging window already)."""
    row = history[-1]
    values = {key: value for key, value in row.items() if key.startswith(("train_", "val_"))}
    writer.write_scalars(row["step"], {key: value for key, value in row.items() if key.startswith("val_")}
                         | {"epoch_seconds": row["seconds"]})
    if config.num_preview_images:
        writer.write_images(row["step"], {"val_predictions": task.preview(val.volumes, val.images,
                                                                          config.num_preview_images)})
    logging.info("epoch %d/%d: %s", row["epoch"], config.num_epochs,
                 ", ".join(f"{key}={value:.4f}" for key, value in values.items()))
    if jax.process_index() == 0:
        write_csv(os.path.join(workdir, "metrics.csv"), history, csv_columns(task))


def log_epoch_time(writer, step: int, training: float, input_wait: float, validation: float) -> None:
    """Where an epoch's time went, to the log and TensorBoard: the training
    steps (of which the host waited `input_wait` seconds for batches, the
    input pipeline's share) and validation."""
    logging.info("epoch time: %.1f s training steps (%.1f s of it waiting for input batches), %.1f s validation",
                 training, input_wait, validation)
    writer.write_scalars(step, {"time/train_seconds": training, "time/input_wait_seconds": input_wait,
                                "time/validation_seconds": validation})


def test(task, state, workdir: str, name: str, best_epoch: int | None, evaluator: evaluate.Evaluator | None,
         fold: int | None = None) -> dict:
    """Evaluates `state` and writes `<name>_metrics.json` (with the
    cross-validation `fold` the run trained on) and the task's figure; without
    an evaluator (a split without examples) says that nothing was tested."""
    summary = {"best_epoch": best_epoch, "fold": fold, "metrics": {}, "patients": []}
    if evaluator is None:
        logging.warning("%s: the split has no examples, so nothing was tested; the best epoch is %s.", name,
                        best_epoch)
        summary["note"] = "the split has no examples: nothing was tested"
    else:
        ev = evaluator(state)
        summary.update(data_dir=evaluator.data_dir, **ev.summary())
        logging.info("%s on %s: %s", name, ev.split, ", ".join(f"{k}={v:.4f}" for k, v in ev.metrics.items()))
        if jax.process_index() == 0:
            task.figure(ev.patients, ev.volumes, ev.images,
                        os.path.join(workdir, "figures", f"{name}_{task.figure_name}.png"),
                        channel_label=f"channel {ev.display_channel}")
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, f"{name}_metrics.json"), summary)
    return summary


# --- the run -----------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Trains, validates every epoch, checkpoints, and tests the best epoch.

    Returns the test summary, or None when the run stopped early (a signal or
    `config.halt_after_steps`) after saving a checkpoint to resume from.
    """
    config = auto_config.apply_plans(config)
    fold = config.data.get("fold")
    manifest = pipeline.read_manifest(config.data.data_dir, fold=fold)
    mesh = parallel.make_mesh()
    validate_config(config, manifest, num_devices=mesh.size)
    task, (metric, mode) = tasks.get_task(config), best_metric(config)
    workdir = make_workdir(workdir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    examples = manifest["splits"]["train"]["num_examples"] * (config.data.patches_per_volume if config.data.patch_size
                                                              else 1)
    steps_per_epoch = examples // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    train_iter = train_iterator(config, mesh)
    state = initial_state(config, build_model(config), mesh, input_shape(config, manifest), total_steps)
    compiled = compile_steps(config, task, mesh)
    train_step = compiled[0]
    validator = make_evaluator(config, task, compiled, mesh, config.data.data_dir, "val", fold)
    folder = os.path.join(workdir, "checkpoints")
    manager = open_checkpoints(folder, metric, mode, training=True)
    empty_metrics = jax.device_put(task.empty_metrics(), parallel.replicated(mesh))  # like the step's outputs
    train_metrics, window, history = empty_metrics, empty_metrics, []
    if manager.latest_step() is not None:
        check_resumed_config(config, workdir)
        (state, train_metrics), history = resume(manager, (state, train_metrics), train_iter)
        logging.info("Resumed at step %d of %d (epoch %d of %d).", int(state.step), total_steps,
                     min(int(state.step) // steps_per_epoch + 1, config.num_epochs), config.num_epochs)
    else:
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(state.params))
        writer.write_hparams(flat_config(  # TensorBoard takes plain values only
            config.to_dict(), lambda v: v if isinstance(v, (int, float, str, bool)) else str(v)))
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "config.json"), config.to_dict())
        write_json(os.path.join(workdir, TRAIN_MANIFEST), manifest)
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                                      every_steps=config.log_every_steps)
    start_step = int(state.step)  # counted on the host from here: reading state.step would sync every step
    skipped = int(state.skipped)
    halt_at = start_step + config.halt_after_steps if config.halt_after_steps else None
    epoch_start, input_wait = time.time(), 0.0

    with StopRequest(mesh, folder) as stop:
        for step in range(start_step, total_steps):
            epoch, k = divmod(step, steps_per_epoch)
            fetch_start = time.time()
            batch = next(train_iter)
            input_wait += time.time() - fetch_start
            state, batch_metrics, any_stop = train_step(state, parallel.to_global(batch, mesh), stop.flags())
            train_metrics, window = train_metrics.merge(batch_metrics), window.merge(batch_metrics)
            report_progress(step + 1, time.time())
            if (step + 1) % config.log_every_steps == 0:  # the mean over the logging window
                writer.write_scalars(step + 1, scalars("train", window.compute()))
                window = empty_metrics
            stopping = stop.agreed(any_stop) or step + 1 == halt_at
            if (step + 1) % config.log_every_steps == 0 or k + 1 == steps_per_epoch or stopping:
                skipped = check_finite(state, step + 1, skipped, config, manager)
            if k + 1 == steps_per_epoch:
                jax.block_until_ready(state.params)  # the steps end here: the rest of the epoch is validation
                val_start = time.time()
                val = validator(state)
                history.append(epoch_row(epoch + 1, step + 1, train_metrics.compute(), val.metrics,
                                         time.time() - epoch_start))
                log_epoch_time(writer, step + 1, val_start - epoch_start, input_wait, time.time() - val_start)
                train_metrics = empty_metrics
                checkpoint.save(manager, step + 1, (state, train_metrics), train_iter, history,
                                {metric: history[-1][metric]})
                log_epoch(writer, workdir, task, history, val, config)
                epoch_start, input_wait = time.time(), 0.0
            elif stopping:  # mid-epoch: the running metrics travel in the checkpoint
                checkpoint.save(manager, step + 1, (state, train_metrics), train_iter, history)
            if stopping and step + 1 < total_steps:
                manager.wait_until_finished()
                writer.flush()
                logging.warning("Stopped at step %d with a checkpoint; run the same command to resume.", step + 1)
                return None
    manager.wait_until_finished()

    # ---- test the best epoch
    best = manager.best_step()
    (state, _), _ = _restore_best(manager, best, (state, empty_metrics))
    if jax.process_index() == 0:
        report.plot_learning_curves(history, os.path.join(workdir, "figures", "learning_curves.png"),
                                    best_epoch=best // steps_per_epoch)
    validated = test(task, state, workdir, "val", best // steps_per_epoch, validator, fold=fold)
    if task.name == "segmentation" and jax.process_index() == 0:
        postprocessing.write(workdir, postprocessing.choose(
            validated["patients"], task.num_classes,
            chosen_on=f"validation{'' if fold is None else f' of fold {fold}'}: {len(validated['patients'])} cases"))
    summary = test(task, state, workdir, "test", best // steps_per_epoch,
                   make_evaluator(config, task, compiled, mesh, config.data.data_dir, "test")
                   if manifest["splits"].get("test", {}).get("num_examples") else None)
    writer.write_scalars(best, scalars("test", summary["metrics"]))
    writer.close()
    return summary


def check_resumed_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses in one line to resume `workdir` with a config other than the
    one in its config.json (the changed keys listed), unless
    `config.allow_changed_config`, which warns with the same list; the run
    then writes the new config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            changes = config_changes(json.load(f), config.to_dict())
    except ValueError as e:  # not JSON, or not UTF-8
        changes = [f"the old one is unreadable ({str(e).splitlines()[0]})"]
    if not changes:
        return
    listed = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    if config.get("allow_changed_config"):
        logging.warning("%s: resuming with a changed config (%s), as config.allow_changed_config allows.", path,
                        listed)
        return
    raise ConfigError(f"{path}: this run's config differs from the one it started with ({listed}); run the same "
                      "command as before, choose a new --workdir, or pass --config.allow_changed_config=True to "
                      "resume with the new config")


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


def restore_best(config: ml_collections.ConfigDict, workdir: str, mesh, image_shape) -> tuple[steps.TrainState, int | None]:
    """The best checkpoint's TrainState of a run (built for inputs of
    `image_shape`, the training shape), replicated over `mesh`, and its epoch;
    ConfigError in one line when the workdir holds none."""
    task, (metric, mode) = tasks.get_task(config), best_metric(config)
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: no checkpoints; is {workdir} the --workdir of a run? Train first with "
                          "--mode=train")
    manager = open_checkpoints(folder, metric, mode)
    best = manager.best_step()
    if best is None:
        raise ConfigError(f"{folder}: no checkpoint with validation metrics (no epoch finished); train first with "
                          "--mode=train")
    template = initial_state(config, build_model(config), mesh, image_shape, 1)
    (state, _), history = _restore_best(manager, best, (template, task.empty_metrics()))
    return state, next((row["epoch"] for row in history if row["step"] == best), None)


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, data_dir: str, split: str) -> dict:
    """Restores a workdir's best checkpoint and evaluates it on a split of any prepared folder."""
    workdir, mesh = os.path.abspath(workdir), parallel.make_mesh()
    config = auto_config.apply_plans(config)
    # The run's own folder is seen through its fold, so --split=val is the fold's validation cases.
    fold = config.data.get("fold") if os.path.abspath(data_dir) == os.path.abspath(config.data.data_dir) else None
    manifest = pipeline.read_manifest(data_dir, fold=fold)
    validate_config(config, manifest, num_devices=mesh.size, mode="evaluate")
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir}: no split {split!r}; the manifest has {', '.join(manifest['splits'])}")
    if not os.path.exists(os.path.join(workdir, TRAIN_MANIFEST)):
        raise ConfigError(f"{workdir}: no {TRAIN_MANIFEST}, so no training run finished an epoch here; "
                          "train first with --mode=train")
    trained_manifest = pipeline.read_manifest(workdir, TRAIN_MANIFEST)
    trained, shape = input_shape(config, trained_manifest), input_shape(config, manifest)
    if len(shape) != len(trained) or shape[-1] != trained[-1]:
        raise DataError(f"{data_dir}: images {shape} do not match the {trained} the run trained on; "
                        "prepare the data with the same channels and layout")
    if config.model.bottleneck == "transformer" and shape != trained:
        raise DataError(f"{data_dir}: images {shape} differ from the {trained} the run trained on, and the "
                        "transformer's position embeddings fit one size only; prepare the data at that size")
    task = tasks.get_task(config)
    state, best_epoch = restore_best(config, workdir, mesh, trained)
    evaluator = make_evaluator(config, task, compile_steps(config, task, mesh), mesh, data_dir, split, fold) \
        if manifest["splits"][split]["num_examples"] else None
    name = f"evaluate_{os.path.basename(os.path.normpath(data_dir))}_{split}"
    return test(task, state, workdir, name + ("_pathology" if config.data.get("eval_pathology") else ""),
                best_epoch, evaluator, fold)
