"""What the plots draw: whole-epoch axes, the truth in the legends, and a diverged run named."""

import numpy as np

from stages.artifacts import History
from stages.plot import plot_fit, plot_loss, plot_params


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
    for figure in (plot_loss(runs, epochs=2), plot_params(runs, (3.0, 0.5), epochs=2)):
        for axes in figure.axes:
            figure.canvas.draw()  # the locator picks its ticks when drawn
            ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_diverged_run_says_where_it_stopped_on_the_loss_and_params_plots():
    runs = {"module": history([1.0, 10.0, 100.0]), "manual": history([1.0, 0.5, 0.25, 0.2])}
    expected = "module: diverged at epoch 3; stopped, last kept epoch 2 (x)"
    assert legend(plot_loss(runs, epochs=3).axes[0]) == [expected, "manual"]
    for axes in plot_params(runs, (3.0, 0.5), epochs=3).axes:
        assert legend(axes)[:2] == [expected, "manual"]
        # The cross marks the module run's last kept row.
        marks = [line for line in axes.get_lines() if line.get_marker() == "x"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [2]


def test_the_fit_legend_gives_the_true_and_the_fitted_lines():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    figure = plot_fit((x, 3 * x + 0.5), (x[:0], x[:0]), (3.0, 0.5), {"module": (2.97, 0.53)})
    assert legend(figure.axes[0]) == ["train", "truth: w=3, b=0.5", "module: w=2.97, b=0.53"]
