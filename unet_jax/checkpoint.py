"""orbax checkpoints of a run: the latest (to resume) and the best by a
validation metric (to test), each holding the whole TrainState with the
epoch's running metrics, the grain iterator state, and the per-epoch history
(the rows of metrics.csv) as JSON."""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from unet_jax.errors import SaveError

# Items of every checkpoint.
STATE, DATA_ITER, HISTORY = "state", "data_iter", "history"


def make_manager(directory: str, *, best_metric: str, best_mode: str = "max",
                 training: bool = False) -> ocp.CheckpointManager:
    """Keeps the latest checkpoint and the best one by `best_metric`.

    Checkpoints saved without metrics (an interrupted epoch) are kept only
    while they are the latest. Saving is synchronous, so the iterator state
    written is the one at the call. With `training`, the temporary folders of
    a save cut short by a kill (`<step>.orbax-checkpoint-tmp*`) are removed;
    a reader (evaluate, predict) leaves them, since a run may be saving there.
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
                                           enable_async_checkpointing=False, create=True,
                                           cleanup_tmp_directories=training)
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA_ITER: grain.checkpoint.CheckpointHandler(),
                HISTORY: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


# How the operating system's reasons come through orbax and tensorstore.
WRITE_FAILURES = {errno.ENOSPC: ("No space left on device", "free space"),
                   errno.EACCES: ("Permission denied", "make the folder writable"),
                   errno.EROFS: ("Read-only file system", "move --workdir to a writable disk"),
                   errno.EDQUOT: ("Disk quota exceeded", "free space under your quota")}


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: grain.DatasetIterator,
         history: list[dict], metrics: dict[str, float] | None = None) -> None:
    """Saves `state` (any pytree of arrays), the iterator's position and the
    history rows at `step`; `metrics` (validation) make it a candidate for best.

    A save that fails for want of space or permission removes what it had
    written and raises `SaveError` in one line; the checkpoints before it
    stay, so the same command resumes once the disk is fixed.
    """
    latest = manager.latest_step()
    resume = "run the same command to resume" + (f" from step {latest}" if latest is not None else "")
    # Checked up front: orbax out of space mid-write logs pages of tracebacks from its threads.
    needed = sum(x.nbytes for x in jax.tree.leaves(state)) + 2**20  # replicated arrays are written once
    free = shutil.disk_usage(manager.directory).free
    if free < needed:
        raise SaveError(f"{manager.directory}: cannot write the checkpoint of step {step}: it needs about "
                        f"{needed / 2**20:.1f} MiB and the disk has {free / 2**20:.1f} MiB free; free space, then "
                        f"{resume}")
    try:
        manager.save(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardSave(state),
            DATA_ITER: grain.checkpoint.CheckpointSave(data_iter),
            HISTORY: ocp.args.JsonSave({"rows": history})}), metrics=metrics, force=True)
    except (OSError, ValueError) as e:
        code = getattr(e, "errno", None) or next((c for c, (words, _) in WRITE_FAILURES.items() if words in str(e)),
                                                 None)
        if code not in WRITE_FAILURES:
            raise
        if jax.process_index() == 0:
            for partial in glob.glob(os.path.join(glob.escape(str(manager.directory)), f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(partial, ignore_errors=True)
        words, fix = WRITE_FAILURES[code]
        raise SaveError(f"{manager.directory}: cannot write the checkpoint of step {step} ({words}); {fix}, then "
                        f"{resume}") from None


def restore(manager: ocp.CheckpointManager, step: int, state: Any,
            data_iter: grain.DatasetIterator | None = None) -> tuple[Any, list[dict]]:
    """Restores `state` (a template with the right structure and shardings) and,
    if given, the iterator in place; returns (state, history rows)."""
    items = {STATE: ocp.args.StandardRestore(state), HISTORY: ocp.args.JsonRestore()}
    if data_iter is not None:
        items[DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored[STATE], restored[HISTORY]["rows"]


# The tensorstore codes of a file that was read but cannot be decoded (or is missing) ...
_DECODE_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION")
# ... and the operating system's failures to read it, which say nothing about the file itself.
READ_FAILURES = (errno.EIO, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ESTALE,
                 errno.ETIMEDOUT, errno.EMFILE)


def read_failure(e: BaseException) -> str | None:
    """The operating system's words when `e` is a failure to read (EIO, EACCES,
    a stale NFS handle...) rather than a damaged file; None otherwise.
    tensorstore reports them as ValueErrors carrying the words."""
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return e.strerror or str(e)
    text = str(e)
    return next((os.strerror(code) for code in READ_FAILURES if os.strerror(code) in text), None)


def is_damage(e: BaseException) -> bool:
    """Whether `e`, raised while restoring, says the checkpoint's files are
    damaged: undecodable JSON or bytes, a missing file or item inside the step
    folder. Anything else (a failing disk, a bug) is not a reason to set it aside."""
    if read_failure(e) is not None:
        return False
    if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, KeyError, FileNotFoundError, NotADirectoryError)):
        return True
    return isinstance(e, ValueError) and str(e).startswith(_DECODE_CODES)


def set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Renames a damaged step folder to `<step>.damaged` (`.damaged-2`, ... if
    taken), which orbax does not take for a step, so the user can inspect it;
    returns the new path. Call on process 0 only, then `manager.reload()`."""
    folder = os.path.join(str(manager.directory), str(step))
    target, n = f"{folder}.damaged", 1
    while os.path.exists(target):
        n += 1
        target = f"{folder}.damaged-{n}"
    os.rename(folder, target)
    return target
