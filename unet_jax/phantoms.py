"""The demo configs' phantoms, generated and prepared by `python -m data_prep.demo`
in a process of its own: unet_jax never imports data_prep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from unet_jax.errors import ConfigError, DataError

# config.data.synthetic.kind: the phantoms data_prep.demo prepares (its DEMOS, in this order).
KINDS = ("lgg", "lesions_3d", "chest_ct", "pairs_2d")


def check_kind(synthetic: dict) -> str:
    """The kind of `synthetic` (a config's `data.synthetic`), ConfigError in one
    line unless data_prep.demo prepares it: checked by every process before
    process 0 prepares and the others wait."""
    kind = synthetic.get("kind", "lgg")
    if kind not in KINDS:
        raise ConfigError(f"config.data.synthetic.kind={kind!r}: choose one of {', '.join(KINDS)}")
    return kind


def prepare(workdir: str, synthetic: dict) -> str:
    """Generates and prepares the phantoms of `synthetic` (a config's
    `data.synthetic`: its `kind` and the preparer's options) under
    `workdir/data`, once; returns the prepared folder. The preparer's output
    passes through; its failure is a DataError of one line."""
    kind = check_kind(synthetic)
    options = {k: v for k, v in synthetic.items() if k != "kind"}
    argv = [sys.executable, "-m", "data_prep.demo", f"--workdir={os.path.abspath(workdir)}", f"--kind={kind}",
            f"--options={json.dumps(options)}"]
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
