"""Cross-validation summaries of hand-written fold runs (no training): pooled
and per-fold means against NumPy, the post-processing chosen on the pooled
cases written into every fold's workdir, and the one-line refusals."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from unet_jax import cv_summary, postprocessing
from unet_jax.files import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(rng, cases, classes):
    """val_metrics.json rows as segmentation_table writes them, for `classes` foreground classes."""
    rows = []
    for case in cases:
        dice = rng.uniform(0.3, 0.9, classes)
        lcc = np.clip(dice + rng.normal([0.08, -0.08][:classes] if classes > 1 else 0.03, 0.02), 0, 1)
        hd95 = rng.uniform(1, 20, classes)
        row = {"patient": case, "dice_3d": dice.mean(), "dice_3d_lcc": lcc.mean(), "hd95": hd95.mean()}
        if classes > 1:
            for k in range(classes):
                row.update({f"dice_3d_class{k + 1}": dice[k], f"dice_3d_lcc_class{k + 1}": lcc[k],
                            f"hd95_class{k + 1}": hd95[k]})
        rows.append(row)
    return rows


def _folds(tmp_path, classes=2, cases_per_fold=(4, 3, 3), splits=None):
    """Fold workdirs f0.. with val_metrics.json and config.json (data.fold, data.data_dir), and the data
    folder's splits.json with `splits` val cases per fold (default: the folds' own)."""
    rng = np.random.default_rng(classes)
    data_dir = tmp_path / "prepared"
    data_dir.mkdir(exist_ok=True)
    workdirs, names = [], []
    for fold, n in enumerate(cases_per_fold):
        cases = [f"case{fold}{i}" for i in range(n)]
        names.append(cases)
        workdir = tmp_path / f"f{fold}"
        write_json(workdir / "val_metrics.json", {"best_epoch": 3, "split": "val", "fold": fold,
                                                  "data_dir": str(data_dir), "metrics": {},
                                                  "patients": _rows(rng, cases, classes)})
        write_json(workdir / "config.json", {"data": {"fold": fold, "data_dir": str(data_dir)}})
        workdirs.append(str(workdir))
    write_json(data_dir / "splits.json", {"num_folds": len(names), "seed": 0,
                                          "folds": [{"train": [], "val": v} for v in (splits or names)]})
    return workdirs


def _val_rows(workdir):
    with open(os.path.join(workdir, "val_metrics.json")) as f:
        return json.load(f)["patients"]


def test_pooled_and_per_fold_means_equal_numpy_and_the_choice_reaches_every_fold(tmp_path, capsys):
    workdirs = _folds(tmp_path)
    out = tmp_path / "cv"
    assert cv_summary.main([f"--workdirs={','.join(workdirs)}", f"--out={out}"]) == 0
    summary = json.loads((out / "cv_summary.json").read_text())
    rows = {str(r["fold"]): r for r in summary["rows"]}
    assert list(rows) == ["0", "1", "2", "all"]
    pooled = [r for w in workdirs for r in _val_rows(w)]
    assert rows["all"]["cases"] == 10 and rows["0"]["cases"] == 4
    for k in (1, 2):
        for name, column in (("dice", "dice_3d"), ("dice_lcc", "dice_3d_lcc"), ("hd95", "hd95")):
            assert rows["all"][f"{name}_class{k}"] == pytest.approx(np.mean([r[f"{column}_class{k}"] for r in pooled]))
            assert rows["1"][f"{name}_class{k}"] == pytest.approx(
                np.mean([r[f"{column}_class{k}"] for r in _val_rows(workdirs[1])]))
    assert rows["all"]["dice"] == pytest.approx((rows["all"]["dice_class1"] + rows["all"]["dice_class2"]) / 2)
    with open(out / "cv_summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["fold"] for r in table] == ["0", "1", "2", "all"]
    assert float(table[-1]["dice_lcc_class2"]) == pytest.approx(rows["all"]["dice_lcc_class2"], abs=1e-6)
    printed = capsys.readouterr()
    assert printed.err == ""  # splits.json agrees: no warning
    assert "all" in printed.out and "dice_lcc_class1" in printed.out
    # LCC raised class 1's Dice on these cases and lowered class 2's.
    expected = postprocessing.choose(pooled, 3, chosen_on="cross-validation: 10 cases of 3 folds")
    assert expected["keep_largest_component"] == [1]
    assert summary["postprocessing"] == json.loads(json.dumps(expected))
    for workdir in workdirs:
        assert postprocessing.read(workdir) == summary["postprocessing"]


def test_one_class_and_no_postprocessing_written(tmp_path, capsys):
    workdirs = _folds(tmp_path, classes=1, cases_per_fold=(3, 3))
    assert cv_summary.main([f"--workdirs={','.join(workdirs)}", "--write_postprocessing=false"]) == 0
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())  # --out: cv/ beside the workdirs
    assert summary["columns"] == ["fold", "cases", "dice", "dice_lcc", "hd95"]
    pooled = [r for w in workdirs for r in _val_rows(w)]
    assert summary["rows"][-1]["dice_lcc"] == pytest.approx(np.mean([r["dice_3d_lcc"] for r in pooled]))
    assert not any(os.path.exists(os.path.join(w, postprocessing.FILE)) for w in workdirs)
    assert "not written to the workdirs" in capsys.readouterr().out


def test_a_fold_count_unlike_splits_json_warns(tmp_path, capsys):
    workdirs = _folds(tmp_path, cases_per_fold=(2, 2), splits=[["case00", "case01", "extra"], ["case10", "case11"]])
    assert cv_summary.main([f"--workdirs={','.join(workdirs)}", f"--out={tmp_path / 'cv'}"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {workdirs[0]}: fold 0 validated 2 cases" in err
    assert "validated 4 cases, but" in err and "has 5 in 2 folds" in err


def _error(capsys, argv):
    assert cv_summary.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_overlapping_folds_and_missing_runs_are_refused_in_one_line(tmp_path, capsys):
    workdirs = _folds(tmp_path)
    err = _error(capsys, [f"--workdirs={workdirs[0]},{workdirs[1]},{workdirs[0]}"])
    assert "case case00 is validated by both" in err and workdirs[0] in err
    path = os.path.join(workdirs[2], "val_metrics.json")
    summary = json.loads(open(path).read())
    summary["patients"][0]["patient"] = "case11"  # also in fold 1
    write_json(path, summary)
    err = _error(capsys, [f"--workdirs={','.join(workdirs)}"])
    assert f"case case11 is validated by both {workdirs[1]} and {workdirs[2]}" in err
    os.remove(path)
    err = _error(capsys, [f"--workdirs={','.join(workdirs)}"])
    assert f"{workdirs[2]}: no val_metrics.json; train it to the end first" in err
    open(path, "w").write("{")
    assert path in _error(capsys, [f"--workdirs={','.join(workdirs)}"])
    write_json(path, {"patients": [{"patient": "x", "dice_3d": 0.5}]})  # a row of an older version
    assert "has no dice_3d_lcc" in _error(capsys, [f"--workdirs={','.join(workdirs)}"])
    assert not (tmp_path / "cv").exists()  # nothing written on bad input


def test_the_command_needs_no_jax(tmp_path):
    workdirs = _folds(tmp_path, cases_per_fold=(2, 2))
    code = ("import sys; from unet_jax import cv_summary; "
            f"assert cv_summary.main(['--workdirs={','.join(workdirs)}']) == 0; "
            "assert 'jax' not in sys.modules, 'imported JAX'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "post-processing (cross-validation: 4 cases of 2 folds)" in result.stdout
