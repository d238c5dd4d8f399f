"""The demo configs' phantoms, generated and prepared by `python -m data_prep.demo`
in a process of its own: unet_jax never imports data_prep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from unet_jax.errors import DataError


def prepare(workdir: str, synthetic: dict) -> str:
    """Generates and prepares the phantoms of `synthetic` (a config's
    `data.synthetic`: its `kind` and the preparer's options) under
    `workdir/data`, once; returns the prepared folder. The preparer's output
    passes through; its failure is a DataError of one line."""
    options = dict(synthetic)
    argv = [sys.executable, "-m", "data_prep.demo", f"--workdir={os.path.abspath(workdir)}",
            f"--kind={options.pop('kind', 'lgg')}", f"--options={json.dumps(options)}"]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DataError(last.removeprefix("error: ") if last.startswith("error: ") else
                        f"python -m data_prep.demo failed: {last}")
    sys.stderr.write(done.stderr)
    *printed, folder = done.stdout.splitlines()
    if printed:
        print("\n".join(printed), flush=True)
    return folder
