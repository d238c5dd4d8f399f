"""The predict command: `predict_files` (every scan under an input into an
output folder), `run` (a Predictor from workdirs, then predict_files), and
its absl flags, defined by `define_flags` where a command line is parsed
(unet_jax.main, and `python -m unet_jax.predict`), not when the package is
imported."""

from __future__ import annotations

import os
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from unet_jax import metrics, parallel
from unet_jax import postprocessing as postprocessing_lib
from unet_jax.errors import ConfigError, DataError, UnetJaxError
from unet_jax.data.medical_io import MAX_VOXELS
from unet_jax.evaluate import as_slices
from unet_jax.files import write_json
from unet_jax.predict import outputs
from unet_jax.predict.predictor import Predictor, describe
from unet_jax.predict.sources import OUTPUT_FORMATS, VolumeScan, find_scans


def predict_files(predictor: Predictor, input_path: str, output: str, *, labels: str | None = None,
                  save_probabilities: bool = False, overwrite: bool = False, skip_bad: bool = False,
                  output_format: str | None = None, overlays: bool = True, progress: bool = True) -> dict:
    """Predicts every scan under `input_path` into `output` (see the package
    doc); returns {"cases": predictions.csv rows, "scores": per-case scores
    or None, "summary": their means or None, "skipped": [(input, reason)]}."""
    output = os.path.abspath(output)
    scans, problems = find_scans(input_path, predictor.manifest)
    if problems and not skip_bad:
        raise DataError(f"{problems[0]}" + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""))
    if output_format == "dicom" and any(not isinstance(s, VolumeScan) for s in scans):
        raise DataError("--output_format=dicom: only volume scans can be written as DICOM series")
    planned = {s.name: s.output_paths(output, output_format, save_probabilities, overlays) for s in scans}
    tables = [os.path.join(output, n) for n in ("predictions.csv", "scores.csv", "scores_summary.json")]
    inputs = {pathlib.Path(os.path.realpath(p)) for s in scans for p in (*s.paths, *s.label_files(labels))}
    around = {folder: i for i in inputs for folder in i.parents}  # the folders that hold an input
    for path in [p for paths in planned.values() for p in paths.values()] + tables:
        real = pathlib.Path(os.path.realpath(path))
        # An output on an input, inside one (a kaggle_3m folder) or around one (a case folder replaced by a series).
        hit = next((p for p in (real, *real.parents) if p in inputs), None) or around.get(real)
        if hit:
            raise DataError(f"{path}: would overwrite an input ({hit}); choose an --output folder apart from the "
                            "scans and labels")
        outputs.check_replaceable(path, overwrite)
    writes = jax.process_index() == 0  # every process predicts (windows are sharded), one writes
    if writes:
        os.makedirs(output, exist_ok=True)
    rows, score_rows, skipped = [], [], [(p.file, p.reason) for p in problems]
    task = predictor.task
    # The classes cut to their largest component, recorded with every case.
    kept = " ".join(map(str, postprocessing_lib.classes_of(predictor.postprocess)))
    for scan in tqdm(scans, desc="cases", unit="case", disable=not progress):
        start = time.time()
        paths = planned[scan.name]
        try:
            loaded = scan.read(predictor.max_voxels)
            target = None if labels is None else scan.read_labels(loaded, labels, predictor)
            prediction = predictor.predict(loaded.image, geometry=loaded.geometry, foreground=loaded.foreground,
                                           name=scan.paths[0])
            if writes:
                scan.write(loaded, prediction, paths, task=task, overwrite=overwrite,
                           save_probabilities=save_probabilities, sixteen_bit=predictor.sixteen_bit)
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append((scan.paths[0], str(e)))
            rows.append({"case": scan.name, "status": "skipped", "input": scan.paths[0], "note": str(e)})
            continue
        spacing = loaded.spacing
        summary = outputs.case_summary(prediction, spacing, task)
        if target is not None:
            slice_spacing = None if spacing is None else (
                [spacing[-1], *spacing[:-1]] if len(spacing) == 3 else [1.0, *spacing])
            pred = prediction.labels.astype(task.output_dtype)
            volumes_ = {0: (as_slices(pred), as_slices(target), np.arange(as_slices(pred).shape[0]))}
            score = task.table(volumes_, [scan.name], None if spacing is None else {0: slice_spacing})[0]
            score_rows.append({k: v for k, v in score.items() if k != "patient_index"})
        if "overlay" in paths and writes:
            channel = min(scan.display_channel, loaded.image.shape[-1] - 1)
            outputs.overlay(paths["overlay"], scan.name, loaded.image[..., channel], prediction, target, summary,
                            task, radiological=loaded.geometry is not None, slice_numbers=loaded.slice_numbers)
        for note in prediction.notes:
            logging.warning(note)
        rows.append({"case": scan.name, "status": "ok", "input": scan.paths[0], "output": paths["mask"],
                     "shape": "x".join(map(str, prediction.labels.shape)),
                     "spacing": "" if spacing is None else "x".join(f"{v:g}" for v in spacing),
                     "seconds": round(time.time() - start, 3), **summary, "largest_component_of": kept,
                     "note": " ".join(prediction.notes)})
    result = {"cases": rows, "scores": None, "summary": None, "skipped": skipped}
    if labels is not None:
        result["scores"] = score_rows
        result["summary"] = metrics.mean_over_patients(score_rows, task.case_metrics) if score_rows else {}
    if not writes:
        return result
    outputs.write_csv(os.path.join(output, "predictions.csv"), rows, outputs.CSV_COLUMNS)
    if labels is not None:
        outputs.write_csv(os.path.join(output, "scores.csv"), score_rows,
                          list(dict.fromkeys(k for r in score_rows for k in r)))
        write_json(os.path.join(output, "scores_summary.json"),
                   {"workdir": predictor.workdir, "postprocessing": predictor.postprocess,
                    "input": os.path.abspath(input_path), "labels": labels,
                    "num_cases": len(score_rows), "mean": result["summary"],
                    "skipped": [{"file": f, "reason": r} for f, r in skipped]})
    return result


