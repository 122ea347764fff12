"""The plots: which rows fit.png samples, and what each figure draws, read back from matplotlib's
artists rather than from pixels: whole-epoch axes, the truth in the legends, a diverged run."""

import io
import math
import re
import shutil

import matplotlib
import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.colors import to_hex
from typer.testing import CliRunner

from stages import data, plot
from stages.artifacts import History
from tests.conftest import ROOT
from tests.helpers import damaged_in_the_middle, set_params


def write_positions(path, n, row_group_size=1000):
    """A dataset whose x is each row's position and y = -2·position - 1, in several row groups,
    written with pyarrow alone."""
    x = np.arange(n, dtype=np.float32)
    pq.write_table(pa.table({"x": x, "y": -2 * x - 1}), path, row_group_size=row_group_size)


@pytest.mark.parametrize("n", [1, 7, 1999, 2000, 2001, 4001, 10_007])
def test_the_sample_is_evenly_spaced_rows_of_the_whole_file(n, tmp_path, monkeypatch):
    # Batches of 777 rows, across row groups of 1000: the sample must not depend on either.
    monkeypatch.setattr(data, "BATCH_ROWS", 777)
    path = tmp_path / "d.parquet"
    write_positions(path, n)
    x, y = plot.sample(path)
    rows = min(n, plot.SAMPLE_ROWS)
    assert len(x) == len(y) == rows
    np.testing.assert_array_equal(y, -2 * x - 1)  # each x with its own y
    positions = x.astype(np.int64)
    assert positions[0] == 0 and np.all(np.diff(positions) > 0)
    # Evenly spaced: every gap, the one from the last row round to the first included, is the
    # spacing n / rows rounded down or up. With `rows` gaps adding up to n, that also means the
    # sample reaches the end of the file.
    gaps = np.diff(np.append(positions, positions[0] + n))
    assert set(gaps) <= {n // rows, math.ceil(n / rows)}, sorted(set(gaps))


def test_a_file_damaged_after_its_first_row_group_is_named_in_the_error(tmp_path):
    path = damaged_in_the_middle(tmp_path)
    with pytest.raises(data.DataError, match=f"^{re.escape(str(path))}: the file is damaged"):
        plot.sample(path)


def test_the_sample_of_an_empty_file_is_empty(tmp_path):
    path = tmp_path / "d.parquet"
    write_positions(path, 0)
    x, y = plot.sample(path)
    assert len(x) == len(y) == 0
    # float32 like any other sample: an empty test set leaves the data plotted in float32.
    assert x.dtype == y.dtype == np.float32


def lines_by_label(axes):
    return {line.get_label(): line for line in axes.get_lines()}


def test_plot_fit_draws_the_samples_the_truth_and_both_fitted_lines():
    train = (np.array([0, 1, 4], np.float32), np.array([1, 2, 9], np.float32))
    test = (np.array([-2, 2], np.float32), np.array([-3, 5], np.float32))
    fits = {"module": (1.5, 0.25), "manual": (2.5, -0.75)}
    (axes,) = plot.plot_fit(train, test, (2.0, 1.0), fits).axes
    train_points, test_points = axes.collections
    np.testing.assert_array_equal(train_points.get_offsets(), np.column_stack(train))
    np.testing.assert_array_equal(test_points.get_offsets(), np.column_stack(test))
    lines = lines_by_label(axes)
    ends = np.array([-2.0, 4.0])  # the lines span the x of both samples
    truth = "truth: w=2, b=1"
    np.testing.assert_array_equal(lines[truth].get_xdata(), ends)
    np.testing.assert_allclose(lines[truth].get_ydata(), 2 * ends + 1)
    for name, (w, b) in fits.items():
        (label,) = (label for label in lines if label.startswith(f"{name}:"))
        assert label == f"{name}: w={w:.4g}, b={b:.4g}"
        np.testing.assert_array_equal(lines[label].get_xdata(), ends)
        np.testing.assert_allclose(lines[label].get_ydata(), w * ends + b)
    # The truth dashed and black; the legend names every sample and line; the axes say what they
    # show.
    assert (lines[truth].get_linestyle(), lines[truth].get_color()) == ("--", "k")
    legend = {t.get_text() for t in axes.get_legend().get_texts()}
    fitted = {f"{name}: w={w:.4g}, b={b:.4g}" for name, (w, b) in fits.items()}
    assert legend == {"train", "test", truth, *fitted}
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == (
        "x",
        "y",
        "Data and fitted lines",
    )
    # The data stay in view, with a tenth of their range as margin.
    assert axes.get_ylim() == pytest.approx((-3 - 1.2, 9 + 1.2))


def test_plot_fit_without_a_test_set_draws_only_the_training_sample():
    train = (np.array([0, 1], np.float32), np.array([1, 1], np.float32))
    empty = (np.empty(0, np.float32), np.empty(0, np.float32))
    (axes,) = plot.plot_fit(train, empty, (0.0, 1.0), {"module": (0.0, 1.0)}).axes
    assert len(axes.collections) == 1
    assert axes.get_ylim() == pytest.approx((1 - 0.1, 1 + 0.1))  # flat data: a margin of 0.1


def histories():
    return {
        "module": History(loss=[9.0, 4.0, 1.0], weight=[0.0, 1.0, 1.5], bias=[0.0, 0.5, 0.75]),
        "manual": History(loss=[9.0, 3.0, 2.0], weight=[0.0, 1.25, 2.0], bias=[0.0, 0.25, 1.0]),
    }


def test_plot_loss_draws_each_loss_curve_per_epoch_on_a_log_scale():
    (axes,) = plot.plot_loss(histories(), epochs=2).axes
    assert axes.get_yscale() == "log"
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == (
        "epoch (updates applied)",
        "training MSE (log scale)",
        "Loss per epoch",
    )
    lines = lines_by_label(axes)
    for name, history in histories().items():
        np.testing.assert_array_equal(lines[name].get_xdata(), [0, 1, 2])
        np.testing.assert_array_equal(lines[name].get_ydata(), history.loss)


def test_plot_params_draws_weight_and_bias_per_epoch_with_the_truth():
    figure = plot.plot_params(histories(), (3.0, 0.5), epochs=2)
    weight_axes, bias_axes = figure.axes
    assert figure.get_suptitle() == "Weight and bias per epoch"
    for axes, key, truth in ((weight_axes, "weight", 3.0), (bias_axes, "bias", 0.5)):
        lines = lines_by_label(axes)
        for name, history in histories().items():
            np.testing.assert_array_equal(lines[name].get_ydata(), getattr(history, key))
        true_line = lines[f"true {key} = {truth:.4g}"]
        np.testing.assert_array_equal(true_line.get_ydata(), [truth, truth])
        # Dashed black, as the truth on fit.png, and in no run's colour.
        assert (true_line.get_linestyle(), to_hex(true_line.get_color())) == ("--", "#000000")
        assert axes.get_ylabel() == key
        np.testing.assert_array_equal(lines["module"].get_xdata(), [0, 1, 2])
    assert weight_axes.get_shared_x_axes().joined(weight_axes, bias_axes)  # one epoch axis
    assert bias_axes.get_xlabel() == "epoch (updates applied)"


def test_the_plot_stage_draws_its_inputs_into_the_three_pngs(tmp_path, monkeypatch):
    params_path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_path)
    set_params(params_path, **{"data.weight": -2.0, "data.bias": -1.0, "epochs": 1})
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    write_positions(train, 3000)
    write_positions(test, 10)
    for name, last in (("module", "1.5,0.75"), ("manual", "2,1")):
        (tmp_path / f"{name}.csv").write_text(f"epoch,loss,weight,bias\n0,9,0,0\n1,4,{last}\n")
    figures = []
    real_png = plot.png

    def keep(figure):
        figures.append(figure)
        return real_png(figure)

    monkeypatch.setattr(plot, "png", keep)
    outputs = [tmp_path / f"{name}.png" for name in ("fit", "loss", "params")]
    args = ["--params", str(params_path), str(train), str(test)]
    args += [str(tmp_path / "module.csv"), str(tmp_path / "manual.csv"), *map(str, outputs)]
    result = CliRunner().invoke(plot.app, args)
    assert result.exit_code == 0, (result.output, result.exception)

    fit, loss, params = figures
    train_points, test_points = fit.axes[0].collections
    assert len(train_points.get_offsets()) == plot.SAMPLE_ROWS
    assert len(test_points.get_offsets()) == 10
    # The truth line spans the sampled x, which start at row 0 and end within a spacing of the end.
    fit_lines = lines_by_label(fit.axes[0])
    (start, end) = fit_lines["truth: w=-2, b=-1"].get_xdata()
    assert start == 0 and 3000 - math.ceil(3000 / plot.SAMPLE_ROWS) <= end < 3000
    np.testing.assert_allclose(fit_lines["truth: w=-2, b=-1"].get_ydata(), [-1, -2 * end - 1])
    assert {"module: w=1.5, b=0.75", "manual: w=2, b=1"} <= fit_lines.keys()
    np.testing.assert_array_equal(lines_by_label(loss.axes[0])["manual"].get_ydata(), [9, 4])
    np.testing.assert_array_equal(lines_by_label(params.axes[1])["module"].get_ydata(), [0, 0.75])
    # Each file holds its own figure, at 100 dots per inch.
    sizes = [matplotlib.image.imread(path).shape[:2] for path in outputs]
    assert sizes == [(450, 700), (450, 700), (600, 700)]


