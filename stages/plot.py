"""Plot the data and both fits, both loss curves, and weight and bias per epoch, as PNG files."""

import io
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stages.artifacts import History, read_history, write_bytes
from stages.cli import run
from stages.data import iter_batches, open_dataset
from stages.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# A scatter of millions of points is slow and shows nothing more: fit.png plots at most this many
# rows of each dataset, evenly spaced through the file (so a sorted linspace stays spread out).
SAMPLE_ROWS = 2000
STYLES = {"module": {"color": "tab:blue"}, "manual": {"color": "tab:orange", "linestyle": ":"}}


def sample(path: Path, rows: int = SAMPLE_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Up to `rows` evenly spaced rows of a dataset, read one batch at a time."""
    file = open_dataset(path, allow_empty=True)
    n = file.metadata.num_rows
    wanted = np.unique(np.arange(min(rows, n)) * n // max(min(rows, n), 1))
    xs, ys, start = [], [], 0
    for x, y in iter_batches(path, file=file):
        here = wanted[(wanted >= start) & (wanted < start + len(x))] - start
        xs.append(x[here])
        ys.append(y[here])
        start += len(x)
    empty = np.empty(0, np.float32)
    return (np.concatenate(xs), np.concatenate(ys)) if xs else (empty, empty)


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" entry: the bytes then depend only on what is drawn.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def plot_fit(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    truth: tuple[float, float],
    fits: dict[str, tuple[float, float]],
) -> Figure:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.scatter(*train, s=6, alpha=0.4, color="tab:gray", label="train")
    if len(test[0]):
        axes.scatter(*test, s=6, alpha=0.6, color="tab:green", label="test")
    xs = np.concatenate([train[0], test[0]])
    line_x = np.array([xs.min(), xs.max()], dtype=np.float64)
    ys = np.concatenate([train[1], test[1]])
    truth_label = f"truth: w={truth[0]:.4g}, b={truth[1]:.4g}"
    axes.plot(line_x, truth[0] * line_x + truth[1], "k--", label=truth_label)
    for name, (weight, bias) in fits.items():
        axes.plot(
            line_x,
            weight * line_x + bias,
            label=f"{name}: w={weight:.4g}, b={bias:.4g}",
            **STYLES[name],
        )
    # A diverged fit can be far off; keep the data in view rather than the runaway line.
    margin = 0.1 * (ys.max() - ys.min() or 1.0)
    axes.set_ylim(ys.min() - margin, ys.max() + margin)
    axes.set(xlabel="x", ylabel="y", title="Data and fitted lines")
    axes.legend()
    return figure


def _plot_run(axes: Axes, name: str, history: History, values: list[float], epochs: int) -> None:
    """One run's curve. A run that diverged says so in the legend and ends in a cross at the last
    epoch it kept: the next update crossed the divergence bound, and training stopped there."""
    diverged_at = history.diverged_at(epochs)
    label = name
    if diverged_at is not None:
        label += (
            f": diverged at epoch {diverged_at}; stopped, last kept epoch {diverged_at - 1} (x)"
        )
    axes.plot(range(len(values)), values, label=label, **STYLES[name])
    if diverged_at is not None:
        axes.plot(len(values) - 1, values[-1], "x", markersize=10, color=STYLES[name]["color"])


def _epoch_axis(axes: Axes) -> None:
    # Epochs count updates: whole numbers, never 2.5.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="epoch (updates applied)")


def plot_loss(histories: dict[str, History], epochs: int) -> Figure:
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    for name, history in histories.items():
        _plot_run(axes, name, history, history.loss, epochs)
    axes.set_yscale("log")
    _epoch_axis(axes)
    axes.set(ylabel="training MSE (log scale)", title="Loss per epoch")
    axes.legend()
    return figure


def plot_params(histories: dict[str, History], truth: tuple[float, float], epochs: int) -> Figure:
    figure = Figure(figsize=(7, 6), layout="constrained")
    for axes, key, true_value in zip(
        figure.subplots(2, 1, sharex=True), ("weight", "bias"), truth, strict=True
    ):
        for name, history in histories.items():
            _plot_run(axes, name, history, getattr(history, key), epochs)
        axes.axhline(true_value, color="k", linestyle="--", label=f"true {key} = {true_value:.4g}")
        axes.set(ylabel=key)
        axes.legend()
    _epoch_axis(axes)
    figure.suptitle("Weight and bias per epoch")
    return figure


@app.command()
def main(
    train_path: Annotated[Path, typer.Argument(help="The training data (Parquet).")],
    test_path: Annotated[Path, typer.Argument(help="The test data (Parquet).")],
    module_history_path: Annotated[Path, typer.Argument(help="train_module's history (CSV).")],
    manual_history_path: Annotated[Path, typer.Argument(help="train_manual's history (CSV).")],
    fit_path: Annotated[Path, typer.Argument(help="Where to write the data and fits (PNG).")],
    loss_path: Annotated[Path, typer.Argument(help="Where to write the loss curves (PNG).")],
    params_plot_path: Annotated[
        Path, typer.Argument(help="Where to write weight and bias per epoch (PNG).")
    ],
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Draw fit.png, loss.png and params.png from the data and the training histories."""
    params = load_params(params_path)
    truth = (params.data.weight, params.data.bias)
    histories = {
        "module": read_history(module_history_path),
        "manual": read_history(manual_history_path),
    }
    fits = {name: (h.weight[-1], h.bias[-1]) for name, h in histories.items()}
    write_bytes(fit_path, png(plot_fit(sample(train_path), sample(test_path), truth, fits)))
    write_bytes(loss_path, png(plot_loss(histories, params.epochs)))
    write_bytes(params_plot_path, png(plot_params(histories, truth, params.epochs)))


if __name__ == "__main__":
    run(app)
