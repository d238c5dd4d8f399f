"""train_and_evaluate: train a U-Net on prepared data, validate every epoch, keep
the best epoch, and test it on held-out patients.

A workdir is a run: config.json, checkpoints/, TensorBoard events,
metrics.csv, test_metrics.json and figures/ all live there, and starting
again with the same workdir resumes where it stopped.
"""

from __future__ import annotations

import csv
import functools
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions

from unet_jax import checkpoint, evaluate, losses, parallel, report, steps
from unet_jax import metrics as metrics_lib
from unet_jax.data import pipeline
from unet_jax.data.augment import AugmentOptions
from unet_jax.models.unet import UNet

def csv_columns(task: str) -> list[str]:
    """metrics.csv's columns: the task's metrics for train and val, and for
    segmentation the per-patient 3-D Dice on val."""
    names = metrics_lib.metric_names(task)
    val = names + (["dice_3d", "dice_3d_lcc"] if task == "segmentation" else [])
    return ["epoch", "step", *(f"train_{n}" for n in names), *(f"val_{n}" for n in val), "seconds"]


def val_metrics(task: str) -> list[str]:
    """What `config.best_metric` may name."""
    return [c for c in csv_columns(task) if c.startswith("val_")]


# --- setup -----------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> UNet:
    dtype = jnp.bfloat16 if config.mixed_precision else jnp.float32
    return UNet(dtype=dtype, **config.model.to_dict())


