"""orbax checkpoints of a run: the latest (to resume) and the best by a
validation metric (to test), each holding the whole TrainState with the
epoch's running metrics, the grain iterator state, and the per-epoch history
(the rows of metrics.csv) as JSON."""

from __future__ import annotations

import math
import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

# Items of every checkpoint.
STATE, DATA_ITER, HISTORY = "state", "data_iter", "history"


def make_manager(directory: str, *, best_metric: str, best_mode: str = "max") -> ocp.CheckpointManager:
    """Keeps the latest checkpoint and the best one by `best_metric`.

    Checkpoints saved without metrics (an interrupted epoch) are kept only
    while they are the latest. Saving is synchronous, so the iterator state
    written is the one at the call.
    """
    if best_mode not in ("max", "min"):
        raise ValueError(f"best_mode={best_mode!r}: choose 'max' or 'min'")

    def best_fn(metrics: dict[str, float]) -> float:
        # A NaN metric (an AVD with empty targets, say) ranks worst, never best.
        value = metrics[best_metric]
        return value if math.isfinite(value) else (-math.inf if best_mode == "max" else math.inf)

    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(n=1),
        checkpoint_managers.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=best_fn, best_mode=best_mode,
                                           enable_async_checkpointing=False, create=True)
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA_ITER: grain.checkpoint.CheckpointHandler(),
                HISTORY: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: grain.DatasetIterator,
         history: list[dict], metrics: dict[str, float] | None = None) -> None:
    """Saves `state` (any pytree of arrays), the iterator's position and the
    history rows at `step`; `metrics` (validation) make it a candidate for best."""
    manager.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
        HISTORY: ocp.args.JsonSave({"rows": history})}), metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int, state: Any,
            data_iter: grain.DatasetIterator | None = None) -> tuple[Any, list[dict]]:
    """Restores `state` (a template with the right structure and shardings) and,
    if given, the iterator in place; returns (state, history rows)."""
    items = {STATE: ocp.args.StandardRestore(state), HISTORY: ocp.args.JsonRestore()}
    if data_iter is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[HISTORY]["rows"]
