"""Segment new scans with a trained run: files in, label maps out, in each
input's own format and geometry.

  python -m unet_jax.predict --workdir=runs/wmh --input=scans/ --output=predictions/
  python -m unet_jax.predict --workdir=runs/lgg --input=kaggle_3m/TCGA_CS_4941_19960909 --output=out \
      --tta --labels='*_mask.tif'
  python -m unet_jax.main --mode=predict --workdir=runs/wmh --input=patient.nii.gz --output=out
  python -m unet_jax.predict --workdir=runs/f0,runs/f1,runs/f2,runs/f3,runs/f4 --input=scans/ --output=out

The workdir holds everything prediction needs: config.json (the model, its
precision, the sliding window) and train_manifest.json (channel patterns,
intensity normalisation, spacing, crop, slice plane); nothing is re-typed.
Several workdirs, separated by commas (the folds of a cross-validation, say),
predict as an ensemble: each run's blend of windows (after TTA) is averaged
before the labels are taken; the runs must share task, classes, channels,
preprocessing and input size.

Post-processing: a run's postprocessing.json (written at the end of training
from its validation cases, or by unet_jax.cv_summary from all folds' cases)
keeps only the largest connected component of the classes it chose; an
ensemble applies the classes a majority of its runs chose. `--postprocessing=none`
turns that off, `--lcc` applies it to every class.

`--input` is a file or a folder of:
  - NIfTI/NRRD/MHA volumes, or DICOM series folders (one channel each);
  - the per-case folders of data_prep.volumes, found by the run's channel patterns;
  - Decathlon-style <case>_0000.nii.gz, <case>_0001.nii.gz, ... files (or imagesTs/);
  - kaggle_3m patient folders of TIFF slices, or a folder of them;
  - PNG/TIFF pictures.
Outputs in `--output`: the label map of each case in its own format and
geometry (<case>.nii.gz, a DICOM series folder, <patient>/<patient>_<n>_mask.tif
with 0/255, <name>_mask.png; a regression's outputs as float32 volumes and TIFFs,
or PNGs in 16 bits where the picture or the run's targets were 16-bit), with
--save_probabilities the softmax or sigmoid maps as float volumes,
overlays/<case>.png, predictions.csv (volume in ml, connected lesions, largest
lesion, mean probability, the classes cut to their largest component, seconds
per case), and with --labels scores.csv and scores_summary.json (the training
metrics per case).

What is refused, in one line: an output on, inside or around a scan or a
--labels file; with --overwrite, a case folder predict did not write (those
it writes hold a .unet_jax_predict file); two scans of one case name (a.nii
and a.nii.gz: one would overwrite the other's outputs); a scan, or a grid it
is resampled to, of more than --max_voxels voxels; a model whose outputs are
NaN (damaged weights). --skip_bad skips unreadable cases and reports them.

`Predictor` is the same in a notebook:

  predictor = Predictor.from_workdir("runs/wmh")
  volume = read_volume("patient.nii.gz")
  labels, probabilities = predictor(volume.array, spacing=volume.geometry.spacing)
The package: `predictor` (Predictor: arrays in, labels out), `sources` (one
class per input kind: find, read, labels, output paths, writing), `outputs`
(mask images, the CSV tables, overlays, the marker), `cli` (predict_files,
the command and its flags).
"""

from unet_jax.predict.cli import predict_files, run
from unet_jax.predict.outputs import MARKER
from unet_jax.predict.predictor import Prediction, Predictor
from unet_jax.predict.sources import KaggleScan, LoadedScan, PictureScan, Scan, VolumeScan, find_scans

__all__ = ["MARKER", "KaggleScan", "LoadedScan", "PictureScan", "Prediction", "Predictor", "Scan", "VolumeScan",
           "find_scans", "predict_files", "run"]
