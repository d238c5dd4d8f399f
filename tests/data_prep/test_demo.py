"""The demo configs' data: prepared once under the workdir, by data_prep.demo's
functions and its command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

from data_prep import demo

ROOT = Path(__file__).resolve().parents[2]


def test_demo_data_is_prepared_once_and_again_when_it_lacks_intensity_statistics(tmp_path):
    prepared = demo.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32, val_fraction=0.34,
                                      test_fraction=0.34)
    manifest_path = os.path.join(prepared, "manifest.json")
    manifest = json.load(open(manifest_path))
    assert manifest["intensity_stats"] and len(manifest["splits"]["train"]["patients"]) == 1
    first = os.path.getmtime(manifest_path)
    assert demo.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32) == prepared
    assert os.path.getmtime(manifest_path) == first  # kept
    del manifest["intensity_stats"]  # as an older data_prep wrote it
    json.dump(manifest, open(manifest_path, "w"))
    demo.prepare_demo(str(tmp_path), num_patients=3, num_slices=4, size=32, val_fraction=0.34,
                           test_fraction=0.34)
    assert json.load(open(manifest_path))["intensity_stats"]


def test_cli_prints_the_prepared_folder_and_names_an_unknown_kind_in_one_line(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "data_prep.demo", f"--workdir={tmp_path}", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    options = json.dumps(dict(num_patients=3, num_slices=4, size=32, val_fraction=0.34, test_fraction=0.34))
    done = cli("--kind=lgg", f"--options={options}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [os.path.join(str(tmp_path), "data", "prepared")]
    refused = cli("--kind=lungs")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: config.data.synthetic.kind='lungs': choose one of lgg, lesions_3d, chest_ct, pairs_2d"]