def run(workdir: str, input_path: str, output: str, **options) -> dict:
    """The command: a Predictor from `workdir` (runs separated by commas: an
    ensemble), then `predict_files`; logs a summary."""
    if not input_path or not output:
        raise ConfigError("--mode=predict needs --input=SCAN_OR_FOLDER and --output=FOLDER")
    predictor = Predictor.from_workdirs([w.strip() for w in workdir.split(",") if w.strip()],
                                        tta=options.pop("tta", False), lcc=options.pop("lcc", False),
                                        postprocessing=options.pop("postprocessing", "auto"),
                                        batch_size=options.pop("batch_size", None),
                                        max_voxels=options.pop("max_voxels", MAX_VOXELS))
    result = predict_files(predictor, input_path, output, **options)
    done = [r for r in result["cases"] if r["status"] == "ok"]
    seconds = sum(r["seconds"] for r in done)
    print(f"predicted {len(done)} case(s) into {os.path.abspath(output)} "
          f"({seconds / max(len(done), 1):.2f} s per case)")
    if predictor.postprocess:
        print(f"post-processing: {describe(predictor.postprocess)}")
    if result["summary"]:
        print("scores: " + ", ".join(f"{k}={v:.4f}" for k, v in result["summary"].items()))
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])}:\n" + "\n".join(f"  {f}: {r}" for f, r in result["skipped"]))
    return result


def define_flags() -> None:
    """The command's flags (--input, --output, ...; the entry point defines --workdir)."""
    flags.DEFINE_string("input", None, "predict: a scan (file or DICOM folder) or a folder of scans.")
    flags.DEFINE_string("output", None, "predict: folder for the label maps, predictions.csv and overlays/.")
    flags.DEFINE_bool("tta", False, "predict: average over flips of every spatial axis (4x in 2-D, 8x in 3-D).")
    flags.DEFINE_bool("lcc", False, "predict: keep only the largest connected component of each class.")
    flags.DEFINE_enum("postprocessing", "auto", ["auto", "none"],
                      "predict: auto applies the run's postprocessing.json (an ensemble: the classes most runs "
                      "chose); none keeps every component.")
    flags.DEFINE_bool("save_probabilities", False, "predict: also write the softmax/sigmoid maps as float volumes.")
    flags.DEFINE_bool("overwrite", False, "predict: replace existing output files, and case folders predict wrote.")
    flags.DEFINE_bool("skip_bad", False, "predict: skip unreadable or mismatched cases, list them at the end.")
    flags.DEFINE_string("labels", None, "predict: score against labels: a file, a folder of <case>.<ext>, or a glob "
                                        "in each case's folder ('GOLD_STANDARD*'; {case} allowed); for kaggle_3m "
                                        "folders any pattern means the <patient>_<n>_mask.tif beside each slice.")
    flags.DEFINE_enum("output_format", None, list(OUTPUT_FORMATS), "predict: write volumes in this format rather "
                                                                   "than the input's.")
    flags.DEFINE_integer("batch_size", None, "predict: windows per device batch (default: the run's "
                                             "eval_batch_size).")
    flags.DEFINE_bool("overlays", True, "predict: write overlays/<case>.png.")
    flags.DEFINE_integer("max_voxels", MAX_VOXELS, "predict: refuse a scan, or a grid it is resampled to, of more "
                                                   "voxels (times channels) than this: raise it for a really large "
                                                   "scan.")


def run_from_flags(workdir: str) -> dict:
    f = flags.FLAGS
    return run(workdir, f.input, f.output, tta=f.tta, lcc=f.lcc, postprocessing=f.postprocessing,
               batch_size=f.batch_size, labels=f.labels,
               save_probabilities=f.save_probabilities, overwrite=f.overwrite, skip_bad=f.skip_bad,
               output_format=f.output_format, overlays=f.overlays, max_voxels=f.max_voxels)


def main(argv) -> None:
    """The entry point of `--mode=predict` and `python -m unet_jax.predict`:
    the command on the parsed flags, any UnetJaxError in one line."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        parallel.initialize_distributed()
        run_from_flags(flags.FLAGS.workdir)
    except UnetJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
