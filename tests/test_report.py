"""Report figures: valid PNGs written atomically, overlay colours, csv-style rows."""

import os

import numpy as np
import pytest
from matplotlib import image as mpimg

from unet_jax import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    """Checks the signature and that no temporary file is left; returns the pixels."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert not [name for name in os.listdir(os.path.dirname(path)) if ".tmp-" in name]
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[-1] in (3, 4)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn
    return pixels


def examples(n, size=24, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(100.0, 30.0, (n, size, size, channels)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    targets = np.stack([(yy - 10) ** 2 + (xx - 12) ** 2 < 25 + i for i in range(n)])
    preds = np.stack([(yy - 12) ** 2 + (xx - 12) ** 2 < 30 for _ in range(n)])
    return images, targets.astype(np.float32), preds.astype(np.float32)


def test_learning_curves_png_in_new_folder(tmp_path):
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "train_dice": 1 - 1.0 / e,
             "val_dice": 1 - 1.1 / e, "val_iou": 0.8 - 1 / e, "val_dice_3d": 0.9 - 1 / e}
            for e in range(1, 6)]
    path = tmp_path / "figures" / "nested" / "curves.png"
    report.plot_learning_curves(rows, str(path), best_epoch=4)
    pixels = read_png(str(path))
    assert pixels.shape[1] > pixels.shape[0]  # two panels side by side


def test_learning_curves_csv_strings_missing_keys_and_one_epoch(tmp_path):
    rows = [{"epoch": "1", "train_loss": "0.9", "val_loss": "", "train_dice": "0.1"},
            {"epoch": "2", "train_loss": "0.7", "val_loss": "0.8", "val_dice": "0.3",
             "val_dice_3d": None, "lr": "0.001"},
            {"epoch": "3", "train_loss": "0.5"}]
    report.plot_learning_curves(rows, str(tmp_path / "strings.png"), best_epoch=2)
    read_png(str(tmp_path / "strings.png"))
    report.plot_learning_curves(rows[:1], str(tmp_path / "one.png"))
    read_png(str(tmp_path / "one.png"))


def test_series_parses_strings_and_skips_empty_cells():
    rows = [{"epoch": "1", "train_loss": "0.9", "val_loss": ""},
            {"epoch": "2", "train_loss": "0.7", "val_loss": "0.8", "lr": "0.1"}]
    series = report._series(rows)
    assert series == {"train_loss": ([1.0, 2.0], [0.9, 0.7]), "val_loss": ([2.0], [0.8])}


def test_overlay_colours():
    image = np.full((4, 4), 7.0)  # flat: grey level 0 everywhere
    image[3, 3] = 100.0
    target = np.zeros((4, 4))
    pred = np.zeros((4, 4, 1))
    target[0, 0] = pred[0, 0] = 1  # true positive
    pred[0, 1] = 1                 # false positive
    target[0, 2] = 1               # false negative
    rgb = report.overlay(image, target, pred)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    r, g, b = (rgb[0, 0].astype(int), rgb[0, 1].astype(int), rgb[0, 2].astype(int))
    assert r[1] > r[0] and r[1] > r[2]
    assert g[0] > g[1] and g[0] > g[2]
    assert b[2] > b[0] and b[2] > b[1]
    for y, x in ((1, 1), (3, 3)):  # true negatives, dark and bright
        assert rgb[y, x, 0] == rgb[y, x, 1] == rgb[y, x, 2]
    assert rgb[3, 3, 0] > rgb[1, 1, 0]


def test_prediction_grid_png(tmp_path):
    images, targets, preds = examples(2)
    path = tmp_path / "figures" / "grid.png"
    report.plot_prediction_grid(images, targets, preds, str(path),
                                titles=["TCGA_CS_4942 slice 12  Dice 0.83", "TCGA_CS_4942 slice 13"])
    read_png(str(path))


def test_prediction_grid_rows_capped_at_max_rows(tmp_path):
    images, targets, preds = examples(10, channels=1)
    targets, preds = targets[..., None], preds[..., None]
    heights = {}
    for rows in (3, 6):
        path = str(tmp_path / f"grid{rows}.png")
        report.plot_prediction_grid(images, targets, preds, path, channel=0, max_rows=rows)
        heights[rows] = read_png(path).shape[0]
    assert 1.8 < heights[6] / heights[3] < 2.1


def test_prediction_grid_rejects_missing_channel(tmp_path):
    images, targets, preds = examples(1, channels=1)
    with pytest.raises(ValueError, match="channel"):
        report.plot_prediction_grid(images, targets, preds, str(tmp_path / "x.png"))


def test_regression_figure_titles_name_patients_and_slice_numbers(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(report, "plot_regression_grid", lambda *a, titles, **k: seen.setdefault("titles", titles))
    target = np.zeros((3, 4, 4), np.float32)
    target[1] = 2.0  # the slice of largest target mass: index 1, slice number 12
    volumes = {5: (target * 0.5, target, np.array([11, 12, 14]))}
    report.regression_figure([{"patient_index": 5, "patient": "TCGA_X"}], volumes, {5: np.ones((3, 4, 4))},
                             str(tmp_path / "r.png"), rows=1)
    assert seen["titles"] == ["TCGA_X slice 12  Jaccard 0.50"]


def test_learning_curves_put_distances_and_volume_differences_in_panels_of_their_own(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(report, "_draw_curves", lambda ax, series, title, unit, best: drawn.update({title: series}))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": "nan", "val_dice": 0.1 * e, "val_hd95": 30 - e,
             "val_assd": 9 - e, "val_avd": 900 / e, "val_lesion_f1": 0.2} for e in (1, 2, 3)]
    report.plot_learning_curves(rows, str(tmp_path / "curves.png"))
    assert set(drawn) == {"losses", "surface distances", "absolute volume difference", "scores"}
    assert set(drawn["losses"]) == {"train_loss"}  # a NaN validation loss is not drawn
    assert set(drawn["surface distances"]) == {"val_hd95", "val_assd"}
    assert set(drawn["absolute volume difference"]) == {"val_avd"}
    assert set(drawn["scores"]) == {"val_dice", "val_lesion_f1"}
    drawn.clear()
    report.plot_learning_curves([{"epoch": 1, "train_loss": 0.5, "val_dice": 0.4}], str(tmp_path / "lgg.png"))
    assert set(drawn) == {"losses", "scores"}


def case(areas, size=32, seed=0):
    """A [S, size, size] image and labels with a square of about `areas[s]` voxels on slice s."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 30.0, (len(areas), size, size)).astype(np.float32)
    pred = np.zeros(image.shape, np.uint8)
    for s, area in enumerate(areas):
        side = int(round(area ** 0.5))
        pred[s, 4:4 + side, 4:4 + side] = 1
    return image, pred


