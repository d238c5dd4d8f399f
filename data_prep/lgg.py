"""Convert a Kaggle LGG `kaggle_3m` folder to patient-split TFRecord shards.

Each slice becomes one tf.train.Example with
  image         raw uint8 bytes, H*W*C (pre-contrast, FLAIR, post-contrast)
  mask          raw uint8 bytes, H*W, values 0/1
  shape         int64 [H, W, C]
  patient_id    the patient folder name
  patient_index position of the patient in its split's sorted patient list
  slice         slice number from the file name (records sorted by it)
  tumor_pixels  number of mask pixels set
  channel_mean, channel_std  float [C], the patient's intensity statistics per
                channel over the voxels where any channel is non-zero (for the
                per-patient z-score of the input pipeline)

With --volume_depth=D, each patient's slices are stacked into volumes instead:
consecutive blocks of D slices, the last block padded with zero slices, one
record per block with image [H, W, D, C], mask [H, W, D], shape [H, W, D, C],
`slice` the block's first slice number and `slices` the D slice numbers (-1
for padding). --size shrinks slices in-plane by block averaging (the mask is
the average thresholded at 0.5), e.g. to 128x128 for the 3-D U-Net.

Usage:
  python -m data_prep.lgg --data_dir=kaggle_3m --out_dir=data/lgg
  python -m data_prep.lgg --data_dir=kaggle_3m --out_dir=data/lgg_3d --volume_depth=16 --size=128
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from data_prep import common
from unet_jax.data import medical_io
from unet_jax.data.tfrecord import encode_example
from unet_jax.errors import DataError
from unet_jax.preprocess import intensity
from unet_jax.preprocess.lgg import patient_files, read_tiff, shrink
from unet_jax.preprocess.problems import Problem

_PATIENT = re.compile(r"^TCGA_[A-Za-z0-9]+_[A-Za-z0-9]+_\d+$")


@dataclass(frozen=True)
class Slice:
    patient: str
    number: int
    image: str
    mask: str


def scan(data_dir: str) -> tuple[dict[str, list[Slice]], list[Problem]]:
    """Pairs images with masks in every patient folder, slices in numeric order.

    Returns the slices per patient and the files that could not be paired.
    Files at the top level (the Kaggle `data.csv`, a README) are ignored.
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder; point --data_dir at the kaggle_3m folder "
                        "(see README: Getting the LGG data)")
    patients = sorted(d for d in os.listdir(data_dir)
                      if _PATIENT.match(d) and os.path.isdir(os.path.join(data_dir, d)))
    if not patients:
        raise DataError(f"{data_dir}: no patient folders named like TCGA_CS_4942_19970222; "
                        "point --data_dir at the kaggle_3m folder")
    result: dict[str, list[Slice]] = {}
    problems: list[Problem] = []
    for patient in patients:
        folder = os.path.join(data_dir, patient)
        images, masks, unexpected = patient_files(folder)
        problems += unexpected
        for n in sorted(images.keys() - masks.keys()):
            problems.append(Problem(images[n], "image without a mask; add the _mask.tif or remove the image"))
        for n in sorted(masks.keys() - images.keys()):
            problems.append(Problem(masks[n], "mask without an image; add the image or remove the mask"))
        slices = [Slice(patient, n, images[n], masks[n]) for n in sorted(images.keys() & masks.keys())]
        if not slices:
            problems.append(Problem(folder, "patient folder holds no image/mask pairs"))
        result[patient] = slices
    return result, problems


def load_slice(s: Slice, image_shape: tuple[int, ...] | None, max_voxels: int = medical_io.MAX_VOXELS
               ) -> tuple[np.ndarray, np.ndarray]:
    """Reads and validates one image/mask pair; the mask comes back as 0/1 uint8."""
    image = read_tiff(s.image, max_voxels)
    mask = read_tiff(s.mask, max_voxels)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise DataError(f"{s.image}: expected an HxWxC uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image_shape is not None and image.shape != image_shape:
        raise DataError(f"{s.image}: image shape {image.shape} differs from the dataset's {image_shape}; "
                        "resample it or pass --skip_bad")
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != image.shape[:2]:
        raise DataError(f"{s.mask}: mask shape {mask.shape} does not match its image's {image.shape[:2]}; "
                        "fix the mask or pass --skip_bad")
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 255}:
        mask = (mask == 255).astype(np.uint8)
    elif not set(values.tolist()) <= {0, 1}:
        raise DataError(f"{s.mask}: mask values {values[:8].tolist()} are not binary (0/255 or 0/1); "
                        "binarise the mask or pass --skip_bad")
    return image, mask.astype(np.uint8)


