"""Convert a folder of medical volumes (NIfTI, NRRD, MHA/MHD, DICOM series) to
patient-split TFRecord shards, with their geometry.

Two layouts are read:
  decathlon  the Medical Segmentation Decathlon / nnU-Net layout:
             imagesTr/<case>_0000.nii.gz, <case>_0001.nii.gz, ... and labelsTr/<case>.nii.gz
  folders    a folder per case (at any depth below --data_dir) holding one file
             (or one DICOM series folder) per channel and the label, picked by glob
             patterns: --channels='FLAIR*,T1_*' --label='GOLD_STANDARD*'; or several
             cases side by side, told apart by a {case} placeholder:
             --channels='{case}_image.nrrd' --label='{case}_label.nrrd'

Every case is checked (each channel on its label's grid, labels integral,
no NaN or infinite voxels, a label present unless --unlabelled), its labels
remapped (--label_map), optionally resampled (--spacing) and cropped to the
bounding box of its foreground (--crop: the --mask, else the non-zero voxels), and its intensities normalised
per channel (--intensity: MRI z-scored over the non-zero or --mask foreground,
the nnU-Net convention; CT clipped to a Hounsfield window and scaled to [0, 1]).
The manifest records every setting, so prediction can repeat it exactly.

Each case becomes one tf.train.Example (or, with --slices=axial|coronal|sagittal,
one per slice, so the 2-D models train on the same data) with
  image        raw float32 bytes, [X, Y, Z, C] (slices: [A, B, C], padded to --slice_size)
  image_dtype  "float32"
  mask         raw uint8 bytes, [X, Y, Z] labels (slices: [A, B])
  shape        int64, the image's shape
  patient_id, patient_index, slice (0 for a whole volume, else the slice number)
  spacing      float, voxel size (mm) of the record's axes
  geometry     JSON: the source grid (spacing, origin, direction, shape) and how the
               record was cut from it (resampled shape, crop box, slice axis, padding),
               so predictions can be written back onto the original grid
  foreground_voxels  labelled voxels (label > 0)

Usage:
  python -m data_prep.volumes --data_dir=../shared/data/ms_lesions_ljubljana --out_dir=data/wmh \
      --channels='FLAIR*' --label='GOLD_STANDARD*' --val_cases=patient07 --test_fraction=0
  python -m data_prep.volumes --data_dir=Task04_Hippocampus --out_dir=data/hippo --intensity=zscore
  python -m data_prep.volumes --data_dir=ct_cases --out_dir=data/ct --channels='*image*' \
      --label='*label*' --intensity=ct --ct_window=lung
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

import numpy as np
from tqdm import tqdm

from data_prep import common
from unet_jax.data import PLANS_FILE
from unet_jax.data.medical_io import MAX_VOXELS, Geometry, plane_axis
from unet_jax.data.tfrecord import encode_example
from unet_jax.errors import DataError
from unet_jax.files import write_json
from unet_jax.preprocess.intensity import CT_WINDOWS, INTENSITIES, TARGET_INTENSITIES, TARGET_PERCENTILE
from unet_jax.preprocess.layouts import Case, scan_decathlon, scan_folders
from unet_jax.preprocess.plans import read_plans
from unet_jax.preprocess.problems import Problem
from unet_jax.preprocess.volumes import Settings, parse_label_map, preprocess, read_case


# --- one case's records ---------------------------------------------------------------

def load_case(case: Case, settings: Settings, *, max_voxels: int = MAX_VOXELS
              ) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """Reads, checks and converts one case: `read_case`, then `preprocess`."""
    channels, labels, foreground = read_case(case, settings.label_map, target=settings.target is not None,
                                             max_voxels=max_voxels)
    return preprocess(channels, labels, foreground, settings, case.channels[0], max_voxels=max_voxels)


def slice_records(image: np.ndarray, labels: np.ndarray, axis: int, size: tuple[int, int], name: str):
    """Yields (slice number, image [A, B, C], labels [A, B], padding) for every
    slice along `axis`, zero-padded (centred) to `size`."""
    image, labels = np.moveaxis(image, axis, 0), np.moveaxis(labels, axis, 0)
    shape = image.shape[1:3]
    if shape[0] > size[0] or shape[1] > size[1]:
        raise DataError(f"{name}: slices of {shape[0]}x{shape[1]} exceed --slice_size={size[0]},{size[1]}; "
                        "raise it")
    pad = [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(size, shape)]
    for number in range(image.shape[0]):
        yield (number, np.pad(image[number], pad + [(0, 0)]), np.pad(labels[number], pad), pad)


# --- the converter -------------------------------------------------------------------

def prepare(data_dir: str, out_dir: str, *, layout: str = "auto", channels: str = "", label: str = "",
            mask: str = "", intensity: str = "", ct_window: str = "", label_map: str = "",
            spacing: str = "", crop: bool = True, slices: str = "", slice_size: str = "", target: str = "",
            target_intensity: str = "input_percentile", lung_sides: bool = False,
            unlabelled: bool = False, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
            num_folds: int = 0, fold: int = 0, val_cases: str = "", test_cases: str = "", cv_folds: int = 0,
            plans: str = "", records_per_shard: int = 64, skip_bad: bool = False, overwrite: bool = False,
            anonymise: bool = False, anonymise_map: str = "", max_voxels: int = MAX_VOXELS,
            progress: bool = True, command: str | None = None) -> dict:
    """Validates the cases under `data_dir`, splits them by case and writes
    shards plus manifest.json to `out_dir`; returns the manifest. Raises
    DataError on the first bad case unless `skip_bad` (bad cases are then
    left out and listed in the manifest). With `target` (a pattern, folders
    layout) each case's target volume replaces its label: float records for a
    regression. `lung_sides` relabels the two largest foreground components of
    each case 1 and 2 by position along the volume's first axis (left/right
    lungs as two classes). With `cv_folds=K` every case outside the test
    split is written to `train` (no `val`) and splits.json holds K
    cross-validation folds over them (config.data.fold picks one). `plans`
    (data_prep.plan's plans.json) sets the spacing, intensity method and CT
    window that are not given, and is copied beside the manifest for
    configs/auto_3d.py. With `anonymise`, cases are written under pseudonyms
    (common.Pseudonyms). Images and resampled grids over `max_voxels` are
    refused before they are allocated. String arguments are the CLI's."""
    data_dir = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: no such folder; point --data_dir at a folder of cases")
    common.check_output_dir(out_dir, overwrite, data_dir=data_dir)
    ids = common.pseudonyms(anonymise, anonymise_map, data_dir, out_dir)
    if layout == "auto":
        layout = "decathlon" if os.path.isdir(os.path.join(data_dir, "imagesTr")) else "folders"
    if layout == "decathlon":
        cases, problems = scan_decathlon(data_dir, unlabelled)
    elif layout == "folders":
        patterns = [p.strip() for p in channels.split(",") if p.strip()]
        if target and label:
            raise DataError(f"--label={label!r} and --target={target!r}: a case has labels (segmentation) or a "
                            "target (regression); give one")
        if not patterns or not (label or target or unlabelled):
            raise DataError(f"{data_dir}: the per-case layout needs --channels='FLAIR*,...' and --label='...' "
                            "(or --target='...' for a regression, or --unlabelled)")
        cases, problems = scan_folders(data_dir, patterns, label or target or None, mask or None, unlabelled)
    else:
        raise DataError(f"--layout={layout!r}: choose auto, decathlon or folders")
    if not cases:
        raise DataError(f"{data_dir}: no cases found" + (f" ({problems[0]})" if problems else
                        "; check --channels/--label or the folder"))
    if problems and not skip_bad:
        raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    if target and lung_sides:
        raise DataError("--lung_sides relabels segmentation labels; it does not apply to a --target")
    if target and layout != "folders":
        raise DataError("--target needs the per-case layout (--layout=folders with --channels)")
    if target_intensity not in TARGET_INTENSITIES:
        raise DataError(f"--target_intensity={target_intensity!r}: choose one of {', '.join(TARGET_INTENSITIES)}")
    plan, planned_labels = None, None
    if plans:
        planned = read_plans(plans)
        plan = planned["plan"]
        lookup = parse_label_map(label_map)
        planned_labels = {lookup.get(v, v) for v in planned["fingerprint"].get("labels", [])} or None
        if len(plan["normalization"]) != len(cases[0].channels):
            raise DataError(f"{plans}: planned for {len(plan['normalization'])} channel(s), but the cases here have "
                            f"{len(cases[0].channels)}; plan this folder with python -m data_prep.plan")
        spacing = spacing or ",".join(str(v) for v in plan["target_spacing"])
        intensity = intensity or ",".join(plan["normalization"])
        ct_window = ct_window or (",".join(str(v) for v in plan["ct_window"]) if plan.get("ct_window") else "")
    settings = _settings(len(cases[0].channels), intensity or "zscore", ct_window or "lung_wide", label_map, spacing,
                         crop, slices, slice_size, target_intensity if target else None)
    if records_per_shard < 1:
        raise DataError(f"--records_per_shard={records_per_shard}: must be at least 1")
    names = [c.name for c in cases]
    if cv_folds and (unlabelled or num_folds or val_cases):
        raise DataError(f"--cv_folds={cv_folds} makes the validation folds itself; drop --num_folds, --val_cases "
                        "and --unlabelled")
    if cv_folds:
        val_fraction = 0.0
    split = ({"train": [], "val": [], "test": [], "predict": sorted(names)} if unlabelled else
             common.assign_split(names, common.comma_list(val_cases), common.comma_list(test_cases), "case",
                                 val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                 num_folds=num_folds, fold=fold))
    folds = common.cv_folds(split["train"], cv_folds, seed) if cv_folds else None
    public = {n: n for n in names}  # the names written
    if ids:
        public = {c.name: ids.name(c.name, [f for f in (*c.channels, c.label, c.mask) if f]) for c in cases}
        split, folds = ids.rename(split, public), folds and [ids.rename(f, public) for f in folds]
        cases = [dataclasses.replace(c, name=public[c.name]) for c in cases]
    by_name = {c.name: c for c in cases}
    all_files = [f for c in cases for f in (*c.channels, c.label, c.mask) if f and os.path.isfile(f)]
    splits, num_classes, num_bytes, start = {}, 2, 0, time.time()
    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress)
    with common.atomic_output_dir(out_dir, overwrite, data_dir=data_dir) as tmp, bar:
        for split_name, members in split.items():
            writer = common.ShardedWriter(tmp, split_name, records_per_shard)
            per_case, examples = [], 0
            for case_name in members:
                case = by_name[case_name]
                try:
                    image, labels, geometry, stats = load_case(case, settings, max_voxels=max_voxels)
                    if planned_labels and not target and (stray := sorted(set(np.unique(labels).tolist())
                                                                          - planned_labels)):
                        raise DataError(f"{case.label}: label {stray[0]} is not among the labels "
                                        f"{sorted(planned_labels)} that {plans} was planned on; fix the label "
                                        "file, or plan this folder again")
                    if lung_sides:  # the first array axis is x, left-right, in medical_io's arrays
                        labels = common.split_left_right(labels, axis=0)
                except DataError as e:
                    if not skip_bad:
                        raise
                    problems.append(Problem(*str(e).split(": ", 1)))
                    bar.update()
                    continue
                num_bytes += sum(os.path.getsize(f) for f in (*case.channels, case.label) if f and os.path.isfile(f))
                if not target:
                    num_classes = max(num_classes, int(labels.max()) + 1)
                id_features = {"patient_id": case.name, "patient_index": len(per_case)}
                records = 0
                for record in _records(image, labels, geometry, settings, id_features, case):
                    writer.write(record)
                    records += 1
                examples += records
                per_case.append({"patient": case.name, "shape": list(image.shape[:-1]), "records": records,
                                 "foreground_voxels": int(np.count_nonzero(labels)),
                                 **({} if target else {"labels": np.unique(labels).tolist()}), **stats})
                bar.update()
            splits[split_name] = {"num_patients": len(per_case), "num_examples": examples,
                                  "num_slices": examples, "patients": per_case, "shards": writer.close()}
        if not any(s["num_patients"] for s in splits.values()):
            raise DataError(f"{data_dir}: every case was skipped; drop --skip_bad to see the first problem")
        seconds = time.time() - start
        manifest = {
            "dataset": "volumes",
            "command": common.OMITTED if ids else command or common.command_line(),
            "source": common.OMITTED if ids else data_dir,
            **({"anonymised": ids.manifest()} if ids else {}),
            "source_layout": layout,
            "source_files": len(all_files),
            "source_checksum": common.file_list_checksum(data_dir, all_files),
            "layout": "slices" if settings.slices else "volumes",
            "image_shape": _common_shape(splits, settings),
            "num_channels": len(settings.intensity),
            "channels": [(ids.scrub if ids else str)(os.path.basename(p)) for p in cases[0].channels]
            if layout == "decathlon"
            else [p.strip() for p in channels.split(",")],
            "label_pattern": label or None, "mask_pattern": mask or None,  # prediction finds files as here
            "image_dtype": "float32",
            "mask": "float32 target" if target else "uint8 labels",
            **({"task": "regression", "target": {"method": target_intensity, "pattern": target, "channel": 0,
                                                 "percentile": TARGET_PERCENTILE}} if target else
               {"num_classes": num_classes}),
            "labelled": not unlabelled,
            "preprocessing": {
                "intensity": [{"method": m, **({"window": list(settings.ct_window)} if m == "ct" else {}),
                               **({"foreground": "mask" if mask else "nonzero"} if m == "zscore" else {})}
                              for m in settings.intensity],
                "label_map": {str(k): v for k, v in sorted(settings.label_map.items())},
                "lung_sides": lung_sides,
                "spacing": list(settings.spacing) if settings.spacing else None,
                "crop": ("mask" if mask else "nonzero") + " bounding box" if settings.crop else None,
                "slices": settings.slices, "slice_size": list(settings.slice_size) if settings.slice_size else None},
            "split": {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction,
                      "num_folds": num_folds, "fold": fold,
                      "val_cases": [public[c] for c in common.comma_list(val_cases)],
                      "test_cases": [public[c] for c in common.comma_list(test_cases)], "cv_folds": cv_folds},
            "plans": (PLANS_FILE if ids else os.path.abspath(plans)) if plans else None,
            "splits": splits,
            "throughput": {"cases_per_second": round(len(cases) / seconds, 3),
                           "source_mb_per_second": round(num_bytes / 1e6 / seconds, 2)},
        }
        if folds:
            kept = {p["patient"] for p in splits["train"]["patients"]}  # --skip_bad may have dropped some
            common.write_splits(tmp, [{k: [c for c in f[k] if c in kept] for k in f} for f in folds], seed)
        if plans and ids:  # the plans name the raw folder, the command that planned it and the cases
            fingerprint = {**planned["fingerprint"],
                           "case_names": [ids.name(n) for n in planned["fingerprint"].get("case_names", [])]}
            write_json(os.path.join(tmp, PLANS_FILE), {**planned, "source": common.OMITTED, "command": common.OMITTED,
                                                       "fingerprint": fingerprint})
        elif plans:
            shutil.copyfile(plans, os.path.join(tmp, PLANS_FILE))
        common.write_manifest(tmp, manifest, problems, ids)
    return manifest


