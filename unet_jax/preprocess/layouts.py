"""Finding the cases of a folder of volumes in its layout (the Decathlon's imagesTr/labelsTr, or a folder
per case picked by glob patterns), as data_prep.volumes prepares them and prediction finds new scans."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re

from unet_jax.data.medical_io import is_volume_path
from unet_jax.errors import DataError
from unet_jax.preprocess.problems import Problem


@dataclasses.dataclass(frozen=True)
class Case:
    """One case's files: a path per channel (a file, or a DICOM series folder), its label or None."""

    name: str
    channels: tuple[str, ...]
    label: str | None
    mask: str | None = None  # foreground for the z-score (--mask), or None: the non-zero voxels


def _is_source(path: str) -> bool:
    """A volume file, or a leaf folder (a DICOM series: slices, no subfolders)."""
    if os.path.isdir(path):
        return not any(e.is_dir() for e in os.scandir(path))
    return is_volume_path(path)


def _hits(folder: str, pattern: str) -> list[str]:
    """The volumes in `folder` matching `pattern`, sorted."""
    return sorted(n for n in os.listdir(folder) if fnmatch.fnmatch(n, pattern) and _is_source(os.path.join(folder, n)))


def _pick(folder: str, pattern: str, what: str) -> str | None:
    """The one volume in `folder` matching `pattern`; None if none; DataError if several."""
    hits = _hits(folder, pattern)
    if len(hits) > 1:
        raise DataError(f"{folder}: {what} pattern {pattern!r} matches {len(hits)} files ({', '.join(hits[:3])}); "
                        "make the pattern match exactly one")
    return os.path.join(folder, hits[0]) if hits else None


def _case_pattern(pattern: str) -> re.Pattern:
    """A glob with a `{case}` placeholder as a regex capturing the case name."""
    head, _, tail = pattern.partition("{case}")
    strip = lambda g: fnmatch.translate(g).removeprefix("(?s:").removesuffix(")\\Z")  # noqa: E731
    return re.compile(f"(?s:{strip(head)}(?P<case>.+?){strip(tail)})\\Z")


def scan_folders(data_dir: str, channels: list[str], label: str | None, mask: str | None,
                 unlabelled: bool) -> tuple[list[Case], list[Problem]]:
    """Cases of the per-case layout: every folder below `data_dir` holding a
    volume that matches the first channel pattern is a case, named by its path
    relative to `data_dir` (e.g. `train/brats_2013_pat0005_1`). Patterns with
    a `{case}` placeholder ('{case}_image.nrrd') find several cases in one
    folder instead, named by what the placeholder matched."""
    cases, problems = [], []
    for folder, dirs, files in os.walk(data_dir):
        dirs.sort()
        if "{case}" in channels[0]:
            found = sorted({m["case"] for n in files + dirs if (m := _case_pattern(channels[0]).match(n))})
            groups = [(c, os.path.relpath(os.path.join(folder, c), data_dir).replace(os.sep, "/")) for c in found]
        elif _hits(folder, channels[0]):
            dirs[:] = []  # a case folder's subfolders are its DICOM series, not more cases
            groups = [("", os.path.relpath(folder, data_dir).replace(os.sep, "/"))]
        else:
            continue
        for key, name in groups:
            fill = lambda p: p.replace("{case}", key)  # noqa: E731
            try:  # a pattern matching several files is this case's problem (skipped with --skip_bad)
                picked = [_pick(folder, fill(p), "channel") for p in channels]
                label_path = _pick(folder, fill(label), "label") if label else None
                mask_path = _pick(folder, fill(mask), "mask") if mask else None
            except DataError as e:
                problems.append(Problem(*str(e).split(": ", 1)))
                continue
            missing = [p for p, path in zip(channels, picked) if path is None]
            if missing:
                problems.append(Problem(os.path.join(folder, key), f"no volume matches channel pattern "
                                                                  f"{fill(missing[0])!r}"))
            elif label_path is None and not unlabelled:
                problems.append(Problem(os.path.join(folder, key), f"no label matches {fill(label or '')!r}; "
                                        "add it, or pass --unlabelled to prepare cases for prediction only"))
            else:
                cases.append(Case(name, tuple(picked), None if unlabelled else label_path, mask_path))
    return cases, problems


def scan_decathlon(data_dir: str, unlabelled: bool) -> tuple[list[Case], list[Problem]]:
    """Cases of the Decathlon/nnU-Net layout: imagesTr/<case>_<4-digit channel>.<ext>
    with labelsTr/<case>.<ext> (with --unlabelled imagesTs/, or else `data_dir`
    itself), or the Decathlon's own release of one-channel tasks:
    imagesTr/<case>.<ext> beside labelsTr/<case>.<ext>."""
    images = os.path.join(data_dir, "imagesTs" if unlabelled else "imagesTr")
    if unlabelled and not os.path.isdir(images):
        images = data_dir  # the <case>_0000 files themselves, as prediction may be given
    if not os.path.isdir(images):
        raise DataError(f"{images}: no such folder; the Decathlon layout needs imagesTr/ and labelsTr/")
    by_case: dict[str, dict[int, str]] = {}
    doubled: set[str] = set()  # cases with a channel in two files: problems already, not cases
    problems = []
    for n in sorted(os.listdir(images)):
        path = os.path.join(images, n)
        stem = next((n[:-len(s)] for s in (".nii.gz", ".nii", ".nrrd", ".mha") if n.endswith(s)), None)
        if n.startswith(".") or stem is None:
            continue
        case, _, channel = stem.rpartition("_")
        if not case or len(channel) != 4 or not channel.isdigit():
            if unlabelled or not any(os.path.exists(os.path.join(data_dir, "labelsTr", stem + s))
                                     for s in (".nii.gz", ".nii", ".nrrd", ".mha")):
                problems.append(Problem(path, "expected <case>_<4-digit channel>, e.g. case_001_0000.nii.gz, "
                                              "or <case>.nii.gz with labelsTr/<case>.nii.gz"))
                continue
            case, channel = stem, "0000"  # the Decathlon's own release: one image per case, named as its label
        files = by_case.setdefault(case, {})
        if int(channel) in files:  # case_001_0000.nii beside case_001_0000.nii.gz
            problems.append(Problem(path, f"case {case} channel {channel} again, beside "
                                          f"{os.path.basename(files[int(channel)])}; remove one of the two"))
            doubled.add(case)
            continue
        files[int(channel)] = path
    cases = []
    width = max((len(c) for c in by_case.values()), default=0)
    for case, files in sorted(by_case.items()):
        if case in doubled:
            continue
        if sorted(files) != list(range(width)):
            problems.append(Problem(os.path.join(images, case), f"channels {sorted(files)}; every case "
                                                                f"needs 0..{width - 1}"))
            continue
        label = None
        if not unlabelled:
            name = os.path.basename(files[0])
            ext = name[len(case) + 5:] if name.startswith(case + "_0000") else name[len(case):]
            label = os.path.join(data_dir, "labelsTr", case + ext)
            if not os.path.exists(label):
                problems.append(Problem(label, "label missing; add it, or pass --unlabelled"))
                continue
        cases.append(Case(case, tuple(files[i] for i in range(width)), label))
    return cases, problems
