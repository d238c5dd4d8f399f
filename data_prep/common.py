"""What every dataset converter shares: patient splits, atomic output folders,
sharded TFRecord writing and the manifest.

Output layout of a prepared folder:
  manifest.json
  <split>-<i>-of-<n>.tfrecord          framed tf.train.Example records
  <split>-<i>-of-<n>.tfrecord.index    int64 [offset, length] per record
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from unet_jax.data import MANIFEST, SPLITS_FILE
from unet_jax.data.medical_io import MAX_VOXELS
from unet_jax.data.tfrecord import TFRecordWriter, index_path
from unet_jax.errors import DataError
from unet_jax.files import temporary_folder, write_json
from unet_jax.preprocess.problems import Problem

SPLITS = ("train", "val", "test")


def split_patients(patients: Sequence[str], *, val_fraction: float, test_fraction: float,
                   seed: int, num_folds: int = 0, fold: int = 0) -> dict[str, list[str]]:
    """Assigns each patient to exactly one of train/val/test.

    Patients are shuffled with `seed`. Without folds, the first
    round(test_fraction*N) go to test and the next round(val_fraction*N) to
    val. With `num_folds=K`, the shuffled patients are cut into K near-equal
    folds, fold `fold` is the test set, and val is taken from the rest by
    `val_fraction`. Each requested non-empty split gets at least one patient.
    Fractions summing to 1 (`test_fraction=1`, say) put every patient in val
    and test and none in train: an external cohort to evaluate a run on.
    """
    patients = sorted(patients)
    n = len(patients)
    if not 0 <= val_fraction <= 1 or not 0 <= test_fraction <= 1 or val_fraction + test_fraction > 1:
        raise DataError(f"split fractions val={val_fraction} test={test_fraction}: each must be in [0, 1] "
                        "and their sum at most 1 (1: no training split, for evaluation only)")
    evaluation_only = val_fraction + test_fraction == 1
    if evaluation_only and num_folds:
        raise DataError(f"--num_folds={num_folds} with val and test fractions summing to 1 leaves no fold to train "
                        "on; drop --num_folds")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(n)]

    def take(fraction: float, available: int) -> int:
        return 0 if fraction == 0 else max(1, round(fraction * n)) if available > 1 else 0

    if num_folds:
        if num_folds < 2 or not 0 <= fold < num_folds:
            raise DataError(f"--num_folds={num_folds} --fold={fold}: need num_folds >= 2 and 0 <= fold < num_folds")
        if num_folds > n:
            raise DataError(f"--num_folds={num_folds} exceeds the {n} patients available")
        folds = np.array_split(np.arange(n), num_folds)
        test = [order[i] for i in folds[fold]]
        rest = [p for p in order if p not in set(test)]
    else:
        n_test = n if test_fraction == 1 else min(take(test_fraction, n), n - 1 if val_fraction else n)
        test, rest = order[:n_test], order[n_test:]
    n_val = len(rest) if evaluation_only else take(val_fraction, len(rest))
    val, train = rest[:n_val], rest[n_val:]
    if not train and not evaluation_only:
        raise DataError(f"only {n} patients: the split leaves none for training; lower the val/test fractions "
                        "(or make them sum to 1 to prepare an evaluation-only folder)")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def cv_folds(cases: Sequence[str], num_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """K-fold cross-validation over `cases`: shuffled with `seed`, cut into
    `num_folds` near-equal folds; fold k validates on its cases and trains on
    the others, so every case is validated exactly once (nnU-Net's 5 folds)."""
    cases = sorted(cases)
    if num_folds < 2 or num_folds > len(cases):
        raise DataError(f"--cv_folds={num_folds}: need 2 <= folds <= the {len(cases)} training cases")
    order = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
    held = [set(order[i] for i in part) for part in np.array_split(np.arange(len(cases)), num_folds)]
    return [{"train": [c for c in cases if c not in val], "val": sorted(val)} for val in held]


def write_splits(out_dir: str, folds: list[dict[str, list[str]]], seed: int) -> None:
    """Writes splits.json: the folds of `cv_folds`, read by config.data.fold."""
    write_json(os.path.join(out_dir, SPLITS_FILE), {"num_folds": len(folds), "seed": seed, "folds": folds})


def file_list_checksum(root: str, files: Sequence[str]) -> str:
    """sha256 over the sorted relative paths and sizes of the source files."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{os.path.relpath(f, root)}\t{os.path.getsize(f)}\n".encode())
    return h.hexdigest()


def _contains(outer: str, inner: str) -> bool:
    """Whether folder `inner` is `outer` or lies below it, after resolving symlinks and `..`."""
    outer, inner = os.path.realpath(outer), os.path.realpath(inner)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _written_by_us(out_dir: str, own_files: re.Pattern | None) -> bool:
    """Whether the non-empty folder `out_dir` may be replaced: it holds a
    data_prep manifest.json, or (with `own_files`) only files whose path
    relative to it matches `own_files` (what a phantom writer writes)."""
    if own_files is None:
        return os.path.isfile(os.path.join(out_dir, MANIFEST))
    return all(own_files.fullmatch(os.path.relpath(os.path.join(folder, f), out_dir).replace(os.sep, "/"))
               for folder, _, files in os.walk(out_dir) for f in files)


def check_output_dir(out_dir: str, overwrite: bool, *, data_dir: str | None = None,
                     own_files: re.Pattern | None = None) -> None:
    """Refuses (DataError) an `out_dir` that contains `data_dir` or lies inside
    it (replacing it would delete the source), and an existing non-empty one
    unless `overwrite`, and even then unless data_prep wrote it (a
    manifest.json, or only files matching `own_files`), so --overwrite never
    deletes a user's folder. Converters call it before their slow reading."""
    out_dir = os.path.abspath(out_dir)
    if data_dir is not None and (_contains(out_dir, data_dir) or _contains(data_dir, out_dir)):
        raise DataError(f"--out_dir={out_dir} and --data_dir={os.path.abspath(data_dir)}: one folder contains the "
                        "other, and writing the output would replace the source; choose an --out_dir outside "
                        "--data_dir")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: a file, not a folder; choose another --out_dir")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise DataError(f"{out_dir}: output already exists; pass --overwrite to replace it")
        if not _written_by_us(out_dir, own_files):
            raise DataError(f"{out_dir}: holds files that data_prep did not write, so --overwrite will not replace "
                            "it; choose another --out_dir or empty it yourself")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, overwrite: bool, *, data_dir: str | None = None,
                      own_files: re.Pattern | None = None) -> Iterator[str]:
    """Yields a temporary sibling folder that replaces `out_dir` on success,
    after `check_output_dir`'s checks. On any error the temporary folder is
    removed and `out_dir` is left untouched."""
    check_output_dir(out_dir, overwrite, data_dir=data_dir, own_files=own_files)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = temporary_folder(out_dir)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out_dir):
        old = temporary_folder(out_dir)  # an empty folder: the old one renames over it
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old:
        shutil.rmtree(old)


