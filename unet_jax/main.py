"""Train or evaluate a U-Net from a config file, or predict new scans with a trained run.

  python -m unet_jax.main --config=configs/lgg.py --workdir=runs/lgg
  python -m unet_jax.main --config=configs/lgg.py --workdir=runs/lgg --config.batch_size=8
  python -m unet_jax.main --config=configs/lgg.py --workdir=runs/lgg --mode=evaluate \
      --data_dir=data/other --split=test
  python -m unet_jax.main --mode=predict --workdir=runs/lgg --input=scans/ --output=predictions/
"""

import logging as std_logging
import os
import sys

# TensorFlow (imported by clu's writers) and XLA log C++ banners to stderr at start-up.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF computes nothing here; silences its banner

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from unet_jax import checkpoint, evaluate, parallel, phantoms, train  # noqa: E402
from unet_jax.errors import UnetJaxError  # noqa: E402
from unet_jax.predict import cli as predict_cli  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the run: checkpoints, logs, metrics, figures; for --mode=predict "
                                     "several runs separated by commas predict as an ensemble.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "predict"],
                  "train (resumes if the workdir has a checkpoint), evaluate the best checkpoint, or predict "
                  "--input scans with it (the run's own config; --config is not needed).")
flags.DEFINE_string("data_dir", None, "evaluate: prepared data folder (default: the config's).")
flags.DEFINE_string("split", "test", "evaluate: which split of --data_dir.")
flags.mark_flags_as_required(["workdir"])
predict_cli.define_flags()  # --input, --output, ... of --mode=predict


def _quiet_checkpoint_logs(record: std_logging.LogRecord) -> bool:
    """orbax logs several INFO lines per save; keep its warnings only."""
    return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.get_absl_handler().addFilter(_quiet_checkpoint_logs)
    if FLAGS.mode == "predict":
        if FLAGS.config is not None:
            logging.warning("--mode=predict uses the run's own config.json in --workdir; --config is ignored.")
        predict_cli.main(argv)
        return
    if FLAGS.config is None:
        raise app.UsageError("--config is required for --mode=train and --mode=evaluate")
    config = FLAGS.config
    try:
        parallel.initialize_distributed()
        logging.info("JAX %s on %d process(es), devices: %s", jax.__version__, jax.process_count(), jax.devices())
        if config.data.synthetic is not None:
            with config.unlocked():
                config.data.data_dir = demo_data(config, FLAGS.workdir)
        if FLAGS.mode == "train":
            train.train_and_evaluate(config, FLAGS.workdir)
        else:
            evaluate.evaluate_workdir(config, FLAGS.workdir, FLAGS.data_dir or config.data.data_dir, FLAGS.split)
    except UnetJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk or a folder made read-only while results were written
        if e.errno not in checkpoint.WRITE_FAILURES:
            raise
        print(f"error: {e.filename or FLAGS.workdir}: {e.strerror}; {checkpoint.WRITE_FAILURES[e.errno][1]}, then run "
              "the same command to resume", file=sys.stderr)
        sys.exit(2)


def demo_data(config, workdir: str) -> str:
    """The demo's data: a `data_dir` given on the command line wins; otherwise
    the phantoms of `config.data.synthetic`, generated and prepared under the
    workdir once, by process 0 while the others wait."""
    if config.data.data_dir:
        logging.info("Training on --config.data.data_dir=%s, not on phantoms.", config.data.data_dir)
        return config.data.data_dir
    synthetic = config.data.synthetic.to_dict()
    phantoms.check_kind(synthetic)  # on every process: none may wait for a process 0 that refused
    if jax.process_index() == 0:
        data_dir = phantoms.prepare(workdir, synthetic)
    multihost_utils.sync_global_devices("demo data prepared")
    return data_dir if jax.process_index() == 0 else phantoms.prepare(workdir, synthetic)  # found, not redone


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a misspelled `--config.key` reported in one line."""
    try:
        argv = FLAGS(argv)
        if FLAGS.config is not None:
            FLAGS.config.to_dict()  # a config file that failed to load raises here
        return argv
    except OSError as e:
        print(f"error: cannot load --config: {str(e).splitlines()[-1].strip()}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:
        # ml_collections raises AttributeError(KeyError("'key'\nDid you mean ...?")) for an unknown key.
        cause = e.args[0] if e.args and isinstance(e.args[0], KeyError) else e
        key, _, hint = str(cause.args[0] if cause.args else cause).partition("\n")
        print(f"error: --config has no key {key}" + (f"; {hint.strip()}" if hint.strip() else ""), file=sys.stderr)
        sys.exit(2)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    jax.config.config_with_absl()
    app.run(main, flags_parser=parse_flags)
