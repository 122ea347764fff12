"""Generating the dataset and reading it back: the schema, the split, and clear errors."""

import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from stages import data as data_module
from stages import generate as generate_stage
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
from tests.conftest import ROOT
from tests.helpers import REFERENCE_MODULE, damaged_in_the_middle, params, set_params


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


# Bounds for the statistics of a uniformly random subset, each exceeded by chance with
# probability below 1e-3 (the seeds are fixed, so each test is deterministic; the bounds say how
# unlucky a correct split would have to be to fail).
# Kolmogorov-Smirnov: by the DKW inequality with Massart's constant, an i.i.d. sample of size k
# has P(√k·D > t) ≤ 2·exp(-2t²), which is 1e-3 at t = 1.95; a sample drawn without replacement
# concentrates at least as well (Serfling, 1974).
KS_BOUND = math.sqrt(math.log(2 / 1e-3) / 2)
# Wald-Wolfowitz runs: the count of runs of test and train rows is close to normal for large n;
# |z| > 4 has probability 6e-5 under it (and at most 1/16 by Chebyshev's inequality).
RUNS_BOUND = 4.0


def ks_statistic(u: np.ndarray) -> float:
    """√k times the largest gap between the empirical CDF of u and the uniform one on [0, 1)."""
    u, k = np.sort(u), len(u)
    i = np.arange(1, k + 1)
    return math.sqrt(k) * max(np.max(i / k - u), np.max(u - (i - 1) / k))


def runs_z(is_test: np.ndarray) -> float:
    """The runs count of a 0/1 sequence, standardised by its mean and variance under a uniformly
    random arrangement of the same numbers of ones and zeros."""
    n, k = len(is_test), int(is_test.sum())
    runs = 1 + int(np.count_nonzero(is_test[1:] != is_test[:-1]))
    pairs = 2 * k * (n - k)
    mean = 1 + pairs / n
    variance = pairs * (pairs - n) / (n * n * (n - 1))
    return (runs - mean) / math.sqrt(variance)


def assert_uniform_subset(is_test: np.ndarray, chunk_rows: int) -> None:
    """The test rows are spread like a uniformly random subset: over the whole file, within each
    chunk (where the generator draws them), and with no clustering or regular spacing."""
    n = len(is_test)
    positions = np.flatnonzero(is_test)
    whole = ks_statistic((positions + 0.5) / n)
    assert whole < KS_BOUND, f"test rows unevenly spread over the file: √k·D = {whole:.3g}"
    starts = positions // chunk_rows * chunk_rows
    lengths = np.minimum(starts + chunk_rows, n) - starts
    within = ks_statistic((positions - starts + 0.5) / lengths)
    assert within < KS_BOUND, f"test rows unevenly spread within chunks: √k·D = {within:.3g}"
    z = runs_z(is_test)
    assert abs(z) < RUNS_BOUND, f"test rows clustered or evenly spaced: runs z = {z:.3g}"


def test_the_test_rows_are_a_uniformly_random_subset():
    data = params(**{"data.n_samples": 100_000, "data.test_fraction": 0.2}).data
    _, _, is_test = collect(generate(data, seed=1, chunk_rows=1000))
    assert is_test.sum() == 20_000
    assert_uniform_subset(is_test, chunk_rows=1000)