def drawn_figures(monkeypatch):
    """The figures report writes from now on, still saved to their paths."""
    figures, save = [], report._save
    monkeypatch.setattr(report, "_save", lambda fig, path, dpi: (figures.append(fig), save(fig, path, dpi)))
    return figures


def test_prediction_figure_shows_the_slices_with_most_foreground_in_slice_order(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    image, pred = case([4, 25, 0, 9, 16])
    pred[3, 20:22, 20:22] = 2  # a second class counts as foreground: 13 voxels
    path = tmp_path / "cases" / "patient07.png"
    report.prediction_figure(image, pred, str(path), title="patient07 — 12.3 ml, 5 lesions",
                             slice_numbers=[10, 11, 12, 13, 14], num_slices=3)
    pixels = read_png(str(path))
    fig, = figures
    assert [ax.get_title() for ax in fig.axes[:3]] == ["slice 11 · 25 voxels", "slice 13 · 13 voxels",
                                                       "slice 14 · 16 voxels"]
    assert len(fig.axes) == 6  # image and overlay for each chosen slice
    assert fig.get_suptitle() == "patient07 — 12.3 ml, 5 lesions"
    assert pixels.shape[1] > pixels.shape[0]  # three columns, two rows


def test_prediction_figure_multiclass_overlay_probabilities_and_legend(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    image, pred = case([25, 9])
    pred[0, 20:23, 20:23] = 2
    probabilities = np.where(pred > 0, 0.9, 0.1).astype(np.float32)
    report.prediction_figure(image, pred, str(tmp_path / "p.png"), title="p", probabilities=probabilities)
    read_png(str(tmp_path / "p.png"))
    fig, = figures
    assert len(fig.axes) == 6  # a third row: the probability
    shown = fig.axes[2].images[0].get_array()  # the overlay of slice 0
    assert tuple(shown[4, 4]) == tuple(round(255 * c) for c in report.CLASS_COLOURS[0])  # outline of class 1
    assert tuple(shown[20, 20]) == tuple(round(255 * c) for c in report.CLASS_COLOURS[1])  # outline of class 2
    assert fig.axes[4].images[0].get_clim() == (0, 1)
    assert [t.get_text() for t in fig.legends[0].texts] == ["class 1", "class 2"]


def test_label_overlay_blends_classes_in_distinct_colours_and_outlines_them():
    image = np.full((9, 9), 7.0)  # flat: grey level 0 everywhere
    labels = np.zeros((9, 9), np.int64)
    labels[1:6, 1:6] = 1
    labels[7, 7] = 3
    rgb = report.label_overlay(image, labels)
    assert rgb.shape == (9, 9, 3) and rgb.dtype == np.uint8
    one, three = (np.round(255 * np.array(report.CLASS_COLOURS[c])).astype(np.uint8) for c in (0, 2))
    assert (rgb[1, 3] == one).all() and (rgb[5, 5] == one).all()  # the outline in full colour
    assert (rgb[3, 3] == np.round(one / 2)).all()  # the inside blended at 50% over black
    assert (rgb[7, 7] == three).all() and not (one == three).all()  # a lesion of one pixel is all outline
    assert (rgb[0, 0] == 0).all() and (rgb[8, 0] == 0).all()


def test_prediction_figure_with_target_colours_true_and_false_positives_and_negatives(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    image, target = case([16, 0])
    pred = np.zeros_like(target)
    pred[0, 4:8, 6:10] = 1  # columns 6-7 true positive, 8-9 false positive, 4-5 false negative
    report.prediction_figure(image[:1], pred[:1], str(tmp_path / "t.png"), title="a 2-D case",
                             target=target[:1])
    read_png(str(tmp_path / "t.png"))
    fig, = figures
    shown = fig.axes[1].images[0].get_array().astype(int)
    for (y, x), channel in (((5, 6), 1), ((5, 9), 0), ((5, 4), 2)):  # TP green, FP red, FN blue
        assert shown[y, x, channel] > shown[y, x, (channel + 1) % 3] + 50
        assert shown[y, x, channel] > shown[y, x, (channel + 2) % 3] + 50
    assert [t.get_text() for t in fig.legends[0].texts] == ["true positive", "false positive", "false negative"]
    # One panel wide: the legend goes on lines of its own rather than past the edges.
    box = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width


def test_prediction_figure_of_an_empty_prediction_shows_the_first_slices(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    image, pred = case([0, 0, 0])
    report.prediction_figure(image, pred, str(tmp_path / "empty.png"), title="patient08 — 0.0 ml, 0 lesions",
                             num_slices=2)
    read_png(str(tmp_path / "empty.png"))
    assert [ax.get_title() for ax in figures[0].axes[:2]] == ["slice 0 · 0 voxels", "slice 1 · 0 voxels"]
    assert sorted(os.listdir(tmp_path)) == ["empty.png"]


def test_prediction_figure_rejects_mismatched_shapes(tmp_path):
    image, pred = case([4, 9])
    with pytest.raises(ValueError, match="pred"):
        report.prediction_figure(image, pred[:1], str(tmp_path / "x.png"), title="x")
    with pytest.raises(ValueError, match="slice numbers"):
        report.prediction_figure(image, pred, str(tmp_path / "x.png"), title="x", slice_numbers=[3])
    assert not os.listdir(tmp_path)


def test_regression_prediction_figure_picks_the_slices_of_largest_output(tmp_path, monkeypatch):
    figures = drawn_figures(monkeypatch)
    rng = np.random.default_rng(0)
    image = rng.random((4, 16, 16)).astype(np.float32)
    output = np.zeros((4, 16, 16), np.float32)
    output[1], output[3] = 2.0, 1.0
    target = output + 0.5
    report.regression_prediction_figure(image, output, str(tmp_path / "r.png"), title="case", target=target,
                                        slice_numbers=[7, 8, 9, 10], num_slices=2)
    read_png(str(tmp_path / "r.png"))
    fig, = figures
    assert [ax.get_title() for ax in fig.axes[:2]] == ["slice 8", "slice 10"]
    assert len(fig.axes) == 8  # input, output, target and error for each chosen slice
    error = fig.axes[7].images[0].get_array()  # |error| of slice 10, on the scale of the largest value (2.5)
    np.testing.assert_allclose(error, 0.5 / 2.5, rtol=1e-6)
    report.regression_prediction_figure(image, output, str(tmp_path / "o.png"), title="case")
    assert len(figures[-1].axes) == 8  # without a target: input and output for 4 slices
    with pytest.raises(ValueError, match="expected .S, H, W. arrays of one shape"):
        report.regression_prediction_figure(image, output[:2], str(tmp_path / "x.png"), title="case")