def _floats(text: str, flag: str, count: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise DataError(f"{flag}={text!r}: give comma-separated numbers") from None
    if count is not None and len(values) != count:
        raise DataError(f"{flag}={text!r}: give {count} numbers")
    return values


def _settings(num_channels: int, intensity: str, ct_window: str, label_map: str, spacing: str, crop: bool,
              slices: str, slice_size: str, target: str | None = None) -> Settings:
    methods = tuple(m.strip() for m in intensity.split(","))
    if len(methods) == 1:
        methods = methods * num_channels
    if len(methods) != num_channels or any(m not in INTENSITIES for m in methods):
        raise DataError(f"--intensity={intensity!r}: give one of {', '.join(INTENSITIES)} for all channels, or one "
                        f"per channel ({num_channels} here)")
    window = CT_WINDOWS.get(ct_window) or _floats(ct_window, "--ct_window", 2)
    if window[0] >= window[1]:
        raise DataError(f"--ct_window={ct_window!r}: the lower bound must be below the upper; or name one of "
                        f"{', '.join(CT_WINDOWS)}")
    voxel = _floats(spacing, "--spacing") if spacing else None
    if voxel is not None and min(voxel) <= 0:
        raise DataError(f"--spacing={spacing!r}: voxel sizes must be positive")
    if slices and slices not in ("axial", "coronal", "sagittal"):
        raise DataError(f"--slices={slices!r}: choose axial, coronal or sagittal")
    size = tuple(int(v) for v in _floats(slice_size, "--slice_size", 2)) if slice_size else None
    if slices and size is None:
        raise DataError("--slices needs --slice_size=H,W: every slice is padded to it so slices batch together")
    return Settings(methods, tuple(window), parse_label_map(label_map), voxel, crop, slices or None, size, target)


def _records(image, labels, geometry, settings: Settings, ids: dict, case: Case):
    common_features = {**ids, "image_dtype": "float32", "spacing": np.asarray(geometry["spacing"], np.float32)}
    if labels.dtype == np.float32:  # a regression target
        common_features["mask_dtype"] = "float32"
    if not settings.slices:
        yield encode_example({**common_features, "image": image.tobytes(), "mask": labels.tobytes(),
                              "shape": image.shape, "slice": 0, "geometry": json.dumps(geometry),
                              "foreground_voxels": int(np.count_nonzero(labels))})
        return
    source = Geometry.from_dict(geometry["source"])
    axis = plane_axis(source, settings.slices)
    in_plane = [s for i, s in enumerate(geometry["spacing"]) if i != axis]  # the record's two axes
    common_features["spacing"] = np.asarray(in_plane, np.float32)
    for number, im, lab, pad in slice_records(image, labels, axis, settings.slice_size, case.channels[0]):
        yield encode_example({**common_features, "image": np.ascontiguousarray(im).tobytes(),
                              "mask": np.ascontiguousarray(lab).tobytes(), "shape": im.shape, "slice": number,
                              "geometry": json.dumps({**geometry, "slice_axis": axis, "pad": pad}),
                              "foreground_voxels": int(np.count_nonzero(lab))})


def _common_shape(splits: dict, settings: Settings) -> list[int] | None:
    """The records' shape when they all share one (slices, or equal volumes), else None."""
    if settings.slices:
        return [*settings.slice_size, len(settings.intensity)]
    shapes = {tuple(p["shape"]) for s in splits.values() for p in s["patients"]}
    return [*shapes.pop(), len(settings.intensity)] if len(shapes) == 1 else None


def _summary(m: dict) -> str:
    """What `main` reports after `wrote <out_dir>:`: cases and records per split, classes, skipped, throughput."""
    splits = ", ".join(f"{k} {v['num_patients']} cases/{v['num_examples']} records" for k, v in m["splits"].items())
    t = m["throughput"]
    kind = "a regression target" if m.get("task") == "regression" else f"{m['num_classes']} classes"
    return (f"{splits}; {kind}; skipped {len(m['skipped'])}; {t['cases_per_second']} cases/s, "
            f"{t['source_mb_per_second']} MB/s of source files")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.volumes", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_flags(parser, source="a folder of cases",
                            too_large="a volume, or a resampled grid, of more voxels", unit="case", bad="cases",
                            pseudonyms="cases", records_per_shard=64)
    parser.add_argument("--layout", default="auto", choices=("auto", "decathlon", "folders"),
                        help="auto: decathlon when data_dir holds imagesTr/, else folders")
    parser.add_argument("--channels", default="", help="folders layout: one glob per channel, comma-separated")
    parser.add_argument("--label", default="", help="folders layout: glob of the label file")
    parser.add_argument("--target", default="", help="folders layout: glob of a regression target volume (e.g. "
                                                     "'T1POST*'), instead of --label")
    parser.add_argument("--target_intensity", default="input_percentile", choices=TARGET_INTENSITIES,
                        help=f"input_percentile: divide the target by the {TARGET_PERCENTILE}th percentile of the "
                             "first input channel (undone for predictions); none: as stored")
    parser.add_argument("--lung_sides", action="store_true",
                        help="label the two largest components 1 and 2 by position along x (left/right lungs)")
    parser.add_argument("--mask", default="", help="folders layout: glob of a foreground mask for the z-score "
                                                   "(default: the non-zero voxels)")
    parser.add_argument("--intensity", default="",
                        help=f"per channel ({', '.join(INTENSITIES)}), one for all or comma-separated (default: "
                             "the --plans' methods, else zscore)")
    parser.add_argument("--ct_window", default="",
                        help=f"Hounsfield window 'lower,upper' or one of {', '.join(CT_WINDOWS)} (default: the "
                             "--plans' window, else lung_wide)")
    parser.add_argument("--plans", default="", help="plans.json of python -m data_prep.plan: its target spacing, "
                                                    "intensity methods and CT window, unless given here")
    parser.add_argument("--label_map", default="", help="merge or rename labels, e.g. '1,2,3,4->1' or '4->3'")
    parser.add_argument("--spacing", default="", help="resample to this voxel size in mm, e.g. '1,1,3'")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="crop each case to the bounding box of its --mask, else of its non-zero voxels")
    parser.add_argument("--slices", default="", help="write 2-D slices (axial, coronal or sagittal), not volumes")
    parser.add_argument("--slice_size", default="", help="with --slices: pad every slice to 'H,W'")
    parser.add_argument("--unlabelled", action="store_true", help="cases without labels, for prediction only")
    parser.add_argument("--cv_folds", type=int, default=0,
                        help="write every non-test case to train and K cross-validation folds over them to "
                             "splits.json (config.data.fold picks one; 0: off)")
    parser.add_argument("--val_cases", default="", help="comma-separated cases for validation (overrides fractions)")
    parser.add_argument("--test_cases", default="", help="comma-separated cases for test (overrides fractions)")
    args = parser.parse_args(argv)
    return common.run_cli(prepare, args, args.out_dir, _summary)


if __name__ == "__main__":
    sys.exit(main())
