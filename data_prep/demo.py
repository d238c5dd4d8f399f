"""The demo configs' data: phantoms generated under a workdir and prepared for
training, once. unet_jax.main runs this for a config with `data.synthetic`
(its `kind` picks the phantoms, the other keys are the preparer's options):

  python -m data_prep.demo --workdir=runs/demo --kind=lgg --options='{"num_patients": 14, "size": 64}'

It prints the prepared folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from data_prep import lgg, pictures, volumes
from data_prep.phantoms import chest, lesions, pairs
from data_prep.phantoms import lgg as lgg_phantoms
from unet_jax.data import MANIFEST
from unet_jax.errors import DataError


def _is_prepared(folder: str) -> bool:
    """Whether `folder` holds phantoms prepared by this data_prep (an older one
    left out the per-patient intensity statistics)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return "intensity_stats" in json.load(f)


def _has_manifest(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, MANIFEST))


def _once(workdir: str, prepared_name: str, phantoms_name: str, write, prepare, done=_has_manifest) -> str:
    """`workdir/data/<prepared_name>`, made unless `done(it)`: the phantoms
    written by `write(folder)` into `workdir/data/<phantoms_name>`, then
    `prepare(phantoms, prepared)`."""
    root = os.path.join(os.path.abspath(workdir), "data")
    prepared = os.path.join(root, prepared_name)
    if not done(prepared):
        phantoms = os.path.join(root, phantoms_name)
        write(phantoms)
        prepare(phantoms, prepared)
    return prepared


def prepare_demo(workdir: str, *, num_patients: int = 10, num_slices: int = 20, size: int = 256,
                 seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 volume_depth: int = 0) -> str:
    """Generates phantoms under `workdir/data` and prepares them as TFRecords
    (as volumes with `volume_depth`), once; returns the prepared folder (the
    demo config trains on it)."""
    return _once(workdir, "prepared", "phantoms",
                 lambda out: lgg_phantoms.write_phantoms(out, num_patients=num_patients, num_slices=num_slices,
                                                         size=size, seed=seed, overwrite=True, progress=False),
                 lambda src, out: lgg.prepare(src, out, val_fraction=val_fraction, test_fraction=test_fraction,
                                              seed=seed, volume_depth=volume_depth, overwrite=True, progress=False),
                 done=_is_prepared)


def prepare_lesion_demo(workdir: str, *, num_cases: int = 10, shape=(64, 64, 24), spacing=(1.0, 1.0, 3.0),
                        seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> str:
    """Generates 3-D lesion phantoms (NIfTI) under `workdir/data` and prepares
    them with data_prep.volumes (FLAIR and T1, z-scored over the head), once;
    returns the prepared folder."""
    return _once(workdir, "prepared_3d", "lesion_phantoms",
                 lambda out: lesions.write_lesion_phantoms(out, num_cases=num_cases, shape=tuple(shape),
                                                           spacing=tuple(spacing), seed=seed, overwrite=True,
                                                           progress=False),
                 lambda src, out: volumes.prepare(src, out, channels="FLAIR*,T1*", label="lesions*",
                                                  val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                                  overwrite=True, progress=False))


def prepare_chest_demo(workdir: str, *, num_cases: int = 6, shape=(128, 128, 24), spacing=(2.0, 2.0, 5.0),
                       seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2) -> str:
    """Generates chest CT phantoms (NIfTI, Hounsfield units) under
    `workdir/data` and prepares them with data_prep.volumes as axial slices
    in the wide lung window, scaled to [0, 1], once; returns the prepared folder."""
    return _once(workdir, "prepared_chest", "chest_phantoms",
                 lambda out: chest.write_chest_phantoms(out, num_cases=num_cases, shape=tuple(shape),
                                                        spacing=tuple(spacing), seed=seed, overwrite=True,
                                                        progress=False),
                 lambda src, out: volumes.prepare(src, out, channels="ct*", label="lungs*", intensity="ct",
                                                  ct_window="lung_wide", crop=False, slices="axial",
                                                  slice_size=f"{shape[0]},{shape[1]}", val_fraction=val_fraction,
                                                  test_fraction=test_fraction, seed=seed, overwrite=True,
                                                  progress=False))


def prepare_pair_demo(workdir: str, *, num_pairs: int = 24, size: int = 64, seed: int = 0,
                      val_fraction: float = 0.2, test_fraction: float = 0.2, double: bool = True) -> str:
    """Generates 2-D T1 -> contrast-map pairs (PNG) under `workdir/data` and
    prepares them with data_prep.pictures as a regression (with document
    000's doubling of the training pairs), once; returns the prepared folder."""
    return _once(workdir, "prepared_pairs", "pair_phantoms",
                 lambda out: pairs.write_pair_phantoms(out, num_pairs=num_pairs, size=size, seed=seed,
                                                       overwrite=True, progress=False),
                 lambda src, out: pictures.prepare(src, out, task="regression", double=double,
                                                   val_fraction=val_fraction, test_fraction=test_fraction,
                                                   seed=seed, overwrite=True, progress=False))


# config.data.synthetic.kind -> its preparer
DEMOS = {"lgg": prepare_demo, "lesions_3d": prepare_lesion_demo, "chest_ct": prepare_chest_demo,
         "pairs_2d": prepare_pair_demo}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the run's folder: the data goes into its data/")
    parser.add_argument("--kind", default="lgg", help=f"config.data.synthetic.kind: {', '.join(DEMOS)}")
    parser.add_argument("--options", default="{}", help="the preparer's keyword arguments as a JSON object "
                                                        "(config.data.synthetic without its kind)")
    args = parser.parse_args(argv)
    if args.kind not in DEMOS:
        print(f"error: config.data.synthetic.kind={args.kind!r}: choose one of {', '.join(DEMOS)}", file=sys.stderr)
        sys.exit(2)
    try:
        print(DEMOS[args.kind](args.workdir, **json.loads(args.options)))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
