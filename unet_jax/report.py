"""Figures a researcher looks at after training: learning curves and prediction overlays.

Plots use matplotlib's object API with the Agg canvas (no pyplot global state), so
they are safe to draw from any thread; every PNG is written atomically.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from scipy import ndimage

from unet_jax.files import atomic_write
from unet_jax.metrics import dice_score, grey_level_jaccard

TP_COLOUR = (0.0, 1.0, 0.0)  # green
FP_COLOUR = (1.0, 0.0, 0.0)  # red
FN_COLOUR = (0.0, 0.0, 1.0)  # blue
# Predicted classes 1, 2, ... without a ground truth, repeating past the last:
# yellow, cyan, magenta, orange, violet, lime.
CLASS_COLOURS = ((1.0, 0.85, 0.0), (0.0, 0.85, 1.0), (1.0, 0.0, 1.0),
                 (1.0, 0.5, 0.0), (0.6, 0.4, 1.0), (0.6, 1.0, 0.2))
_ALPHA = 0.5
# Prediction grid geometry in inches: square image panels, a two-line title band
# above each row, gaps between columns and a strip for the colour legend.
_PANEL_INCHES = 1.95
_TITLE_INCHES = 0.32
_TITLE_CHARS = 36  # what fits on one line above a panel at 7 pt
_GAP_INCHES = 0.08
_LEGEND_INCHES = 0.3
_LEGEND_LINE_INCHES = 0.15  # each further line of legend entries
_LEGEND_ENTRY_INCHES = 1.25  # the widest entry ("false negative") at 7 pt
_SUPTITLE_LINE_INCHES = 0.17  # one line of a figure title at 9 pt


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> None:
    """Writes `fig` as PNG to `path` atomically."""
    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


# ----------------------------------------------------------------------------
# Learning curves
# ----------------------------------------------------------------------------


def _to_float(value) -> float | None:
    """A csv cell as float; None for missing, empty, unparsable or NaN cells
    (the loss of a sliding-window evaluation)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _series(rows: Sequence[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Every `train_*`/`val_*` column as (epochs, values), in first-seen column order."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, row in enumerate(rows):
        epoch = _to_float(row.get("epoch"))
        epoch = i + 1 if epoch is None else epoch
        for key, value in row.items():
            if not key.startswith(("train_", "val_")):
                continue
            value = _to_float(value)
            if value is not None:
                xs, ys = series.setdefault(key, ([], []))
                xs.append(epoch)
                ys.append(value)
    return series


def _draw_curves(ax, series: dict, title: str, ylabel: str, best_epoch: int | None) -> None:
    """One panel: train dashed and val solid, sharing a colour per metric."""
    metrics = list(dict.fromkeys(key.split("_", 1)[1] for key in series))
    for key, (xs, ys) in series.items():
        split, metric = key.split("_", 1)
        ax.plot(xs, ys, label=key, color=f"C{metrics.index(metric) % 10}",
                linestyle="--" if split == "train" else "-",
                # Markers keep short runs (a single epoch) visible without cluttering long ones.
                marker="o" if len(xs) < 30 else None, markersize=3)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="0.3", linestyle=":", linewidth=1.2,
                   label=f"best (epoch {best_epoch})")
    if not series:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:  # a single epoch: otherwise the ticks are fractions of it
        ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


# Panels of the learning curves: (title, y label, which metric names go there);
# a column goes to the first panel that takes it, scores to the last.
_CURVE_PANELS = (("losses", "loss", lambda k: "loss" in k),
                 ("surface distances", "mm", lambda k: "hd95" in k or "assd" in k),
                 ("absolute volume difference", "%", lambda k: "avd" in k),
                 ("scores", "score", lambda k: True))


def plot_learning_curves(rows: list[dict], path: str, best_epoch: int | None = None) -> None:
    """Losses and scores per epoch from the rows of a run's metrics.csv, as a PNG.

    Columns named `train_*`/`val_*` are plotted, one panel per unit: losses,
    surface distances (mm), volume difference (%) where a run has them, and
    the scores (Dice, IoU, lesion F1, ...). Values may be numbers or strings;
    missing, empty or NaN cells are skipped.
    """
    if not rows:
        raise ValueError(f"no metric rows to plot for {path}")
    panels: dict[str, dict] = {}
    for key, values in _series(rows).items():
        title = next(t for t, _, takes in _CURVE_PANELS if takes(key))
        panels.setdefault(title, {})[key] = values
    shown = [(t, unit) for t, unit, _ in _CURVE_PANELS if t in panels or t in ("losses", "scores")]
    fig = Figure(figsize=(5.5 * len(shown), 4))
    for ax, (title, unit) in zip(fig.subplots(1, len(shown), squeeze=False)[0], shown):
        _draw_curves(ax, panels.get(title, {}), title, unit, best_epoch)
    fig.tight_layout()
    _save(fig, path, dpi=100)


# ----------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------


def normalise(image2d: np.ndarray) -> np.ndarray:
    """Maps the 1st..99th percentile to [0, 1] for display; a flat image becomes 0."""
    image2d = np.asarray(image2d, np.float32)
    lo, hi = np.percentile(image2d, [1, 99])
    if hi <= lo:
        return np.zeros_like(image2d)
    return np.clip((image2d - lo) / (hi - lo), 0.0, 1.0)


def _mask2d(mask: np.ndarray) -> np.ndarray:
    """A [H, W] or [H, W, 1] mask as bool [H, W]."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"expected a [H, W] or [H, W, 1] mask, got shape {mask.shape}")
    return mask > 0.5


def overlay(image2d: np.ndarray, target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3]: the image in grey, TP green, FP red, FN blue blended at 50%.

    The image may have any range; it is normalised by its 1st/99th percentile.
    """
    grey = normalise(image2d)
    target, pred = _mask2d(target), _mask2d(pred)
    if grey.shape != target.shape or grey.shape != pred.shape:
        raise ValueError(f"shapes differ: image {grey.shape}, target {target.shape}, "
                         f"pred {pred.shape}")
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for where, colour in ((target & pred, TP_COLOUR), (~target & pred, FP_COLOUR),
                          (target & ~pred, FN_COLOUR)):
        rgb[where] = (1 - _ALPHA) * rgb[where] + _ALPHA * np.asarray(colour, np.float32)
    return np.round(rgb * 255).astype(np.uint8)


def _class_colour(label: int) -> tuple[float, float, float]:
    """The colour of predicted class `label` (1, 2, ...) from CLASS_COLOURS."""
    return CLASS_COLOURS[(int(label) - 1) % len(CLASS_COLOURS)]


def label_overlay(image2d: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3]: the image in grey, each label > 0 blended at 50% in its
    class colour and outlined in full colour, so that lesions of a few pixels stay visible.

    The image may have any range; it is normalised by its 1st/99th percentile.
    """
    grey, labels = normalise(image2d), np.asarray(labels)
    if grey.shape != labels.shape:
        raise ValueError(f"shapes differ: image {grey.shape}, labels {labels.shape}")
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label in np.unique(labels[labels > 0]):
        colour, region = np.asarray(_class_colour(label), np.float32), labels == label
        rgb[region] = (1 - _ALPHA) * rgb[region] + _ALPHA * colour
        rgb[region & ~ndimage.binary_erosion(region)] = colour
    return np.round(rgb * 255).astype(np.uint8)


def _panel_grid(rows: int, columns: int, path: str, title: str | None = None, legend: Sequence[Patch] = ()):
    """A figure of square image panels, `rows` x `columns`, with a title band
    above each row, a strip at the bottom with the `legend` entries (on as many
    lines as the width needs) and, given a `title`, that title wrapped above it all."""
    if rows == 0 or columns == 0:
        raise ValueError(f"no examples to plot for {path}")
    # Cells sized in inches, not tight_layout, which misplaces fixed-aspect image axes.
    width = columns * _PANEL_INCHES + (columns + 1) * _GAP_INCHES
    per_line = max(1, int(columns * _PANEL_INCHES // _LEGEND_ENTRY_INCHES))
    strip = _LEGEND_INCHES + max(0, math.ceil(len(legend) / per_line) - 1) * _LEGEND_LINE_INCHES
    lines = textwrap.wrap(title, _TITLE_CHARS * 7 // 9 * columns) if title else []  # at 9 pt
    header = len(lines) * _SUPTITLE_LINE_INCHES + _GAP_INCHES if lines else 0.0
    height = rows * (_PANEL_INCHES + _TITLE_INCHES) + strip + header
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, columns, squeeze=False, gridspec_kw=dict(
        left=_GAP_INCHES / width, right=1 - _GAP_INCHES / width,
        bottom=strip / height, top=1 - (_TITLE_INCHES + header) / height,
        wspace=_GAP_INCHES / _PANEL_INCHES, hspace=_TITLE_INCHES / _PANEL_INCHES))
    if lines:
        fig.suptitle("\n".join(lines), y=1 - _GAP_INCHES / height, va="top", fontsize=9)
    if legend:
        fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), per_line), fontsize=7, frameon=False)
    return fig, axes


def _outcome_legend() -> list[Patch]:
    """Legend entries for the colours of `overlay`."""
    return [Patch(color=colour, label=label) for colour, label in
            ((TP_COLOUR, "true positive"), (FP_COLOUR, "false positive"), (FN_COLOUR, "false negative"))]


def plot_prediction_grid(images: np.ndarray, targets: np.ndarray, preds: np.ndarray, path: str,
                         titles: Sequence[str] | None = None, channel: int = 1,
                         max_rows: int = 8, channel_label: str | None = None) -> None:
    """One row per example: image channel `channel` in grey, ground truth, overlay; a PNG.

    images: float [N, H, W, C]; targets, preds: binary [N, H, W] or [N, H, W, 1].
    Only the first `max_rows` examples are drawn; `titles[i]` heads row i's overlay;
    `channel_label` names the image column (default "channel <channel>").
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C], got shape {images.shape}")
    if not 0 <= channel < images.shape[-1]:
        raise ValueError(f"channel {channel} out of range for {images.shape[-1]} image channels")
    n = min(len(images), max_rows)
    fig, axes = _panel_grid(n, 3, path, legend=_outcome_legend())
    for i in range(n):
        image = images[i, ..., channel]
        panels = (normalise(image), _mask2d(targets[i]), overlay(image, targets[i], preds[i]))
        for ax, panel in zip(axes[i], panels):
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
        if titles is not None:
            axes[i, 2].set_title(textwrap.fill(titles[i], _TITLE_CHARS), fontsize=7)
    axes[0, 0].set_title(f"image ({channel_label or f'channel {channel}'})", fontsize=8)
    axes[0, 1].set_title("ground truth", fontsize=8)
    if titles is None:
        axes[0, 2].set_title("prediction", fontsize=8)
    _save(fig, path, dpi=100)


