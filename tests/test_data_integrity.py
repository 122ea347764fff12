"""Damaged Parquet files that look valid: a footer whose row count lies, duplicate columns; and
reading a share of the rows reads only the row groups that hold it (issues 10 and 13)."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages import data
from stages.data import DataError, dataset_writer, read_dataset
from tests.conftest import ENV, ROOT

ROWS = 800


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rewrite_row_counts(path, old: int, new: int, occurrences: int) -> None:
    """Edit the first `occurrences` row counts in the Thrift footer of a Parquet file.

    In Thrift's compact encoding a count is byte 0x16 (the next field, an i64) and the count as a
    zigzag varint. The file's count comes first, after the schema; then, for each row group, the
    value count of each column (x, then y) and the row group's own row count.
    """
    raw = path.read_bytes()
    assert raw.endswith(b"PAR1")
    length = int.from_bytes(raw[-8:-4], "little")
    footer = raw[-8 - length : -8]
    before, after = b"\x16" + varint(2 * old), b"\x16" + varint(2 * new)
    assert footer.count(before) >= occurrences
    footer = footer.replace(before, after, occurrences)
    path.write_bytes(raw[: -8 - length] + footer + len(footer).to_bytes(4, "little") + b"PAR1")


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "train.parquet"
    x = np.linspace(0, 1, ROWS, dtype=np.float32)
    with dataset_writer(path) as write:
        write(x, 2 * x)
    return path


@pytest.mark.parametrize("count", [ROWS + 1, ROWS - 1, 2**31])
def test_a_footer_that_miscounts_the_rows_is_refused(good, count):
    rewrite_row_counts(good, ROWS, count, occurrences=1)
    assert pq.ParquetFile(good).metadata.num_rows == count  # the edit is what pyarrow reads
    with pytest.raises(DataError) as caught:
        read_dataset(good)
    assert str(caught.value) == (
        f"{good}: the file is damaged: its footer counts {count} rows, its row groups {ROWS}"
    )


def test_a_row_group_that_holds_fewer_rows_than_it_says_is_refused(good):
    # Every count says ROWS + 1: the file's, column x's and column y's, and the row group's, so
    # the footer agrees with itself; only reading the row group finds its ROWS rows.
    rewrite_row_counts(good, ROWS, ROWS + 1, occurrences=4)
    meta = pq.ParquetFile(good).metadata
    assert meta.num_rows == meta.row_group(0).num_rows == ROWS + 1  # what pyarrow reads
    with pytest.raises(DataError) as caught:
        read_dataset(good)
    assert str(caught.value) == (
        f"{good}: the file is damaged: row group 0 should hold {ROWS + 1} rows, "
        f"but {ROWS} were read"
    )


def test_a_trainer_refuses_a_miscounted_file_in_one_line(good, tmp_path):
    rewrite_row_counts(good, ROWS, 2**31, occurrences=1)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.train_manual",
            "--params",
            ROOT / "params.yaml",
            good,
            tmp_path / "m.pt",
            tmp_path / "h.csv",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {good}: the file is damaged: its footer counts {2**31} rows, its row groups {ROWS}"
    ]
    assert not (tmp_path / "m.pt").exists()


def test_duplicate_column_names_are_refused(tmp_path):
    path = tmp_path / "dup.parquet"
    column = pa.array(np.ones(3, np.float32))
    pq.write_table(pa.Table.from_arrays([column, column, column], names=["x", "x", "y"]), path)
    with pytest.raises(DataError) as caught:
        read_dataset(path)
    assert str(caught.value) == (
        f"{path}: column 'x' appears 2 times; each column must appear once"
    )


def test_a_share_of_the_rows_reads_only_the_row_groups_that_hold_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BATCH_ROWS", 100)  # row groups of 100 rows
    path = tmp_path / "d.parquet"
    x = np.arange(1000, dtype=np.float32)
    with dataset_writer(path) as write:
        write(x, -x)
    read_groups = []
    original = pq.ParquetFile.iter_batches

    def recording(self, *args, row_groups=None, **kwargs):
        read_groups.extend(row_groups)
        return original(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    for start, stop, groups in [(250, 420, [2, 3, 4]), (0, 100, [0]), (999, 1000, [9])]:
        read_groups.clear()
        part_x, part_y = read_dataset(path, start, stop)
        assert read_groups == groups
        assert np.array_equal(part_x, x[start:stop]) and np.array_equal(part_y, -x[start:stop])
