"""Figures: tracks on genome coordinates, measured and predicted on one scale, no spike at the
last bin, the requested region marked; the loss axis says what the loss is."""
import json

import numpy as np

from enformer_train.plots import plot_training, track_figure, training_figure


def test_track_panels_overlay_measured_and_predicted_in_genome_coordinates():
    measured = np.array([[1.0, 0.0], [2.0, 0.5], [3.0, 1.0], [5.0, 2.0]])
    predicted = np.array([[0.5, 0.1], [1.0, 0.2], [4.0, 0.3], [9.0, 0.4]])
    fig = track_figure(measured, predicted, ["a", "b"], "t", start=1_000_000, bin_size=128, chrom="chr7",
                       region=(1_000_100, 1_000_300))
    axes = fig.axes
    assert len(axes) == 2  # one panel per track: both signals on the same axes, so the same y-scale
    ax = axes[0]
    assert ax.get_xlim() == (1_000_000, 1_000_512) and axes[-1].get_xlabel() == "chr7 position (bp)"
    assert ax.get_ylim()[1] >= 9.0  # the scale holds both the measured (5) and the predicted (9) peak
    line = ax.get_lines()[0]  # predicted, drawn as steps: the last bin spans its full 128 bp
    x, y = line.get_xdata(), line.get_ydata()
    assert x[-1] == 1_000_512 and x[-2] == 1_000_384 and y[-1] == y[-2] == 9.0
    fill = [c for c in ax.collections if c.get_label() == "measured"][0]
    edges = fill.get_paths()[0].vertices[:, 0]
    assert edges.max() == 1_000_512 and np.isclose(edges.min(), 1_000_000)
    region = [p for p in ax.patches if p.get_label() == "requested region"]
    assert len(region) == 1
    assert np.allclose([region[0].get_x(), region[0].get_x() + region[0].get_width()], [1_000_100, 1_000_300])


def test_training_loss_axis_explains_negative_values(tmp_path, saved_figures):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss/human": 0.5}, {"step": 2, "loss/human": -0.2, "valid/human/pearson_r": 0.3}]))
    plot_training(tmp_path, tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_loss, ax_r = saved_figures[tmp_path / "t.png"].axes
    assert (ax_loss.get_title(), ax_r.get_title()) == ("Training loss (training batches)", "Validation Pearson R")
    [loss] = ax_loss.get_lines()  # every logged loss against its step; R only where validation ran
    assert (loss.get_label(), list(loss.get_xdata()), list(loss.get_ydata())) == ("human", [1, 2], [0.5, -0.2])
    [r] = ax_r.get_lines()
    assert (r.get_label(), list(r.get_xdata()), list(r.get_ydata())) == ("human", [2], [0.3])
    label = training_figure(tmp_path).axes[0].get_ylabel()
    assert "pred - y log pred" in label and "without the constant log(y!), so it can be < 0" in label
