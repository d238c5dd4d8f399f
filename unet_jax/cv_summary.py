"""Cross-validation summary: the validation scores of every fold's run, per
fold and pooled over all folds' cases, and the post-processing chosen on the
pooled cases (nnU-Net's way), written into every fold's workdir so that an
ensemble of the folds predicts with it.

  python -m unet_jax.cv_summary --workdirs=runs/f0,runs/f1,runs/f2,runs/f3,runs/f4 --out=runs/cv

Each workdir is a run trained to the end (its val_metrics.json holds the
best epoch's scores per validation case). Writes <out>/cv_summary.json and
<out>/cv_summary.csv (one row per fold and a pooled row "all": cases, and per
foreground class the mean Dice, Dice after keeping the largest connected
component, and HD95, then their mean over the classes), prints the table, and
with --write_postprocessing=true (the default) replaces each run's
postprocessing.json by the cross-validation choice.

Reads JSON and NumPy only (no JAX), so it runs in a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Sequence

import numpy as np

from unet_jax import postprocessing
from unet_jax.data import SPLITS_FILE
from unet_jax.errors import DataError
from unet_jax.files import atomic_write, write_json

VAL_METRICS = "val_metrics.json"  # written by train.py at the end of a run


def read_fold(workdir: str) -> dict:
    """A fold's run: {"workdir", "fold", "rows" (val_metrics.json's per-case
    rows), "data_dir"}, the fold and data folder from config.json's data.fold
    and data.data_dir when it has them, else from val_metrics.json; DataError
    in one line naming the file when it cannot be used."""
    path = os.path.join(workdir, VAL_METRICS)
    if not os.path.isdir(workdir):
        raise DataError(f"{workdir}: no such folder; pass the workdirs of the fold runs to --workdirs")
    if not os.path.exists(path):
        raise DataError(f"{workdir}: no {VAL_METRICS}; train it to the end first (python -m unet_jax.main "
                        f"--mode=train --workdir={workdir} ...)")
    summary = _read_json(path, f"train {workdir} to the end again")
    rows = summary.get("patients") if isinstance(summary, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "patient" in r for r in rows):
        raise DataError(f"{path}: no per-case rows (patients); train {workdir} to the end again")
    if not rows:
        raise DataError(f"{path}: no validation cases; give folds that validate on cases")
    config_path = os.path.join(workdir, "config.json")
    config = _read_json(config_path, "restore the run's config.json") if os.path.exists(config_path) else {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    fold = data.get("fold")
    return {"workdir": workdir, "fold": summary.get("fold") if fold is None else fold, "rows": rows,
            "data_dir": data.get("data_dir") or summary.get("data_dir")}


def _read_json(path: str, fix: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e}); {fix}") from None


def foreground_classes(folds: Sequence[dict]) -> list[int]:
    """The foreground classes the rows score: k of every dice_3d_class<k>
    column, else [1]; DataError when the folds differ or a row lacks a column
    the summary reads."""
    found = {}
    for fold in folds:
        keys = {k for row in fold["rows"] for k in row}
        classes = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"dice_3d_class(\d+)", k))) or [1]
        needed = [c for k in classes for c in postprocessing.dice_columns(k, max(classes) + 1)]
        row = next((r for r in fold["rows"] if any(c not in r for c in needed)), None)
        if row is not None:
            missing = next(c for c in needed if c not in row)
            raise DataError(f"{os.path.join(fold['workdir'], VAL_METRICS)}: case {row['patient']} has no {missing} "
                            "(a segmentation run's Dice per case); evaluate it again with this version")
        found[fold["workdir"]] = classes
    first = folds[0]["workdir"]
    for workdir, classes in found.items():
        if classes != found[first]:
            raise DataError(f"{first} scores classes {found[first]}, {workdir} {classes}; summarise runs of one "
                            "task")
    return found[first]


def check_folds(folds: Sequence[dict]) -> list[str]:
    """DataError when two folds validate the same case; warnings (lines) when
    the folds' cases differ from the prepared data's splits.json."""
    seen = {}
    for fold in folds:
        for row in fold["rows"]:
            case = str(row["patient"])
            if case in seen:
                other = seen[case]
                raise DataError(f"case {case} is validated by both {other} and {fold['workdir']}" +
                                (" (the same run twice)" if other == fold["workdir"] else "") +
                                "; give each fold's run once, folds of one splits.json")
            seen[case] = fold["workdir"]
    warnings = []
    data_dir = folds[0]["data_dir"]
    path = os.path.join(data_dir, SPLITS_FILE) if data_dir else None
    if path is None or not os.path.exists(path):
        return warnings
    try:
        with open(path) as f:
            splits = [fold["val"] for fold in json.load(f)["folds"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{path}: unreadable ({e}); the folds were not compared with it"]
    for fold in folds:
        k = fold["fold"]
        if isinstance(k, int) and 0 <= k < len(splits) and len(splits[k]) != len(fold["rows"]):
            warnings.append(f"{fold['workdir']}: fold {k} validated {len(fold['rows'])} cases, but {path} holds "
                            f"{len(splits[k])} for it")
    total = sum(len(s) for s in splits)
    if len(seen) != total:
        warnings.append(f"the {len(folds)} runs validated {len(seen)} cases, but {path} has {total} in "
                        f"{len(splits)} folds; the pooled row and the post-processing use the {len(seen)}")
    return warnings


def _mean(rows: Sequence[dict], key: str) -> float:
    """The mean of a column over the rows that have it, skipping NaN and null."""
    values = np.array([row.get(key) for row in rows], np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def summary_row(fold, rows: Sequence[dict], classes: Sequence[int]) -> dict:
    """fold, cases, and per class `dice`, `dice_lcc` and `hd95` (suffixed
    _class<k> with several classes, then their means over the classes
    unsuffixed): each the mean over `rows`, skipping NaN."""
    row = {"fold": fold, "cases": len(rows)}
    several = len(classes) > 1
    for name, column in (("dice", "dice_3d"), ("dice_lcc", "dice_3d_lcc"), ("hd95", "hd95")):
        sources = [f"{column}_class{k}" if several else column for k in classes]
        if not any(key in r for r in rows for key in sources):
            continue  # HD95 where the rows hold it
        per_class = [_mean(rows, key) for key in sources]
        if several:
            row.update({f"{name}_class{k}": v for k, v in zip(classes, per_class)})
        defined = [v for v in per_class if not math.isnan(v)]
        row[name] = float(np.mean(defined)) if defined else float("nan")
    return row


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """The rows as aligned text, numbers to 4 decimals."""
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in cells)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def summarize(workdirs: Sequence[str], out: str, write_postprocessing: bool = True) -> dict:
    """Reads the folds' runs, writes <out>/cv_summary.json and .csv, chooses
    post-processing on the pooled cases and (with `write_postprocessing`)
    writes it into every workdir; returns the summary. DataError on bad input."""
    workdirs = [os.path.abspath(w) for w in workdirs]
    if not workdirs:
        raise DataError("--workdirs: no runs given; name the fold runs' workdirs, separated by commas")
    folds = [read_fold(w) for w in workdirs]
    classes = foreground_classes(folds)
    warnings = check_folds(folds)
    pooled = [row for fold in folds for row in fold["rows"]]
    rows = [summary_row("?" if f["fold"] is None else f["fold"], f["rows"], classes) for f in folds]
    rows.append(summary_row("all", pooled, classes))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    choice = postprocessing.choose(pooled, max(classes) + 1,
                                   chosen_on=f"cross-validation: {len(pooled)} cases of {len(folds)} folds")
    summary = {"workdirs": workdirs, "classes": classes, "columns": columns, "rows": rows,
               "postprocessing": choice, "postprocessing_written": write_postprocessing, "warnings": warnings}
    try:
        write_json(os.path.join(out, "cv_summary.json"), summary)
        with atomic_write(os.path.join(out, "cv_summary.csv"), newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: (round(v, 6) if isinstance(v, float) and not math.isnan(v) else
                                  "" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
        if write_postprocessing:
            for workdir in workdirs:
                postprocessing.write(workdir, choice)
    except OSError as e:
        raise DataError(f"{e.filename or out}: cannot write there ({e.strerror}); make it writable, choose another "
                        "--out, or pass --write_postprocessing=false") from None
    return summary


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: give true or false")


def main(argv: Sequence[str] | None = None) -> int:
    """The command; 0 on success, 2 with one `error:` line on bad input."""
    parser = argparse.ArgumentParser(prog="python -m unet_jax.cv_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdirs", required=True, help="the fold runs' workdirs, separated by commas")
    parser.add_argument("--out", help="folder for cv_summary.json and .csv (default: cv/ beside the first workdir)")
    parser.add_argument("--write_postprocessing", type=_bool, default=True,
                        help="write the pooled post-processing choice into every workdir (true or false)")
    args = parser.parse_args(argv)
    workdirs = [w for w in args.workdirs.split(",") if w.strip()]
    if not workdirs:
        parser.error("--workdirs: no runs given; name the fold runs' workdirs, separated by commas")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(workdirs[0])), "cv")
    try:
        summary = summarize(workdirs, out, args.write_postprocessing)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    print(format_table(summary["rows"], summary["columns"]))
    choice = summary["postprocessing"]
    kept = postprocessing.classes_of(choice)
    print(f"post-processing ({choice['chosen_on']}): " +
          (f"keep the largest connected component of class {', '.join(map(str, kept))}" if kept else
           "keep every component") + "; " +
          ", ".join(f"class {k}: Dice {v['dice']:.4f} -> {v['dice_lcc']:.4f} with it"
                    for k, v in choice["classes"].items()))
    where = (f"written to the {len(summary['workdirs'])} workdirs' {postprocessing.FILE}"
             if args.write_postprocessing else "not written to the workdirs")
    print(f"{where}; summary in {os.path.abspath(out)}/cv_summary.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
