"""Generate the synthetic dataset from params.yaml: writes the train and test Parquet files."""

import math
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


# numpy's hypergeometric sampler refuses populations of 10^9 or more good or bad items
# ("both ngood and nbad must be less than 1000000000"): from n ≈ 1.25e9 rows at the default
# test_fraction, the first chunks' split is beyond it.
NUMPY_HYPERGEOMETRIC_LIMIT = 10**9


def hypergeometric(rng: np.random.Generator, good: int, bad: int, sample: int) -> int:
    """How many good items `sample` draws without replacement take from `good` good and `bad`
    bad items: numpy's sampler within its limit (so smaller runs keep their bytes), the exact
    inversion below beyond it."""
    if good < NUMPY_HYPERGEOMETRIC_LIMIT and bad < NUMPY_HYPERGEOMETRIC_LIMIT:
        return int(rng.hypergeometric(good, bad, sample))
    return hypergeometric_by_inversion(rng, good, bad, sample)


def hypergeometric_by_inversion(rng: np.random.Generator, good: int, bad: int, sample: int) -> int:
    """A hypergeometric draw by inversion of its distribution, for populations of any size.

    P(k) is proportional to C(good, k) · C(bad, sample - k), and the ratio of neighbours is
    P(k + 1) / P(k) = (good - k)(sample - k) / ((k + 1)(bad - sample + k + 1)). Starting from the
    mode, these ratios give each P(k) relative to the mode's in float64: one rounding per ratio
    (the counts are exact below 2^53), summed as logarithms. The distribution is log-concave, so
    it falls off faster than geometrically past the window, which is widened until both edges are
    below e^-60 of the mode (or reach the support): what is left out weighs less than 1e-20,
    beyond what a uniform double (steps of 2^-53) resolves. One uniform double then picks k from
    the cumulative sum. The window spans about 26 standard deviations: at most 2^20 draws per
    chunk keep it under 14,000 values, a fraction of a millisecond.
    """
    total = good + bad
    low, high = max(0, sample - bad), min(sample, good)
    if low == high:
        return low
    mode = min(max((sample + 1) * (good + 1) // (total + 2), low), high)
    sd = math.sqrt(sample * (good / total) * (bad / total) * (total - sample) / (total - 1))
    half = math.ceil(13 * sd) + 20
    while True:
        start, stop = max(low, mode - half), min(high, mode + half)
        # log P(k) - log P(mode) for k = start .. stop, from the ratios on either side.
        up = np.arange(mode, stop, dtype=np.float64)
        down = np.arange(mode - 1, start - 1, -1, dtype=np.float64)
        log_up = np.cumsum(np.log(_ratio(good, bad, sample, up)))
        log_down = np.cumsum(-np.log(_ratio(good, bad, sample, down)))
        log_p = np.concatenate([log_down[::-1], [0.0], log_up])
        if (start == low or log_p[0] < -60) and (stop == high or log_p[-1] < -60):
            break
        half *= 2
    cumulative = np.cumsum(np.exp(log_p))
    return start + int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


def _ratio(good: int, bad: int, sample: int, k: np.ndarray) -> np.ndarray:
    """P(k + 1) / P(k) of the hypergeometric distribution, for each k."""
    return ((good - k) * (sample - k)) / ((k + 1) * (bad - sample + k + 1))


def split_counts(rng: np.random.Generator, n: int, n_test: int, chunk_rows: int) -> Iterator[int]:
    """How many of each chunk's rows go to test, chunk by chunk: a hypergeometric share of the
    test rows still to place among the rows still to come. Every count is within what is left,
    and the last chunk takes exactly the rest, so they add up to n_test; and every subset of
    n_test rows is equally likely."""
    tests_left = n_test
    for start in range(0, n, chunk_rows):
        count = min(chunk_rows, n - start)
        k = hypergeometric(rng, tests_left, n - start - tests_left, count)
        tests_left -= k
        yield k


def generate(
    data: DataParams, seed: int, chunk_rows: int = BATCH_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks (x, y, is_test) of the dataset, in row order, with float32 x and y.

    The test rows are a uniformly random subset of exactly count_test_rows(n, fraction) rows:
    each chunk takes the share split_counts draws, at positions drawn uniformly within it.
    """
    x_rng, noise_rng, split_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    n = data.n_samples
    # split_rng draws a chunk's count, then its positions, then the next chunk's count ...
    counts = split_counts(split_rng, n, count_test_rows(n, data.test_fraction), chunk_rows)
    for start, k in zip(range(0, n, chunk_rows), counts, strict=True):
        stop = min(start + chunk_rows, n)
        count = stop - start
        x = sample_x(x_rng, data, start, stop)
        # y follows the truth exactly for the stored float32 x; only the noise separates them.
        y = data.weight * x.astype(np.float64) + data.bias + sample_noise(noise_rng, data, count)
        is_test = np.zeros(count, dtype=bool)
        is_test[split_rng.choice(count, size=k, replace=False)] = True
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
