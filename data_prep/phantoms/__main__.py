"""`python -m data_prep.phantoms --out_dir=DIR`: LGG phantoms in the kaggle_3m layout, for trying data_prep.lgg."""

from __future__ import annotations

import argparse
import glob
import os
import sys

import tifffile

from data_prep import phantoms
from data_prep.phantoms.lgg import MAX_PATIENTS, write_phantoms
from unet_jax.errors import DataError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.phantoms",
                                     description=phantoms.__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", required=True, help="folder to create (kaggle_3m layout)")
    parser.add_argument("--num_patients", type=int, default=10)
    parser.add_argument("--num_slices", type=int, default=20, help="slices per patient")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir")
    args = parser.parse_args(argv)
    if not 1 <= args.num_patients <= MAX_PATIENTS:
        parser.error(f"--num_patients={args.num_patients}: must be in [1, {MAX_PATIENTS}]")
    if args.num_slices < 1:
        parser.error(f"--num_slices={args.num_slices}: must be at least 1")
    if args.size < 32 or args.size % 16:
        parser.error(f"--size={args.size}: must be a multiple of 16, at least 32")
    if args.seed < 0:
        parser.error(f"--seed={args.seed}: must be non-negative")
    try:
        names = write_phantoms(args.out_dir, num_patients=args.num_patients, num_slices=args.num_slices,
                               size=args.size, seed=args.seed, overwrite=args.overwrite)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    masks = glob.glob(os.path.join(args.out_dir, "*", "*_mask.tif"))
    with_tumour = sum(bool(tifffile.imread(m).any()) for m in masks)
    print(f"wrote {len(names)} patients, {len(masks)} slices ({with_tumour} with tumour) "
          f"of {args.size}x{args.size} to {os.path.abspath(args.out_dir)}")


if __name__ == "__main__":
    main()
