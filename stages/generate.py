"""Generate the synthetic dataset from params.yaml: writes the train and test Parquet files."""

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from stages.cli import run
from stages.data import BATCH_ROWS, dataset_writer
from stages.params import DataParams, count_test_rows, load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def sample_x(rng: np.random.Generator, data: DataParams, start: int, stop: int) -> np.ndarray:
    """Rows start..stop-1 of x. linspace is computed per row, so chunks never need all n rows."""
    if data.x_dist == "linspace":
        step = (data.x_max - data.x_min) / (data.n_samples - 1)
        x = data.x_min + np.arange(start, stop, dtype=np.float64) * step
        if stop == data.n_samples:
            x[-1] = data.x_max  # both ends included exactly, as in np.linspace
    elif data.x_dist == "uniform":
        x = rng.uniform(data.x_min, data.x_max, stop - start)
    else:
        x = rng.normal(data.x_mean, data.x_std, stop - start)
    return x.astype(np.float32)


def sample_noise(rng: np.random.Generator, data: DataParams, count: int) -> np.ndarray:
    if data.noise_dist == "randint":
        scale = int(data.noise_scale)
        return rng.integers(-scale, scale, size=count, endpoint=True).astype(np.float64)
    return rng.normal(0.0, data.noise_scale, count)


def generate(
    data: DataParams, seed: int, chunk_rows: int = BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks (x, y, is_test) of the dataset, in row order, with float32 x and y.

    The test rows are a uniformly random subset of exactly count_test_rows(n, fraction) rows, drawn
    chunk by chunk: each chunk takes a hypergeometric share of the test rows still to place.
    """
    x_rng, noise_rng, split_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    n = data.n_samples
    tests_left = count_test_rows(n, data.test_fraction)
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        count = stop - start
        x = sample_x(x_rng, data, start, stop)
        # y follows the truth exactly for the stored float32 x; only the noise separates them.
        y = data.weight * x.astype(np.float64) + data.bias + sample_noise(noise_rng, data, count)
        k = int(split_rng.hypergeometric(tests_left, n - start - tests_left, count))
        is_test = np.zeros(count, dtype=bool)
        is_test[split_rng.choice(count, size=k, replace=False)] = True
        tests_left -= k
        yield x, y.astype(np.float32), is_test


@app.command()
def main(
    train_path: Annotated[Path, typer.Argument(help="Where to write the training rows (Parquet).")],
    test_path: Annotated[Path, typer.Argument(help="Where to write the test rows (Parquet).")],
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Generate data/train.parquet and data/test.parquet from the seed and data section."""
    params = load_params(params_path)
    with dataset_writer(train_path) as write_train, dataset_writer(test_path) as write_test:
        for x, y, is_test in generate(params.data, params.seed):
            write_train(x[~is_test], y[~is_test])
            write_test(x[is_test], y[is_test])


if __name__ == "__main__":
    run(app)