class ShardedWriter:
    """Writes one split's records into shards of at most `records_per_shard`.

    Shards are named `<split>-<i>-of-<n>.tfrecord` on close, once n is known
    (bad slices skipped on the way can change it).
    """

    def __init__(self, out_dir: str, split: str, records_per_shard: int):
        self._dir, self._split, self._per_shard = out_dir, split, records_per_shard
        self._writer: TFRecordWriter | None = None
        self._partial: list[str] = []
        self._counts: list[int] = []

    def write(self, record: bytes) -> None:
        if self._writer is None or len(self._writer) == self._per_shard:
            self._close_current()
            self._partial.append(os.path.join(self._dir, f"{self._split}-{len(self._partial):05d}.partial"))
            self._writer = TFRecordWriter(self._partial[-1])
        self._writer.write(record)

    def _close_current(self) -> None:
        if self._writer is not None:
            self._counts.append(len(self._writer))
            self._writer.close()
            self._writer = None

    def close(self) -> list[dict]:
        """Finishes the last shard; returns [{"file", "num_records"}] per shard."""
        self._close_current()
        shards = []
        for i, (partial, count) in enumerate(zip(self._partial, self._counts)):
            name = f"{self._split}-{i:05d}-of-{len(self._partial):05d}.tfrecord"
            os.replace(partial, os.path.join(self._dir, name))
            os.replace(index_path(partial), index_path(os.path.join(self._dir, name)))
            shards.append({"file": name, "num_records": count})
        return shards


def command_line() -> str:
    """The command that is running, as it could be pasted into a shell."""
    return " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), "-m",
                                               _module_name(), *sys.argv[1:]])


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def write_manifest(out_dir: str, manifest: dict, problems: Sequence[Problem], ids: Pseudonyms | None) -> None:
    """Adds the skipped files to `manifest` (under pseudonyms with --anonymise, whose map is then saved beside the
    source) and writes it as manifest.json (temporary name, then rename)."""
    manifest["skipped"] = ids.skipped(problems) if ids else [{"file": p.file, "reason": p.reason} for p in problems]
    if ids:
        ids.save()
    write_json(os.path.join(out_dir, MANIFEST), {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest})


OMITTED = "omitted (--anonymise)"


