"""`python -m unet_jax.predict --workdir=RUN --input=SCANS --output=FOLDER`: the
predict command on its own (the same as `unet_jax.main --mode=predict`)."""

import jax
from absl import app, flags

from unet_jax.predict import cli

if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Folder of a trained run (config.json, train_manifest.json, checkpoints/), "
                                         "or several separated by commas: an ensemble.")
    cli.define_flags()
    flags.adopt_module_key_flags(cli)  # --help lists them, as it lists --workdir
    flags.mark_flags_as_required(["workdir", "input", "output"])
    jax.config.config_with_absl()
    app.run(cli.main)
