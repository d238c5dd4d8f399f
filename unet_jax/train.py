"""train_and_evaluate: train a U-Net on prepared data, validate every epoch, keep
the best epoch, and test it on held-out patients.

A workdir is a run: config.json, train_manifest.json (the data it trained
on), checkpoints/, TensorBoard events, metrics.csv, val_metrics.json and
test_metrics.json (the best epoch per case), postprocessing.json (whether
keeping each class's largest component helped on validation), and figures/
all live there, and starting again with the same workdir resumes where it
stopped (`unet_jax.run` makes, locks and resumes the workdir).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from unet_jax import auto_config, checkpoint, evaluate, parallel, postprocessing, report, run, steps, tasks
from unet_jax.builders import best_metric, device_augment, input_shape, pathology_options, patch_options
from unet_jax.config_checks import config_changes, flat_config, validate_config
from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.errors import ConfigError, Diverged
from unet_jax.files import atomic_write, write_json


# --- setup -----------------------------------------------------------------

def _train_step_and_stop(state, batch, stop, **kwargs):
    """`steps.train_step`, and whether any process asked to stop (`stop`: a
    flag per device). In one program with the step: run as a program of its
    own, its collective could overlap the step's on a CPU and pair up
    differently in each process, which hung multi-process runs over gloo."""
    state, metrics = steps.train_step(state, batch, **kwargs)
    return state, metrics, jnp.any(stop)


def compile_steps(config, task: tasks.Task, mesh):
    """The jitted train step, state replicated and batch sharded on `data`,
    which takes and agrees a stop flag too (`StopRequest`), and
    `run.compile_eval_steps`' eval and predict steps."""
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_step = jax.jit(
        functools.partial(_train_step_and_stop, loss_fn=task.loss(config.loss), metrics_fn=task.batch_metrics,
                          grad_accum_steps=config.grad_accum_steps,
                          aux_weights=tuple(config.deep_supervision_weights),
                          augment_fn=device_augment(config, task)),
        in_shardings=(repl, data, data), out_shardings=(repl, repl, repl), donate_argnums=0)
    return train_step, *run.compile_eval_steps(config, task, mesh)


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
    workdir = run.make_workdir(workdir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    examples = manifest["splits"]["train"]["num_examples"] * (config.data.patches_per_volume if config.data.patch_size
                                                              else 1)
    steps_per_epoch = examples // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    train_iter = train_iterator(config, mesh)
    state = run.initial_state(config, run.build_model(config), mesh, input_shape(config, manifest), total_steps)
    compiled = compile_steps(config, task, mesh)
    train_step = compiled[0]
    validator = evaluate.make_evaluator(config, task, compiled, mesh, config.data.data_dir, "val", fold)
    folder = os.path.join(workdir, "checkpoints")
    manager = run.open_checkpoints(folder, metric, mode, training=True)
    empty_metrics = jax.device_put(task.empty_metrics(), parallel.replicated(mesh))  # like the step's outputs
    train_metrics, window, history = empty_metrics, empty_metrics, []
    if manager.latest_step() is not None:
        check_resumed_config(config, workdir)
        (state, train_metrics), history = run.resume(manager, (state, train_metrics), train_iter)
        logging.info("Resumed at step %d of %d (epoch %d of %d).", int(state.step), total_steps,
                     min(int(state.step) // steps_per_epoch + 1, config.num_epochs), config.num_epochs)
    else:
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(state.params))
        writer.write_hparams(flat_config(  # TensorBoard takes plain values only
            config.to_dict(), lambda v: v if isinstance(v, (int, float, str, bool)) else str(v)))
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "config.json"), config.to_dict())
        write_json(os.path.join(workdir, run.TRAIN_MANIFEST), manifest)
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
    (state, _), _ = run.restore_needed(manager, best, (state, empty_metrics))
    if jax.process_index() == 0:
        report.plot_learning_curves(history, os.path.join(workdir, "figures", "learning_curves.png"),
                                    best_epoch=best // steps_per_epoch)
    validated = evaluate.test(task, state, workdir, "val", best // steps_per_epoch, validator, fold=fold)
    if task.name == "segmentation" and jax.process_index() == 0:
        postprocessing.write(workdir, postprocessing.choose(
            validated["patients"], task.num_classes,
            chosen_on=f"validation{'' if fold is None else f' of fold {fold}'}: {len(validated['patients'])} cases"))
    summary = evaluate.test(task, state, workdir, "test", best // steps_per_epoch,
                            evaluate.make_evaluator(config, task, compiled, mesh, config.data.data_dir, "test")
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
