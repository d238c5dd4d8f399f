"""One process of a test's multi-process run (see test_multiprocess.py):
train_and_evaluate on tiny_config, recording as JSON what this process read
(the ids of each training batch) and renamed into place (every atomic write
and checkpoint ends in a rename), and whether it stopped early.

  python tests/process_driver.py DATA_DIR WORKDIR RECORD [--sigterm_at_batch=N] [--sigint_twice_at_batch=N]

With --sigterm_at_batch, process 1 (or the only one) sends itself SIGTERM as
it fetches training batch N of this run (0-based): a real signal, at a
moment the test knows. With --sigint_twice_at_batch, two SIGINTs (Ctrl-C
pressed twice) instead.
"""

import argparse
import json
import os
import signal
import sys

import numpy as np

from run_configs import tiny_config
from unet_jax import parallel, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("workdir")
    parser.add_argument("record")
    parser.add_argument("--sigterm_at_batch", type=int, default=-1)
    parser.add_argument("--sigint_twice_at_batch", type=int, default=-1)
    args = parser.parse_args()
    parallel.initialize_distributed()
    import jax

    record = {"process": jax.process_index(), "processes": jax.process_count(), "devices": jax.device_count(),
              "batches": [], "renamed": []}
    signaller = jax.process_index() == min(1, jax.process_count() - 1)

    for name in ("replace", "rename"):
        real = getattr(os, name)

        def renamed(src, dst, *a, _real=real, **k):
            record["renamed"].append(os.path.relpath(os.path.abspath(dst), os.path.abspath(args.workdir)))
            return _real(src, dst, *a, **k)

        setattr(os, name, renamed)

    make_iterator = train.train_iterator

    def recording_iterator(config, mesh):
        it = make_iterator(config, mesh)

        class Recording(type(it)):  # the same class to grain's checkpoint handler
            def __next__(self):
                if len(record["batches"]) == args.sigterm_at_batch and signaller:
                    os.kill(os.getpid(), signal.SIGTERM)
                if len(record["batches"]) == args.sigint_twice_at_batch and signaller:
                    os.kill(os.getpid(), signal.SIGINT)  # os.kill runs the handler before it returns
                    os.kill(os.getpid(), signal.SIGINT)
                batch = super().__next__()
                record["batches"].append(np.stack([batch["patient_index"], batch["slice"]], 1).tolist())
                return batch

        it.__class__ = Recording
        return it

    train.train_iterator = recording_iterator
    config = tiny_config(args.data_dir)
    config.num_epochs, config.log_every_steps, config.batch_size = 3, 1, 8
    summary = train.train_and_evaluate(config, args.workdir)
    record["stopped_early"] = summary is None
    with open(args.record, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    sys.exit(main())