class Pseudonyms:
    """--anonymise: patient and case IDs replaced by keyed hashes (HMAC-SHA256
    with a random secret key, 12 hex digits: `case_3f9a1c2b7e04`), so nothing
    under --out_dir names a patient. The map back (pseudonym -> original ID and
    source files) and the key live in one JSON file kept beside the source,
    `<data_dir>.ids.json` by default, never inside --out_dir; preparing the same
    data again reuses its key and so gives the same pseudonyms."""

    def __init__(self, data_dir: str, out_dir: str, map_path: str = ""):
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.abspath(map_path or self.data_dir.rstrip(os.sep) + ".ids.json")
        if _contains(out_dir, self.path):
            raise DataError(f"--anonymise_map={self.path}: inside --out_dir={os.path.abspath(out_dir)}, which would "
                            "then name the patients it hides; keep the map beside the source")
        self.ids: dict[str, dict] = {}
        self.key = secrets.token_bytes(32)
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    saved = json.load(f)
                self.key, self.ids = bytes.fromhex(saved["key"]), dict(saved["ids"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DataError(f"{self.path}: not a readable ID map of --anonymise ({type(e).__name__}: {e}); "
                                "restore it, or pass --anonymise_map=NEW_PATH for new pseudonyms") from None

    def name(self, original: str, files: Sequence[str] = ()) -> str:
        """The pseudonym of `original`, recorded in the map with its source `files`."""
        pseudonym = "case_" + hmac.new(self.key, original.encode(), hashlib.sha256).hexdigest()[:12]
        entry = self.ids.setdefault(pseudonym, {"id": original, "files": []})
        if entry["id"] != original:
            raise DataError(f"{self.path}: IDs {entry['id']} and {original} hash to one pseudonym; pass "
                            "--anonymise_map=NEW_PATH for a new key")
        entry["files"] = sorted(set(entry["files"]) | set(files))
        return pseudonym

    @staticmethod
    def rename(split: dict[str, list[str]], names: dict[str, str]) -> dict[str, list[str]]:
        """`split` (lists of original IDs) with the IDs replaced by `names[id]`."""
        return {k: sorted(names[n] for n in members) for k, members in split.items()}

    def scrub(self, text: str) -> str:
        """Free text (a skipped file's path and reason) with the source folder
        and every mapped ID replaced by `<data_dir>` and its pseudonym."""
        text = text.replace(self.data_dir, "<data_dir>")
        for pseudonym, entry in sorted(self.ids.items(), key=lambda kv: -len(kv[1]["id"])):
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(entry['id'])}(?![A-Za-z0-9])", pseudonym, text)
        return text

    def skipped(self, problems: Sequence[Problem]) -> list[dict]:
        """The manifest's list of skipped files: each file's name (up to its
        first dot) gets a pseudonym too, since it may name a patient that no
        case of the output holds; then paths and reasons are scrubbed."""
        for p in problems:
            if stem := os.path.basename(p.file).split(".")[0]:
                self.name(stem, [p.file])
        return [{"file": self.scrub(p.file), "reason": self.scrub(p.reason)} for p in problems]

    def save(self) -> None:
        """Writes the map (temporary name, then rename), readable by its owner only from the start: it holds the key."""
        write_json(self.path, {"data_dir": self.data_dir, "key": self.key.hex(), "ids": self.ids}, permissions=0o600)

    def manifest(self) -> dict:
        """What a manifest says instead of the command line and source folder it leaves out."""
        return {"ids": "HMAC-SHA256 of each ID with a secret key, 12 hex digits", "command": OMITTED,
                "source": OMITTED, "map": "beside the source (--anonymise_map), never in this folder"}


def pseudonyms(anonymise: bool, anonymise_map: str, data_dir: str, out_dir: str) -> Pseudonyms | None:
    """The converters' --anonymise and --anonymise_map: a `Pseudonyms`, or None to keep the IDs."""
    if anonymise_map and not anonymise:
        raise DataError(f"--anonymise_map={anonymise_map} without --anonymise; add --anonymise, or drop the map")
    return Pseudonyms(data_dir, out_dir, anonymise_map) if anonymise else None


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the names of a comma-separated flag."""
    return [n.strip() for n in text.split(",") if n.strip()]


def assign_split(names: list[str], val_cases: list[str], test_cases: list[str], what: str = "case",
                 **split_args) -> dict[str, list[str]]:
    """The split by `split_patients`, or by the named `what`s (cases,
    patients) of --val_cases/--test_cases when given."""
    named = set(val_cases) | set(test_cases)
    unknown = sorted(named - set(names))
    if unknown:
        raise DataError(f"--val_cases/--test_cases name {', '.join(unknown)}, which are not among the {what}s found "
                        f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if both := sorted(set(val_cases) & set(test_cases)):
        raise DataError(f"--val_cases and --test_cases both name {', '.join(both)}; put each {what} in one split")
    if not named:
        return split_patients(names, **split_args)
    train = sorted(n for n in names if n not in named)
    if not train:
        raise DataError(f"--val_cases and --test_cases leave no {what} for training")
    return {"train": train, "val": sorted(set(val_cases)), "test": sorted(set(test_cases))}


def split_left_right(mask: np.ndarray, axis: int) -> np.ndarray:
    """Labels the two largest connected components of a binary mask by side:
    uint8 1 for the component whose centroid has the smaller index along
    `axis`, 2 for the other, 0 everywhere else (smaller components dropped).

    Works on 2-D masks and 3-D volumes alike (any value > 0 is foreground);
    components are connected in full connectivity (8-neighbours in 2-D, 26 in
    3-D), by scipy.ndimage.label. With only one component, it gets the label
    of the side its centroid lies on relative to the mask's centre along
    `axis` (1 when the centroid lies before the centre, (n - 1) / 2 for n
    voxels along the axis, else 2); an empty mask stays all 0. Equal-sized
    components are ranked in scan order, so the result is deterministic.

    Sides are array positions, not anatomy: for a 2-D picture [H, W],
    `axis=1` makes 1 the component on the picture's left (the patient's right
    in the radiological view); for an ITK-ordered [X, Y, Z] volume in LPS,
    `axis=0` makes 1 the component at smaller x (the patient's right). Used
    by data_prep.pictures --lung_sides (left/right lung as two classes).
    """
    from scipy import ndimage  # only this function needs scipy

    mask = np.asarray(mask) > 0
    if not -mask.ndim <= axis < mask.ndim:
        raise ValueError(f"axis={axis} is out of range for a {mask.ndim}-D mask")
    axis %= mask.ndim
    out = np.zeros(mask.shape, np.uint8)
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if count == 0:
        return out
    sizes = np.bincount(components.ravel())[1:]
    keep = (np.argsort(-sizes, kind="stable")[:2] + 1).tolist()
    centres = [c[axis] for c in ndimage.center_of_mass(mask, components, keep)]
    if len(keep) == 1:
        out[components == keep[0]] = 1 if centres[0] < (mask.shape[axis] - 1) / 2 else 2
        return out
    first, second = sorted(zip(centres, keep))
    out[components == first[1]] = 1
    out[components == second[1]] = 2
    return out


def add_max_voxels_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, too_large: str) -> None:
    """--max_voxels, which every command of data_prep reads; `too_large` says what it refuses."""
    parser.add_argument("--max_voxels", type=int, default=MAX_VOXELS,
                        help=f"refuse {too_large} than this (a hostile header)")


def add_common_flags(parser: argparse.ArgumentParser, *, source: str, too_large: str, unit: str, bad: str,
                     pseudonyms: str, records_per_shard: int, val_fraction: float = 0.2, test_fraction: float = 0.2,
                     split_note: str = "", seed: str = "") -> None:
    """The flags of every converter from --data_dir (`source` says what it
    holds) to shards in --out_dir; the rest in a group of their own: the
    split of `unit`s (patients, cases) by fractions or folds, the shard
    size, --skip_bad of `bad` ones, --overwrite, --anonymise of `pseudonyms`
    and --max_voxels. `split_note` follows the validation fraction's help,
    `seed` replaces the seed's."""
    parser.add_argument("--data_dir", required=True, help=source)
    parser.add_argument("--out_dir", required=True, help="where shards and manifest.json go")
    group = parser.add_argument_group("split and output (the flags every converter has)")
    group.add_argument("--val_fraction", type=float, default=val_fraction,
                       help=f"fraction of {unit}s for validation" + (f" ({split_note})" if split_note else ""))
    group.add_argument("--test_fraction", type=float, default=test_fraction, help=f"fraction of {unit}s for test")
    group.add_argument("--seed", type=int, default=0, help=seed or f"seed of the {unit} shuffle")
    group.add_argument("--num_folds", type=int, default=0, help=f"k-fold cross-validation over {unit}s (0: off)")
    group.add_argument("--fold", type=int, default=0, help="which fold is the test set, 0..num_folds-1")
    group.add_argument("--records_per_shard", type=int, default=records_per_shard)
    group.add_argument("--skip_bad", action="store_true", help=f"skip bad {bad} and list them in the manifest")
    group.add_argument("--overwrite", action="store_true", help="replace an existing --out_dir")
    group.add_argument("--anonymise", action="store_true",
                       help=f"write {pseudonyms} under keyed pseudonyms; the map back stays beside --data_dir")
    group.add_argument("--anonymise_map", default="", help="with --anonymise: the ID map file "
                                                           "(default: <data_dir>.ids.json)")
    add_max_voxels_flag(group, too_large)


def run_cli(prepare: Callable[..., dict], args: argparse.Namespace, written: str,
            summary: Callable[[dict], str]) -> int:
    """A command's main: `prepare` called with the parsed flags, then `wrote
    <written>: <summary of its result>` printed, exit code 0; or a DataError
    as one line `error: ...` on stderr, exit code 2."""
    try:
        result = prepare(**vars(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(written)}: {summary(result)}")
    return 0