def split_at_chunk_starts(n, k, chunk):
    is_test = np.zeros(n, bool)
    for start in range(0, n, chunk):
        is_test[start : start + k * chunk // n] = True
    return is_test


@pytest.mark.parametrize(
    "bad_split",
    [
        pytest.param(lambda n, k, c: split_at_chunk_starts(n, k, c), id="at each chunk's start"),
        pytest.param(lambda n, k, c: np.arange(n) % (n // k) == 0, id="every fifth row"),
        pytest.param(lambda n, k, c: np.arange(n) >= n - k, id="the last rows"),
        pytest.param(
            lambda n, k, c: np.random.default_rng(0).permutation(n) < k * (np.arange(n) < n // 2),
            id="first half only",
        ),
    ],
)
def test_the_split_checks_fail_for_splits_that_are_not_random(bad_split):
    # The statistics above must be able to fail: splits with the right count, wrongly placed.
    n, k, chunk = 100_000, 20_000, 1000
    is_test = bad_split(n, k, chunk)
    with pytest.raises(AssertionError):
        assert_uniform_subset(is_test, chunk)


def test_generate_writes_a_uniformly_random_split_over_several_row_groups(tmp_path):
    # linspace from 0 to n - 1 makes each row's x its position, so the positions of the test
    # rows can be read back from the files, here with pyarrow alone.
    n = 2 * data_module.BATCH_ROWS + 400_000
    params_path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_path)
    set_params(
        params_path,
        seed=3,
        **{
            "data.n_samples": n,
            "data.test_fraction": 0.2,
            "data.x_dist": "linspace",
            "data.x_min": 0,
            "data.x_max": n - 1,
        },
    )
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    args = ["--params", str(params_path), str(train), str(test)]
    result = CliRunner().invoke(generate_stage.app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert pq.ParquetFile(train).metadata.num_row_groups > 1
    test_x = pq.read_table(test).column("x").to_numpy()
    train_x = pq.read_table(train).column("x").to_numpy()
    # Each row is in exactly one file, in the order it was generated.
    assert len(test_x) == round(0.2 * n)
    assert np.all(np.diff(test_x) > 0) and np.all(np.diff(train_x) > 0)
    is_test = np.zeros(n, bool)
    is_test[test_x.astype(np.int64)] = True
    assert np.array_equal(np.flatnonzero(~is_test), train_x.astype(np.int64))
    assert_uniform_subset(is_test, data_module.BATCH_ROWS)


def test_linspace_includes_both_ends_and_randint_noise_is_integral():
    data = params(**REFERENCE_MODULE).data  # linspace(0, 50), integer noise in [-10, 10]
    x, y, is_test = collect(generate(data, seed=0, chunk_rows=7))
    np.testing.assert_array_equal(x, np.linspace(0, 50, 50, dtype=np.float32))
    noise = y.astype(np.float64) - (2 * x.astype(np.float64) + 1)
    np.testing.assert_allclose(noise, np.round(noise), atol=1e-4)
    assert noise.min() >= -10 and noise.max() <= 10
    assert not is_test.any()


def test_linspace_away_from_zero_is_evenly_spaced_from_x_min_to_x_max():
    data = params(**{"data.n_samples": 101, "data.x_dist": "linspace", "data.x_min": -2.0}).data
    x, _, _ = collect(generate(data, seed=0, chunk_rows=10))
    np.testing.assert_allclose(x, np.linspace(-2.0, data.x_max, 101), rtol=1e-6)
    assert (x[0], x[-1]) == (-2.0, data.x_max)


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
    x, _, _ = collect(generate(data, seed=3, chunk_rows=1000))  # twenty chunks
    assert len(x) == 20_000
    if dist == "uniform":
        assert x.min() >= low and x.max() <= high and abs(x.mean() - 0.5) < 0.05
    else:
        assert abs(x.mean() - 5) < 0.05 and abs(x.std() - 2) < 0.05


# The 0.999 quantile of the chi-square distribution with 4 degrees of freedom.
CHI2_4DOF_BOUND = 18.47


@pytest.mark.parametrize("noise", ["normal", "randint"])
def test_the_noise_follows_its_distribution(noise):
    data = params(
        **{"data.n_samples": 20_000, "data.noise_dist": noise, "data.noise_scale": 2}
    ).data
    x, y, _ = collect(generate(data, seed=4, chunk_rows=1000))
    residual = y.astype(np.float64) - (data.weight * x.astype(np.float64) + data.bias)
    if noise == "normal":
        # Mean 0 (within 5 standard errors) and standard deviation 2; float32 y adds ~1e-6.
        assert abs(residual.mean()) < 5 * 2 / math.sqrt(len(y))
        assert abs(residual.std() - 2) < 0.05
    else:
        # Integers from -2 to 2, both ends included, equally likely (chi-square, p < 1e-3).
        values, counts = np.unique(np.round(residual), return_counts=True)
        assert values.tolist() == [-2, -1, 0, 1, 2]
        expected = len(y) / 5
        assert np.sum((counts - expected) ** 2 / expected) < CHI2_4DOF_BOUND


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


def test_a_dataset_of_several_batches_is_read_back_whole_as_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "BATCH_ROWS", 64)  # 1000 rows: 16 batches
    x = np.arange(1000, dtype=np.float32)
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": x, "y": x / 4}), path, row_group_size=300)
    read_x, read_y = read_dataset(path)
    assert read_x.dtype == read_y.dtype == np.float32
    np.testing.assert_array_equal(read_x, x)
    np.testing.assert_array_equal(read_y, x / 4)
    # Memory stays bounded: no batch is larger than BATCH_ROWS.
    assert max(len(xb) for xb, _ in iter_batches(path)) == 64


def test_a_bad_value_in_a_later_batch_is_reported_at_its_row_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "BATCH_ROWS", 64)
    y = np.zeros(1000, np.float32)
    y[700] = np.nan
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": np.zeros(1000, np.float32), "y": y}), path)
    with pytest.raises(DataError, match=r"column 'y' has .* \(first at row 700\)"):
        read_dataset(path)


def test_an_empty_dataset_is_refused_unless_allowed(tmp_path):
    path = bad_file(tmp_path, "empty")
    with pytest.raises(DataError, match="no rows"):
        list(iter_batches(path))


def test_a_file_damaged_after_its_first_row_group_is_refused_with_its_name(tmp_path):
    path = damaged_in_the_middle(tmp_path)
    with pytest.raises(DataError) as caught:
        read_dataset(path)
    assert str(caught.value).startswith(f"{path}: the file is damaged and cannot be read (")


def test_the_damaged_file_error_is_one_line(tmp_path):
    with pytest.raises(DataError) as caught:
        read_dataset(damaged_in_the_middle(tmp_path))
    assert "\n" not in str(caught.value).strip()


def test_a_pyarrow_message_is_shown_on_one_line_without_control_characters():
    # Thrift errors span lines and carry NUL bytes; an empty message still names the error.
    thrift = OSError("Couldn't deserialize thrift:\n\x00 TProtocolException:\tInvalid data\n")
    assert (
        data_module._one_line(thrift)
        == "Couldn't deserialize thrift: TProtocolException: Invalid data"
    )
    assert data_module._one_line(OSError("")) == "OSError"


def test_a_file_that_is_not_parquet_is_refused_with_pyarrows_reason(tmp_path):
    path = bad_file(tmp_path, "not parquet")
    with pytest.raises(DataError) as caught:
        read_dataset(path)
    assert str(caught.value) == (
        f"{path}: not a readable Parquet file (Parquet magic bytes not found in footer. Either "
        "the file is corrupted or this is not a parquet file.)"
    )


def test_a_damaged_row_group_is_refused_with_pyarrows_reason(tmp_path):
    # The page header of the second row group is garbage: pyarrow's thrift message, on one line.
    path = damaged_in_the_middle(tmp_path)
    with pytest.raises(DataError) as caught:
        read_dataset(path)
    assert str(caught.value) == (
        f"{path}: the file is damaged and cannot be read (Couldn't deserialize thrift: don't "
        "know what type: Deserializing page header failed.)"
    )


@pytest.fixture
def nan_at_row_700(tmp_path, monkeypatch):
    """x = 0, 1, ..., 999 and y = -x, but for a NaN in y at row 700, in row groups of 300 rows
    read in batches of 64: row 700 is in the third row group (rows 600 to 899), second batch."""
    monkeypatch.setattr(data_module, "BATCH_ROWS", 64)
    x = np.arange(1000, dtype=np.float32)
    y = -x
    y[700] = np.nan
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": x, "y": y}), path, row_group_size=300)
    return path


@pytest.mark.parametrize("groups", [None, range(2, 4)], ids=["all row groups", "from the third"])
def test_iter_batches_reports_a_bad_value_at_its_row_in_the_file(nan_at_row_700, groups):
    # The stages that stream the data (moments, plot's sample) rely on iter_batches' own check;
    # the row is counted from the start of the file, whichever row group the reading starts at.
    with pytest.raises(DataError) as caught:
        list(iter_batches(nan_at_row_700, row_groups=groups))
    assert str(caught.value) == (
        f"{nan_at_row_700}: column 'y' has a missing, NaN or infinite value (first at row 700); "
        "every value must be a finite number"
    )


def test_a_share_is_checked_only_for_its_own_rows(nan_at_row_700):
    # Row 700 is reported by the process whose rows hold it; the others, whose rows share its row
    # group and its batch, read theirs without error.
    for start, stop in [(640, 700), (701, 750)]:
        x, y = read_dataset(nan_at_row_700, start, stop)
        rows = np.arange(start, stop, dtype=np.float32)
        np.testing.assert_array_equal(x, rows)
        np.testing.assert_array_equal(y, -rows)
    with pytest.raises(DataError, match=r"\(first at row 700\)"):
        read_dataset(nan_at_row_700, 690, 710)


@pytest.mark.parametrize(("start", "stop"), [(5, 11), (-1, 3), (6, 5), (11, 11)])
def test_rows_outside_the_file_are_refused(tmp_path, start, stop):
    path = tmp_path / "d.parquet"
    write(path, np.arange(10, dtype=np.float32), np.zeros(10, np.float32))
    with pytest.raises(DataError) as caught:
        read_dataset(path, start, stop)
    assert str(caught.value) == f"{path}: rows {start}..{stop} asked for, but the file has 10"


# Row groups as the generator writes them: of uneven sizes, some empty (a chunk with no test
# rows), here starting at rows 0, 100, 100, 137, 387, 387, 387, 400 and ending at 1000, read in
# batches of 30. The shares start and stop on the row-group edges and next to them, on and around
# the empty groups, and cover empty shares, single rows and the whole file.
GROUP_SIZES = [100, 0, 37, 250, 0, 0, 13, 600]
SHARES = [
    (0, 0),
    (100, 100),
    (387, 387),
    (1000, 1000),
    (0, 1),
    (99, 100),
    (100, 101),
    (99, 101),
    (0, 100),
    (100, 137),
    (136, 138),
    (137, 387),
    (386, 388),
    (387, 400),
    (399, 401),
    (30, 60),
    (50, 450),
    (999, 1000),
    (400, 1000),
    (0, 1000),
]


@pytest.mark.parametrize(("start", "stop"), SHARES)
def test_a_share_of_the_rows_is_that_slice_of_the_whole_file(tmp_path, monkeypatch, start, stop):
    # A wrong row group at either end, or a batch cut at the wrong row, shifts or drops rows:
    # compared here with the same slice of pyarrow's own read of the whole file. x is each row's
    # position, so a shifted row shows in the message.
    path = tmp_path / "d.parquet"
    x = np.arange(1000, dtype=np.float32)
    with dataset_writer(path) as append:
        for first, size in zip(np.cumsum([0, *GROUP_SIZES[:-1]]), GROUP_SIZES, strict=True):
            append(x[first : first + size], -x[first : first + size])
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == GROUP_SIZES
    monkeypatch.setattr(data_module, "BATCH_ROWS", 30)
    whole = pq.read_table(path)
    part_x, part_y = read_dataset(path, start, stop)
    assert part_x.dtype == part_y.dtype == np.float32
    np.testing.assert_array_equal(part_x, whole.column("x").to_numpy()[start:stop])
    np.testing.assert_array_equal(part_y, whole.column("y").to_numpy()[start:stop])
