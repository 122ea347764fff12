"""Generating the dataset and reading it back: the schema, the split, and clear errors."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.data import (
    DataError,
    _to_numpy,
    dataset_writer,
    iter_batches,
    open_dataset,
    read_dataset,
)
from stages.generate import generate
from stages.params import count_test_rows
from tests.helpers import REFERENCE_MODULE, params


def collect(chunks):
    x, y, is_test = (np.concatenate(parts) for parts in zip(*chunks, strict=True))
    return x, y, is_test


def test_generate_is_deterministic_float32_and_splits_exactly():
    data = params(**{"data.n_samples": 1001, "data.test_fraction": 0.3}).data
    x, y, is_test = collect(generate(data, seed=7, chunk_rows=64))
    again = collect(generate(data, seed=7, chunk_rows=64))
    assert all(np.array_equal(a, b) for a, b in zip((x, y, is_test), again, strict=True))
    assert x.dtype == y.dtype == np.float32
    assert len(x) == 1001
    assert is_test.sum() == count_test_rows(1001, 0.3) == 300
    other_seed = collect(generate(data, seed=8, chunk_rows=64))
    assert not np.array_equal(x, other_seed[0])


def test_the_test_rows_are_spread_over_the_whole_dataset():
    data = params(**{"data.n_samples": 10_000, "data.test_fraction": 0.5}).data
    _, _, is_test = collect(generate(data, seed=1, chunk_rows=100))
    # Each tenth of the rows holds about half test rows, not all of them in one place.
    shares = is_test.reshape(10, -1).mean(axis=1)
    assert np.all(np.abs(shares - 0.5) < 0.05)


def test_linspace_includes_both_ends_and_randint_noise_is_integral():
    data = params(**REFERENCE_MODULE).data  # linspace(0, 50), integer noise in [-10, 10]
    x, y, is_test = collect(generate(data, seed=0, chunk_rows=7))
    np.testing.assert_array_equal(x, np.linspace(0, 50, 50, dtype=np.float32))
    noise = y.astype(np.float64) - (2 * x.astype(np.float64) + 1)
    np.testing.assert_allclose(noise, np.round(noise), atol=1e-4)
    assert noise.min() >= -10 and noise.max() <= 10
    assert not is_test.any()


@pytest.mark.parametrize(
    ("dist", "low", "high"), [("uniform", -2.0, 3.0), ("normal", -np.inf, np.inf)]
)
def test_x_follows_its_distribution(dist, low, high):
    data = params(
        **{
            "data.n_samples": 20_000,
            "data.x_dist": dist,
            "data.x_min": low if dist == "uniform" else 0,
            "data.x_max": high if dist == "uniform" else 1,
            "data.x_mean": 5,
            "data.x_std": 2,
        }
    ).data
    x, _, _ = collect(generate(data, seed=3))
    if dist == "uniform":
        assert x.min() >= low and x.max() <= high and abs(x.mean() - 0.5) < 0.05
    else:
        assert abs(x.mean() - 5) < 0.05 and abs(x.std() - 2) < 0.05


def write(path, x, y):
    with dataset_writer(path) as append:
        for start in range(0, len(x), 3):
            append(x[start : start + 3], y[start : start + 3])


def test_a_dataset_round_trips_through_parquet(tmp_path):
    x = np.arange(10, dtype=np.float32)
    y = 2 * x + 1
    path = tmp_path / "d.parquet"
    write(path, x, y)
    read_x, read_y = read_dataset(path)
    np.testing.assert_array_equal(read_x, x)
    np.testing.assert_array_equal(read_y, y)
    assert pq.ParquetFile(path).schema_arrow == pa.schema(
        [("x", pa.float32()), ("y", pa.float32())]
    )
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_any_numpy_input_is_written_as_float32_and_read_back_in_place(tmp_path):
    # The writer and reader wrap Arrow buffers directly instead of pyarrow's conversions, so
    # they must handle what those would: other dtypes, strided input, sliced columns.
    values = np.linspace(-1, 1, 40)  # float64
    half = values[:5].astype(np.float16)
    path = tmp_path / "d.parquet"
    with dataset_writer(path) as append:
        append(values[::2], values[1::2])  # strided views
        append(half, values[5:10])
    x, y = read_dataset(path)
    np.testing.assert_array_equal(x, np.concatenate([values[::2], half]).astype(np.float32))
    np.testing.assert_array_equal(
        y, np.concatenate([values[1::2], values[5:10]]).astype(np.float32)
    )
    column = pa.array(np.arange(10, dtype=np.float32)).slice(3, 4)
    np.testing.assert_array_equal(_to_numpy(column), [3, 4, 5, 6])


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "d.parquet"
    with pytest.raises(RuntimeError), dataset_writer(path) as append:
        append(np.ones(3), np.ones(3))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def bad_file(tmp_path, kind):
    path = tmp_path / "bad.parquet"
    good = pa.table(
        {"x": pa.array([1.0, 2.0], pa.float32()), "y": pa.array([1.0, 2.0], pa.float32())}
    )
    if kind == "missing":
        return path
    if kind == "not parquet":
        path.write_text("x,y\n1,2\n")
    elif kind == "truncated":
        pq.write_table(good, path)
        path.write_bytes(path.read_bytes()[:-20])
    elif kind == "missing column":
        pq.write_table(good.drop_columns(["y"]), path)
    elif kind == "wrong dtype":
        pq.write_table(good.set_column(0, "x", pa.array([1.0, 2.0], pa.float64())), path)
    elif kind == "nan":
        pq.write_table(good.set_column(1, "y", pa.array([1.0, np.nan], pa.float32())), path)
    elif kind == "infinite":
        pq.write_table(good.set_column(0, "x", pa.array([np.inf, 1.0], pa.float32())), path)
    elif kind == "null":
        pq.write_table(good.set_column(1, "y", pa.array([1.0, None], pa.float32())), path)
    elif kind == "empty":
        pq.write_table(good.slice(0, 0), path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "file not found"),
        ("not parquet", "not a readable Parquet file"),
        ("truncated", "not a readable Parquet file"),
        ("missing column", "missing column 'y'"),
        ("wrong dtype", "column 'x' is double; expected float"),
        ("nan", "column 'y' has a missing, NaN or infinite value (first at row 1)"),
        ("infinite", "column 'x' has a missing, NaN or infinite value (first at row 0)"),
        ("null", "column 'y' has a missing, NaN or infinite value"),
        ("empty", "the dataset has no rows"),
    ],
)
def test_bad_files_are_refused_with_the_file_and_the_problem(tmp_path, kind, message):
    path = bad_file(tmp_path, kind)
    with pytest.raises(DataError) as caught:
        read_dataset(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_an_empty_test_set_is_allowed_where_asked(tmp_path):
    path = bad_file(tmp_path, "empty")
    assert open_dataset(path, allow_empty=True).metadata.num_rows == 0
    assert list(iter_batches(path, allow_empty=True)) == []