def plot_regression_grid(images: np.ndarray, targets: np.ndarray, outputs: np.ndarray, path: str,
                         titles: Sequence[str] | None = None, image_label: str = "image") -> None:
    """One row per example: the input, the target, the output and |output - target|; a PNG.

    images, targets, outputs: float [N, H, W]. Target and output share one grey
    scale (0 to the row's largest target value) so their contrast compares
    directly; the error is shown on the same scale.
    """
    images, targets, outputs = (np.asarray(x, np.float32) for x in (images, targets, outputs))
    if not images.shape == targets.shape == outputs.shape or images.ndim != 3:
        raise ValueError(f"expected three [N, H, W] arrays, got {images.shape}, {targets.shape}, {outputs.shape}")
    n = len(images)
    fig, axes = _panel_grid(n, 4, path)
    for i in range(n):
        top = max(float(targets[i].max()), 1e-6)
        panels = (normalise(images[i]), targets[i] / top, outputs[i] / top, np.abs(outputs[i] - targets[i]) / top)
        for ax, panel in zip(axes[i], panels):
            ax.imshow(np.clip(panel, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
        if titles is not None:
            axes[i, 2].set_title(textwrap.fill(titles[i], _TITLE_CHARS), fontsize=7)
    for ax, label in zip(axes[0], (image_label, "target", None if titles else "output", "|error|")):
        if label:
            ax.set_title(label, fontsize=8)
    _save(fig, path, dpi=100)


# ----------------------------------------------------------------------------
# Pictures of an evaluation: per-patient volumes {patient_index: (pred, target,
# slice_numbers)} and display images {patient_index: [S, H, W]}, in slice order
# ----------------------------------------------------------------------------


def slices_to_show(pred: np.ndarray, target: np.ndarray, k: int) -> list[int]:
    """Indices (in slice order) of the k slices of a [S, H, W] label volume with the
    most foreground in mask plus prediction; ties go to the earlier slice."""
    # Counted as int64: label maps are uint8, and a negated unsigned sum wraps around.
    area = np.count_nonzero(target.reshape(len(target), -1), axis=1).astype(np.int64) \
        + np.count_nonzero(pred.reshape(len(pred), -1), axis=1)
    return sorted(np.argsort(-area, kind="stable")[:k].tolist())


def largest_target_slices(volumes: Mapping, n: int) -> list[tuple[int, int]]:
    """(patient_index, slice index) of the n slices of largest target mass
    (regression), largest first."""
    mass = [(float(target[i].astype(np.float32).sum()), p, i)
            for p, (_, target, _) in volumes.items() for i in range(len(target))]
    return [(p, i) for _, p, i in sorted(mass, key=lambda m: -m[0])[:n]]


def stack_padded(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Stacks [H, W, ...] arrays of different sizes (slices of cases of
    different shapes), each zero-padded at the bottom and right to the largest."""
    h, w = (max(p.shape[i] for p in pictures) for i in (0, 1))
    return np.stack([np.pad(p, [(0, h - p.shape[0]), (0, w - p.shape[1])] + [(0, 0)] * (p.ndim - 2))
                     for p in pictures])


def segmentation_preview(volumes: Mapping, images: Mapping, n: int) -> np.ndarray:
    """[n, H, W, 3] uint8 overlays of the n slices with the largest tumours."""
    candidates = [(np.count_nonzero(target[i]), p, i)
                  for p, (_, target, _) in volumes.items() for i in range(len(target))]
    chosen = sorted(candidates, key=lambda c: -c[0])[:n]
    return stack_padded([overlay(images[p][i].astype(np.float32), volumes[p][1][i], volumes[p][0][i])
                         for _, p, i in chosen])


def regression_preview(volumes: Mapping, images: Mapping, n: int) -> np.ndarray:
    """[n, H, 3W, 3] uint8 strips (image, target, output) of the n slices of largest
    target mass; target and output share one grey scale."""
    rows = []
    for p, i in largest_target_slices(volumes, n):
        output, target = (x[i].astype(np.float32) for x in volumes[p][:2])
        top = max(float(target.max()), 1e-6)
        grey = np.concatenate([normalise(images[p][i].astype(np.float32)),
                               np.clip(target / top, 0, 1), np.clip(output / top, 0, 1)], axis=1)
        rows.append(np.round(np.repeat(grey[..., None], 3, axis=-1) * 255).astype(np.uint8))
    return stack_padded(rows)


def best_and_worst_figure(table: Sequence[Mapping], volumes: Mapping, images: Mapping, path: str,
                          rows_per_patient: int = 4, channel_label: str = "image") -> None:
    """A grid of slices (image, ground truth, overlay) from the best and the worst
    patient by 3-D Dice, preferring slices with tumour in mask or prediction."""
    ranked = sorted(table, key=lambda r: r["dice_3d"])
    chosen = [ranked[-1], ranked[0]] if len(ranked) > 1 else ranked
    shown, targets, preds, titles = [], [], [], []
    for row in chosen:
        p = row["patient_index"]
        pred, target, numbers = volumes[p]
        for i in slices_to_show(pred, target, rows_per_patient):
            shown.append(images[p][i].astype(np.float32)[..., None])
            targets.append(target[i])
            preds.append(pred[i])
            titles.append(f"{row['patient']} slice {numbers[i]}  Dice {dice_score(pred[i], target[i]):.2f} "
                          f"(patient {row['dice_3d']:.2f})")
    plot_prediction_grid(stack_padded(shown), stack_padded(targets), stack_padded(preds), path, titles=titles, channel=0,
                         max_rows=len(shown), channel_label=channel_label)


def regression_figure(table: Sequence[Mapping], volumes: Mapping, images: Mapping, path: str, rows: int = 6,
                      channel_label: str = "image") -> None:
    """The slices of largest target mass (input, target, output, error), titled
    with the patient, the slice number and the slice's grey-level Jaccard."""
    names = {row["patient_index"]: row["patient"] for row in table}
    shown, targets, outputs, titles = [], [], [], []
    for p, i in largest_target_slices(volumes, rows):
        output, target, numbers = volumes[p]
        shown.append(images[p][i].astype(np.float32))
        targets.append(target[i].astype(np.float32))
        outputs.append(output[i].astype(np.float32))
        titles.append(f"{names.get(p, p)} slice {numbers[i]}  Jaccard {grey_level_jaccard(output[i], target[i]):.2f}")
    plot_regression_grid(stack_padded(shown), stack_padded(targets), stack_padded(outputs), path, titles=titles,
                         image_label=f"image ({channel_label})")


# ----------------------------------------------------------------------------
# Pictures of a prediction on a new case, with or without its ground truth
# ----------------------------------------------------------------------------


def prediction_figure(image: np.ndarray, pred: np.ndarray, path: str, *, title: str,
                      target: np.ndarray | None = None, slice_numbers: Sequence[int] | None = None,
                      num_slices: int = 4, probabilities: np.ndarray | None = None) -> None:
    """One case's prediction as a PNG titled `title`: a column for each of the
    `num_slices` slices with the most foreground (in slice order) showing the image
    in grey, the prediction overlaid (classes in colour, or TP/FP/FN against
    `target`) and, if given, the foreground probability.

    image: float [S, H, W], any range; pred, target: integer labels [S, H, W], 0
    background; probabilities: float [S, H, W] in 0..1; `slice_numbers` name the
    slices in the panel titles (default 0..S-1).
    """
    image, pred = np.asarray(image, np.float32), np.asarray(pred)
    if image.ndim != 3:
        raise ValueError(f"expected an image [S, H, W], got shape {image.shape}")
    for name, array in (("pred", pred), ("target", target), ("probabilities", probabilities)):
        if array is not None and np.shape(array) != image.shape:
            raise ValueError(f"{name} has shape {np.shape(array)}, the image {image.shape}")
    numbers = list(range(len(image)) if slice_numbers is None else slice_numbers)
    if len(numbers) != len(image):
        raise ValueError(f"{len(numbers)} slice numbers for {len(image)} slices")
    chosen = slices_to_show(pred, np.zeros_like(pred) if target is None else np.asarray(target), num_slices)
    if target is None:
        classes = np.unique(pred[pred > 0]).tolist() or [1]
        legend = [Patch(color=_class_colour(c), label="prediction" if classes == [1] else f"class {c}")
                  for c in classes]
    else:
        legend = _outcome_legend()
    fig, axes = _panel_grid(2 if probabilities is None else 3, len(chosen), path, title=title, legend=legend)
    for column, i in zip(axes.T, chosen):
        column[0].imshow(normalise(image[i]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        column[0].set_title(f"slice {numbers[i]} · {np.count_nonzero(pred[i])} voxels", fontsize=7)
        column[1].imshow(label_overlay(image[i], pred[i]) if target is None
                         else overlay(image[i], target[i], pred[i]), interpolation="nearest")
        if probabilities is not None:
            column[2].imshow(probabilities[i], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        for ax in column:
            ax.set_axis_off()
    if probabilities is not None:
        axes[2, 0].set_title("foreground probability 0 to 1", fontsize=7)
    # Panels at the scan's own resolution (100 to 300 dpi), so outlines of small lesions show.
    _save(fig, path, dpi=int(np.clip(max(image.shape[1:]) / _PANEL_INCHES, 100, 300)))


def regression_prediction_figure(image: np.ndarray, output: np.ndarray, path: str, *, title: str,
                                 target: np.ndarray | None = None, slice_numbers: Sequence[int] | None = None,
                                 num_slices: int = 4) -> None:
    """One case's regression output as a PNG titled `title`: a column for each
    of the `num_slices` slices of largest output mass (in slice order) showing
    the input, the output and, given `target`, the target and |output - target|;
    output, target and error share one grey scale (0 to the largest value shown).

    image, output, target: float [S, H, W]; `slice_numbers` name the slices.
    """
    image, output = np.asarray(image, np.float32), np.asarray(output, np.float32)
    if image.ndim != 3 or output.shape != image.shape or (target is not None and np.shape(target) != image.shape):
        raise ValueError(f"expected [S, H, W] arrays of one shape, got {image.shape}, {output.shape}"
                         + ("" if target is None else f", {np.shape(target)}"))
    numbers = list(range(len(image)) if slice_numbers is None else slice_numbers)
    mass = np.maximum(output, 0).reshape(len(output), -1).sum(axis=1)
    chosen = sorted(np.argsort(-mass, kind="stable")[:num_slices].tolist())
    rows = [("input", image), ("output", output)]
    if target is not None:
        target = np.asarray(target, np.float32)
        rows += [("target", target), ("|error|", np.abs(output - target))]
    top = max(float(np.max([rows[1][1][chosen].max()] + ([target[chosen].max()] if target is not None else []))),
              1e-6)
    fig, axes = _panel_grid(len(rows), len(chosen), path, title=title)
    for column, i in zip(axes.T, chosen):
        for ax, (name, array) in zip(column, rows):
            panel = normalise(array[i]) if name == "input" else np.clip(array[i] / top, 0, 1)
            ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
        column[0].set_title(f"slice {numbers[i]}", fontsize=7)
    for row, (name, _) in zip(axes, rows):
        row[0].text(-0.05, 0.5, name, transform=row[0].transAxes, rotation=90, ha="right", va="center", fontsize=7)
    _save(fig, path, dpi=int(np.clip(max(image.shape[1:]) / _PANEL_INCHES, 100, 300)))