def volume_blocks(numbers: list[int], images: list[np.ndarray], masks: list[np.ndarray], depth: int):
    """Yields (slice numbers [depth], image [H, W, depth, C], mask [H, W, depth])
    for consecutive blocks of `depth` slices; the last is padded with zero
    slices numbered -1."""
    for start in range(0, len(numbers), depth):
        take = slice(start, start + depth)
        pad = depth - len(numbers[take])
        image = np.stack(images[take] + [np.zeros_like(images[0])] * pad, axis=2)
        mask = np.stack(masks[take] + [np.zeros_like(masks[0])] * pad, axis=2)
        yield np.array(numbers[take] + [-1] * pad), image, mask


def prepare(data_dir: str, out_dir: str, *, val_fraction: float = 0.18, test_fraction: float = 0.1,
            seed: int = 0, num_folds: int = 0, fold: int = 0, records_per_shard: int = 512,
            volume_depth: int = 0, size: int = 0, skip_bad: bool = False, overwrite: bool = False,
            anonymise: bool = False, anonymise_map: str = "", max_voxels: int = medical_io.MAX_VOXELS,
            progress: bool = True, command: str | None = None) -> dict:
    """Validates `data_dir`, splits it by patient and writes shards plus manifest.json to `out_dir`.

    One record per slice, or with `volume_depth` one per block of that many
    slices; `size` shrinks slices in-plane (0 keeps them). Returns the
    manifest. Raises DataError on the first bad file unless `skip_bad`, in
    which case bad slices are left out and listed in the manifest. With
    `anonymise`, patients are written under pseudonyms (common.Pseudonyms).
    A TIFF over `max_voxels` values is refused before it is decoded.
    """
    data_dir = os.path.abspath(data_dir)
    common.check_output_dir(out_dir, overwrite, data_dir=data_dir)
    ids = common.pseudonyms(anonymise, anonymise_map, data_dir, out_dir)
    if records_per_shard < 1:
        raise DataError(f"--records_per_shard={records_per_shard}: must be at least 1")
    if volume_depth < 0 or size < 0:
        raise DataError(f"--volume_depth={volume_depth}, --size={size}: must be 0 (off) or positive")
    slices, problems = scan(data_dir)
    if problems and not skip_bad:
        raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    split = common.split_patients(list(slices), val_fraction=val_fraction, test_fraction=test_fraction,
                                  seed=seed, num_folds=num_folds, fold=fold)
    all_files = [f for ss in slices.values() for s in ss for f in (s.image, s.mask)] + [p.file for p in problems]
    if ids:
        names = {p: ids.name(p, [f for s in ss for f in (s.image, s.mask)]) for p, ss in slices.items()}
        split, slices = ids.rename(split, names), {names[p]: ss for p, ss in slices.items()}
    image_shape: tuple[int, ...] | None = None  # of the source slices
    record_shape: tuple[int, ...] | None = None  # of the records written
    splits: dict[str, dict] = {}
    total = sum(len(slices[p]) for p in slices)
    with common.atomic_output_dir(out_dir, overwrite, data_dir=data_dir) as tmp, \
            tqdm(total=total, desc="slices", unit="slice", disable=not progress) as bar:
        for name in common.SPLITS:
            writer = common.ShardedWriter(tmp, name, records_per_shard)
            written = tumor = examples = 0
            per_patient = []
            for patient_index, patient in enumerate(split[name]):
                numbers, images, masks = [], [], []
                for s in slices[patient]:
                    bar.update()
                    try:
                        image, mask = load_slice(s, image_shape, max_voxels)
                    except DataError as e:
                        if not skip_bad:
                            raise
                        problems.append(Problem(*str(e).split(": ", 1)))
                        continue
                    image_shape = image.shape
                    if size:
                        image, mask = shrink(image, mask, size, s.image)
                    numbers.append(s.number)
                    images.append(image)
                    masks.append(mask)
                if not numbers:  # every slice of the patient was skipped
                    per_patient.append({"patient": patient, "num_slices": 0, "num_tumor_slices": 0})
                    continue
                mean, std = intensity.intensity_stats(images)
                if volume_depth:
                    blocks = volume_blocks(numbers, images, masks, volume_depth)
                else:
                    blocks = zip(numbers, images, masks)
                for number, image, mask in blocks:
                    writer.write(encode_example({
                        "image": image.tobytes(), "mask": mask.tobytes(), "shape": image.shape,
                        "patient_id": patient, "patient_index": patient_index,
                        "slice": int(number[0]) if volume_depth else number,
                        **({"slices": number} if volume_depth else {}),
                        "tumor_pixels": int(mask.sum()), "channel_mean": mean, "channel_std": std}))
                    record_shape = image.shape
                    examples += 1
                n_tumor = sum(int(m.any()) for m in masks)
                per_patient.append({"patient": patient, "num_slices": len(numbers), "num_tumor_slices": n_tumor,
                                    "channel_mean": np.round(mean, 3).tolist(),
                                    "channel_std": np.round(std, 3).tolist()})
                written += len(numbers)
                tumor += n_tumor
            splits[name] = {"num_patients": len(split[name]), "num_slices": written, "num_examples": examples,
                            "num_tumor_slices": tumor, "patients": per_patient, "shards": writer.close()}
        if image_shape is None:
            raise DataError(f"{data_dir}: no valid slices were found; check the folder or drop --skip_bad "
                            "to see the first problem")
        manifest = {
            "dataset": "lgg_kaggle_3m",
            "command": common.OMITTED if ids else command or common.command_line(),
            "source": common.OMITTED if ids else data_dir,
            **({"anonymised": ids.manifest()} if ids else {}),
            "source_files": len(all_files),
            "source_checksum": common.file_list_checksum(data_dir, all_files),
            "image_shape": list(record_shape),
            "source_image_shape": list(image_shape),
            "layout": "volumes" if volume_depth else "slices",
            "volume_depth": volume_depth,
            "mask": "uint8 0/1, H*W*D" if volume_depth else "uint8 0/1, H*W",
            "num_classes": 2,
            "intensity_stats": "per patient and channel, over the voxels where any channel is non-zero",
            "split": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                      "num_folds": num_folds, "fold": fold},
            "splits": splits,
        }
        common.write_manifest(tmp, manifest, problems, ids)
    return manifest


def _summary(m: dict) -> str:
    """What `main` reports after `wrote <out_dir>:`: patients, slices and records per split, files skipped."""
    splits = ", ".join(f"{k} {v['num_patients']} patients/{v['num_slices']} slices/{v['num_examples']} records "
                       f"({v['num_tumor_slices']} with tumour)" for k, v in m["splits"].items())
    return f"{splits}; skipped {len(m['skipped'])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_flags(parser, source="the kaggle_3m folder (one folder per patient)",
                            too_large="a TIFF of more values", unit="patient", bad="slices", pseudonyms="patients",
                            records_per_shard=512, val_fraction=0.18, test_fraction=0.1,
                            split_note="0.18 and 0.1 give the 79/20/11 split of the reference on 110 patients")
    parser.add_argument("--volume_depth", type=int, default=0,
                        help="stack each patient's slices into volumes of this many slices (0: one record per slice)")
    parser.add_argument("--size", type=int, default=0,
                        help="shrink slices in-plane to size x size by block averaging (0: keep)")
    args = parser.parse_args(argv)
    return common.run_cli(prepare, args, args.out_dir, _summary)


if __name__ == "__main__":
    sys.exit(main())