def test_the_png_bytes_do_not_depend_on_the_users_matplotlib_settings():
    figure = plot.plot_loss(histories(), epochs=2)
    default = plot.png(figure)
    with matplotlib.rc_context({"savefig.dpi": 50, "savefig.format": "svg"}):
        assert plot.png(figure) == default
    assert default.startswith(b"\x89PNG") and b"Software" not in default  # no version stamp
    assert matplotlib.image.imread(io.BytesIO(default)).shape[:2] == (450, 700)


def history(losses: list[float]) -> History:
    h = History()
    for k, loss in enumerate(losses):
        h.append(loss, 1.0 + k, 0.5 - k)
    return h


def legend(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_epoch_axes_have_whole_ticks_even_for_a_short_run():
    # Three rows: matplotlib's default locator would tick at 0.25 steps.
    runs = {"module": history([4.0, 2.0, 1.0]), "manual": history([4.0, 2.0, 1.0])}
    for figure in (plot.plot_loss(runs, epochs=2), plot.plot_params(runs, (3.0, 0.5), epochs=2)):
        for axes in figure.axes:
            figure.canvas.draw()  # the locator picks its ticks when drawn
            ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_diverged_run_says_where_it_stopped_on_the_loss_and_params_plots():
    runs = {"module": history([1.0, 10.0, 100.0]), "manual": history([1.0, 0.5, 0.25, 0.2])}
    expected = "module: diverged at epoch 3; stopped, last kept epoch 2 (x)"
    loss_axes = plot.plot_loss(runs, epochs=3).axes[0]
    assert legend(loss_axes) == [expected, "manual"]
    weight_axes, bias_axes = plot.plot_params(runs, (3.0, 0.5), epochs=3).axes
    for axes in (weight_axes, bias_axes):
        assert legend(axes)[:2] == [expected, "manual"]
    # The cross marks the module run's last kept row, epoch 2: its loss 100, weight 1 + 2 = 3
    # and bias 0.5 - 2 = -1.5 (see `history`), not the row before it.
    for axes, last in ((loss_axes, 100.0), (weight_axes, 3.0), (bias_axes, -1.5)):
        marks = [line for line in axes.get_lines() if line.get_marker() == "x"]
        assert len(marks) == 1
        assert (list(marks[0].get_xdata()), list(marks[0].get_ydata())) == ([2], [last])


def test_the_fit_legend_gives_the_true_and_the_fitted_lines():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    figure = plot.plot_fit((x, 3 * x + 0.5), (x[:0], x[:0]), (3.0, 0.5), {"module": (2.97, 0.53)})
    assert legend(figure.axes[0]) == ["train", "truth: w=3, b=0.5", "module: w=2.97, b=0.53"]


# Each run has one colour and line style in all three figures, so that a reader matches them
# across the figures and with the legend: module solid blue, manual dotted orange. The dots keep
# the manual line visible on top of the module line where the two fits coincide, as they do when
# both converge. Colours are compared as matplotlib draws them (hex), not by how they were named.
RUN_STYLES = {"module": (to_hex("tab:blue"), "-"), "manual": (to_hex("tab:orange"), ":")}


def test_each_run_has_its_own_colour_and_line_style_in_every_figure():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    fits = {"module": (2.97, 0.53), "manual": (2.97, 0.53)}
    fit_axes = plot.plot_fit((x, 3 * x + 0.5), (x[:0], x[:0]), (3.0, 0.5), fits).axes[0]
    runs = {"module": history([4.0, 2.0, 1.0]), "manual": history([4.0, 3.0, 2.0])}
    loss_axes = plot.plot_loss(runs, epochs=2).axes[0]
    weight_axes, bias_axes = plot.plot_params(runs, (3.0, 0.5), epochs=2).axes
    for axes in (fit_axes, loss_axes, weight_axes, bias_axes):
        for name, style in RUN_STYLES.items():
            (line,) = (line for line in axes.get_lines() if line.get_label().startswith(name))
            drawn = (to_hex(line.get_color()), line.get_linestyle())
            assert drawn == style, (name, axes.get_title())


@pytest.mark.parametrize(
    ("runs", "crosses"),
    [
        (
            {"module": history([1.0, 0.5, 0.25, 0.2]), "manual": history([1.0, 50.0])},
            {(1, "manual")},
        ),
        (
            {"module": history([1.0, 10.0, 100.0]), "manual": history([1.0, 50.0])},
            {(2, "module"), (1, "manual")},
        ),
    ],
    ids=["manual diverged", "both diverged"],
)
def test_the_cross_of_a_diverged_run_has_the_colour_of_its_run(runs, crosses):
    # The cross points to its own curve by its colour (at the run's last kept epoch); matplotlib's
    # next colour would be blue, the module run's, for a cross of the manual run alone.
    expected = {(epoch, RUN_STYLES[name][0]) for epoch, name in crosses}
    figures = (plot.plot_loss(runs, epochs=3), plot.plot_params(runs, (3.0, 0.5), epochs=3))
    for axes in (*figures[0].axes, *figures[1].axes):
        marks = [line for line in axes.get_lines() if line.get_marker() == "x"]
        assert {(line.get_xdata()[0], to_hex(line.get_color())) for line in marks} == expected