def initial_state(config, model, mesh, image_shape, total_steps: int) -> steps.TrainState:
    """A fresh TrainState, replicated over the mesh."""
    tx = steps.make_optimizer(config.learning_rate, total_steps=total_steps,
                              warmup_steps=config.warmup_steps, schedule=config.lr_schedule,
                              weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    rng = jax.random.PRNGKey(config.seed)
    sample = jnp.zeros((1, *image_shape), jnp.float32)
    state = jax.jit(functools.partial(steps.create_train_state, model, tx),
                    out_shardings=parallel.replicated(mesh))(rng, sample)
    return state


def compile_steps(config, mesh):
    """The jitted train and eval steps: state replicated, batch sharded on `data`."""
    loss_fn = losses.get_loss(config.loss, config.task)
    repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    if len(config.deep_supervision_weights) != config.model.deep_supervision:
        raise ValueError(f"deep_supervision_weights has {len(config.deep_supervision_weights)} entries but "
                         f"model.deep_supervision={config.model.deep_supervision}; give one weight per level")
    train_step = jax.jit(
        functools.partial(steps.train_step, loss_fn=loss_fn, grad_accum_steps=config.grad_accum_steps,
                          aux_weights=tuple(config.deep_supervision_weights), task=config.task),
        in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=0)
    eval_step = jax.jit(functools.partial(steps.eval_step, loss_fn=loss_fn, task=config.task),
                        in_shardings=(repl, data), out_shardings=(repl, data))
    return train_step, eval_step


def augment_options(config) -> AugmentOptions | None:
    return AugmentOptions(**config.data.augment) if config.data.augment else None


class StopRequest:
    """Turns SIGTERM and Ctrl-C into a flag that the loop checks after each step,
    so the run saves a checkpoint before it exits."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("Received %s: saving a checkpoint after this step.", signal.Signals(signum).name)
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_csv(path: str, rows: list[dict], columns: list[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _scalars(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in values.items()}


# --- the run -----------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """Trains, validates every epoch, checkpoints, and tests the best epoch.

    Returns the test summary, or None when the run stopped early (a signal or
    `config.halt_after_steps`) after saving a checkpoint to resume from.
    """
    if config.task not in losses.TASKS:
        raise ValueError(f"task={config.task!r}: choose one of {losses.TASKS}")
    columns = csv_columns(config.task)
    if config.best_metric not in val_metrics(config.task):
        raise ValueError(f"best_metric={config.best_metric!r}: choose one of {val_metrics(config.task)}")
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
    data_dir = config.data.data_dir
    manifest = pipeline.read_manifest(data_dir)
    mesh = parallel.make_mesh()
    local_batch = parallel.check_batch_size(config.batch_size, mesh, config.grad_accum_steps)
    parallel.check_batch_size(config.eval_batch_size, mesh, name="eval_batch_size")  # before training, not after
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if jax.process_index() == 0:
        evaluate.write_json(os.path.join(workdir, "config.json"), config.to_dict())

    # ---- data
    train_ds = pipeline.train_dataset(
        data_dir, batch_size=local_batch, seed=config.seed, normalization=config.data.normalization,
        augment_options=augment_options(config), shard_index=jax.process_index(),
        shard_count=jax.process_count())
    train_iter = pipeline.make_iterator(train_ds, pipeline.LoaderOptions(
        num_workers=config.data.num_workers, prefetch_buffer_size=config.data.prefetch_buffer_size))
    steps_per_epoch = manifest["splits"]["train"]["num_examples"] // config.batch_size
    total_steps = steps_per_epoch * config.num_epochs
    image_shape = tuple(manifest["image_shape"])

    # ---- model, state, checkpoints
    model = build_model(config)
    state = initial_state(config, model, mesh, image_shape, total_steps)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                      best_metric=config.best_metric, best_mode=config.best_mode)
    progress = {"epoch": 0, "step_in_epoch": 0, "history": []}

    def empty_metrics():  # replicated like the step's outputs, so restored sums merge with them
        return jax.device_put(metrics_lib.empty_metrics(config.task), parallel.replicated(mesh))

    epoch_metrics = empty_metrics()
    if manager.latest_step() is not None:
        (state, epoch_metrics), progress = checkpoint.restore(
            manager, manager.latest_step(), (state, epoch_metrics), train_iter)
        logging.info("Resumed from step %d (epoch %d).", int(state.step), progress["epoch"] + 1)
    else:
        logging.info("Parameters:\n%s", parameter_overview.get_parameter_overview(state.params))
        writer.write_hparams(_flatten(config.to_dict()))
    train_step, eval_step = compile_steps(config, mesh)
    history = progress["history"]

    # ---- train
    report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                                      every_steps=config.log_every_steps)
    step = int(state.step)  # counted on the host from here: reading state.step would sync every step
    halt_at = step + config.halt_after_steps if config.halt_after_steps else None
    epoch_start = time.time()
    def stopped() -> None:
        manager.wait_until_finished()
        logging.warning("Stopped at step %d with a checkpoint; run the same command to resume.", step)
        writer.flush()

    with StopRequest() as stop:
        for epoch in range(progress["epoch"], config.num_epochs):
            for i in range(progress["step_in_epoch"], steps_per_epoch):
                batch = parallel.to_global(next(train_iter), mesh)
                state, batch_metrics = train_step(state, batch)
                epoch_metrics = epoch_metrics.merge(batch_metrics)
                step += 1
                report_progress(step, time.time())
                if step % config.log_every_steps == 0:
                    writer.write_scalars(step, _scalars("train", batch_metrics.compute()))
                # A stop on an epoch's last step waits for that epoch's validation and
                # checkpoint below: a checkpoint here would take the step number that
                # the epoch's own checkpoint needs after resuming.
                if (stop.signal is not None or step == halt_at) and i + 1 < steps_per_epoch:
                    progress.update(epoch=epoch, step_in_epoch=i + 1)
                    checkpoint.save(manager, step, (state, epoch_metrics), train_iter, progress)
                    stopped()
                    return None
            # ---- validate
            train_values = epoch_metrics.compute()
            val = evaluate_config(eval_step, state, config, data_dir, "val", mesh)
            row = {"epoch": epoch + 1, "step": step, **_scalars("train", train_values),
                   **_scalars("val", val.metrics), "seconds": round(time.time() - epoch_start, 2)}
            history.append(row)
            writer.write_scalars(step, {k: v for k, v in row.items() if k not in ("epoch", "step")})
            writer.write_images(step, {"val_predictions": _preview(val, config.num_preview_images, config.task)})
            writer.flush()
            logging.info("epoch %d/%d: %s", epoch + 1, config.num_epochs,
                         ", ".join(f"{k}={row[k]:.4f}" for k in columns[2:] if k in row))
            progress.update(epoch=epoch + 1, step_in_epoch=0, history=history)
            epoch_metrics = empty_metrics()
            checkpoint.save(manager, step, (state, epoch_metrics), train_iter, progress,
                            metrics={config.best_metric: row[config.best_metric]})
            if jax.process_index() == 0:
                write_csv(os.path.join(workdir, "metrics.csv"), history, columns)
            if (stop.signal is not None or step == halt_at) and epoch + 1 < config.num_epochs:
                stopped()
                return None
            epoch_start = time.time()
    manager.wait_until_finished()

    # ---- test the best epoch
    best = manager.best_step()
    best_epoch = next(r["epoch"] for r in history if r["step"] == best)
    (state, _), _ = checkpoint.restore(manager, best, (state, epoch_metrics))
    summary = test(eval_step, state, config, workdir, data_dir, "test", mesh, best_epoch)
    if jax.process_index() == 0:
        report.plot_learning_curves(history, os.path.join(workdir, "figures", "learning_curves.png"),
                                    best_epoch=best_epoch)
    writer.write_scalars(int(state.step), _scalars("test", summary["metrics"]))
    writer.close()
    return summary


def evaluate_config(eval_step, state, config, data_dir: str, split: str, mesh) -> evaluate.Evaluation:
    """`evaluate.evaluate_split` with the settings of `config`."""
    return evaluate.evaluate_split(eval_step, state, data_dir, split, batch_size=config.eval_batch_size,
                                   normalization=config.data.normalization, mesh=mesh, task=config.task,
                                   num_classes=max(config.model.out_channels, 2))


def test(eval_step, state, config, workdir: str, data_dir: str, split: str, mesh, best_epoch: int,
         name: str = "test") -> dict:
    """Evaluates `state` on a split; writes `<name>_metrics.json` and a figure (the
    best and worst patients, or for regression the slices of most target mass)."""
    ev = evaluate_config(eval_step, state, config, data_dir, split, mesh)
    summary = {"best_epoch": best_epoch, "data_dir": os.path.abspath(data_dir), **ev.summary()}
    if jax.process_index() == 0:
        evaluate.write_json(os.path.join(workdir, f"{name}_metrics.json"), summary)
        if config.task == "segmentation":
            evaluate.best_and_worst_figure(ev, os.path.join(workdir, "figures", f"{name}_best_worst.png"))
        else:
            evaluate.regression_figure(ev, os.path.join(workdir, "figures", f"{name}_predictions.png"))
    logging.info("%s on %s: %s", name, split, ", ".join(f"{k}={v:.4f}" for k, v in ev.metrics.items()))
    return summary


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, data_dir: str, split: str) -> dict:
    """Restores a workdir's best checkpoint and evaluates it on any prepared folder."""
    manifest = pipeline.read_manifest(data_dir)
    mesh = parallel.make_mesh()
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"),
                                      best_metric=config.best_metric, best_mode=config.best_mode)
    best = manager.best_step()
    if best is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint with validation metrics; "
                                "train first with --mode=train")
    template = initial_state(config, build_model(config), mesh, tuple(manifest["image_shape"]), 1)
    (state, _), progress = checkpoint.restore(manager, best, (template, metrics_lib.empty_metrics(config.task)))
    best_epoch = next((r["epoch"] for r in progress["history"] if r["step"] == best), None)
    _, eval_step = compile_steps(config, mesh)
    name = f"evaluate_{os.path.basename(os.path.normpath(data_dir))}_{split}"
    return test(eval_step, state, config, workdir, data_dir, split, mesh, best_epoch, name=name)


def _preview(ev: evaluate.Evaluation, n: int, task: str) -> np.ndarray:
    """[n, H, W', 3] uint8 pictures of the validation slices with the largest
    tumours (segmentation: overlays) or target mass (regression: image, target
    and output side by side)."""
    if task == "regression":
        rows = []
        for p, i in evaluate.largest_target_slices(ev, n):
            output, target = (x[i].astype(np.float32) for x in ev.outputs[p])
            top = max(float(target.max()), 1e-6)
            grey = np.concatenate([report.normalise(ev.images[p][i].astype(np.float32)),
                                   np.clip(target / top, 0, 1), np.clip(output / top, 0, 1)], axis=1)
            rows.append(np.round(np.repeat(grey[..., None], 3, axis=-1) * 255).astype(np.uint8))
        return np.stack(rows)
    vols = ev.volumes.volumes()
    candidates = []
    for p, (pred, target, _) in vols.items():
        for i in range(len(target)):
            candidates.append((np.count_nonzero(target[i]), p, i))
    chosen = sorted(candidates, reverse=True)[:n]
    return np.stack([report.overlay(ev.images[p][i].astype(np.float32), vols[p][1][i], vols[p][0][i])
                     for _, p, i in chosen])


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
