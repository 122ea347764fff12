"""The dataset files: Parquet with float32 columns x and y, written and read in row groups.

Every stage reads data through this module, so a missing, truncated or malformed file gets the
same clear error everywhere, and a 100-million-row file is never held in memory twice.
"""

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.artifacts import atomic_path
from stages.cli import UserError

SCHEMA = pa.schema([("x", pa.float32()), ("y", pa.float32())])
# Rows per batch when reading and per row group when writing: big enough to amortise per-batch
# overhead, small enough (8 MiB of x and y) that memory stays bounded at any n.
BATCH_ROWS = 1 << 20


class DataError(UserError):
    pass


@contextlib.contextmanager
def dataset_writer(path: Path) -> Iterator[Callable[[np.ndarray, np.ndarray], None]]:
    """Yield a function that appends (x, y) batches to a Parquet file; the file appears atomically.

    Row groups are written as they come, so a dataset of any size streams through bounded memory.
    """
    # No dictionary encoding: random floats almost never repeat, so the dictionary is pure cost
    # (10 million rows, measured: 0.15 s and 80 MB without it, 0.47 s and 91 MB with it).
    with (
        atomic_path(path) as tmp,
        pq.ParquetWriter(tmp, SCHEMA, use_dictionary=False) as writer,
    ):

        def write(x: np.ndarray, y: np.ndarray) -> None:
            columns = [_to_arrow(x), _to_arrow(y)]
            writer.write_batch(pa.record_batch(columns, schema=SCHEMA), row_group_size=BATCH_ROWS)

        yield write


# pyarrow's own numpy conversions, pa.array() and Array.to_numpy(), first import pandas when it is
# installed, only to check for pandas types: 0.3 s in every stage, more than a small run's work.
# A float32 column without nulls is one plain buffer, so these two wrap that buffer directly.


def _to_arrow(values: np.ndarray) -> pa.Array:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.Array.from_buffers(pa.float32(), len(values), [None, pa.py_buffer(values)])


def _to_numpy(column: pa.Array) -> np.ndarray:
    if column.null_count:  # a damaged file: let pyarrow read nulls as NaN, which is reported
        return column.to_numpy(zero_copy_only=False)
    data = column.buffers()[1]
    return np.frombuffer(data, np.float32, count=len(column), offset=column.offset * 4)


def open_dataset(path: Path, *, allow_empty: bool = False) -> pq.ParquetFile:
    """Open a dataset and check its schema and row counts; raise DataError naming the file."""
    try:
        # pre_buffer=False: by default pyarrow reads the whole file into memory before the first
        # batch, which would undo the streaming (0.87 vs 0.16 GiB peak on 80M rows, measured).
        file = pq.ParquetFile(path, pre_buffer=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; `dvc repro` creates it") from None
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: not a readable Parquet file ({_one_line(error)})") from None
    names = file.schema_arrow.names
    for column in SCHEMA:
        if column.name not in names:
            raise DataError(f"{path}: missing column {column.name!r} (found {names})")
        if names.count(column.name) > 1:
            raise DataError(
                f"{path}: column {column.name!r} appears {names.count(column.name)} times; "
                "each column must appear once"
            )
        found = file.schema_arrow.field(column.name).type
        if found != column.type:
            raise DataError(f"{path}: column {column.name!r} is {found}; expected {column.type}")
    # Readers size their arrays from the row count, so it must be the rows the file holds: the
    # footer's total is checked against its row groups here, and each row group against the rows
    # actually read in iter_batches. That catches a count above the rows held. A footer edited to
    # count fewer rows, in every place at once, cannot be caught by counting: pyarrow then reads
    # only that many (random damage breaks the footer's encoding instead, and is refused).
    meta = file.metadata
    in_groups = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    if meta.num_rows != in_groups or in_groups < 0:
        raise DataError(
            f"{path}: the file is damaged: its footer counts {meta.num_rows} rows, its row groups "
            f"{in_groups}"
        )
    if meta.num_rows == 0 and not allow_empty:
        raise DataError(f"{path}: the dataset has no rows")
    return file


def iter_batches(
    path: Path,
    *,
    allow_empty: bool = False,
    file: pq.ParquetFile | None = None,
    row_groups: range | None = None,
    check_finite: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) float32 arrays of at most BATCH_ROWS rows, each checked for NaN and infinity.

    `file` is `path` already opened with open_dataset, by a caller that needed its row count;
    `row_groups` reads only those row groups (by default, all of them); check_finite=False leaves
    the check of the values to a caller that uses only part of them.
    """
    file = file or open_dataset(path, allow_empty=allow_empty)
    meta = file.metadata
    groups = range(meta.num_row_groups) if row_groups is None else row_groups
    start = sum(meta.row_group(i).num_rows for i in range(groups.start))  # first row, for messages
    try:
        for group in groups:
            expected, read = meta.row_group(group).num_rows, 0
            batches = file.iter_batches(
                batch_size=BATCH_ROWS, row_groups=[group], columns=["x", "y"]
            )
            for batch in batches:
                x, y = (_to_numpy(batch.column(name)) for name in ("x", "y"))
                if check_finite:
                    _check_finite(path, start, x, y)
                start, read = start + len(x), read + len(x)
                yield x, y
            if read != expected:
                raise DataError(
                    f"{path}: the file is damaged: row group {group} should hold {expected} "
                    f"rows, but {read} were read"
                )
    except (OSError, pa.ArrowException) as error:
        raise DataError(
            f"{path}: the file is damaged and cannot be read ({_one_line(error)})"
        ) from None


def _one_line(error: Exception) -> str:
    """pyarrow's message in one line; a thrift error spans several, with control characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in str(error)).split())
    return text or type(error).__name__


def _check_finite(path: Path, start: int, x: np.ndarray, y: np.ndarray) -> None:
    for name, values in (("x", x), ("y", y)):
        # A null reads back as NaN, so this catches missing values too.
        if not np.isfinite(values).all():
            bad = start + int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(
                f"{path}: column {name!r} has a missing, NaN or infinite value "
                f"(first at row {bad}); every value must be a finite number"
            )


def count_rows(path: Path) -> int:
    """The rows of a non-empty dataset, from its checked footer, without reading the rows."""
    return open_dataset(path).metadata.num_rows


def read_dataset(
    path: Path, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read rows start..stop-1 (by default all) of a non-empty dataset into two float32 arrays.

    Only the row groups that hold those rows are read, batch by batch, into arrays sized once:
    a process that trains on a share of the rows reads only its share.
    """
    file = open_dataset(path)
    meta = file.metadata
    stop = meta.num_rows if stop is None else stop
    if not 0 <= start <= stop <= meta.num_rows:
        raise DataError(f"{path}: rows {start}..{stop} asked for, but the file has {meta.num_rows}")
    x, y = np.empty(stop - start, np.float32), np.empty(stop - start, np.float32)
    if start == stop:  # a process whose share is empty (more processes than chunks)
        return x, y
    # The row groups that overlap [start, stop), from the first row of each.
    firsts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    groups = range(
        int(np.searchsorted(firsts, start, side="right")) - 1,
        int(np.searchsorted(firsts, stop, side="left")),
    )
    row = int(firsts[groups.start])
    for xb, yb in iter_batches(path, file=file, row_groups=groups, check_finite=False):
        # The part of this batch inside [start, stop): only it is checked, so that a bad value
        # is reported once, by the process whose rows hold it.
        lo, hi = max(start, row), min(stop, row + len(xb))
        if lo < hi:
            xs, ys = xb[lo - row : hi - row], yb[lo - row : hi - row]
            _check_finite(path, lo, xs, ys)
            x[lo - start : hi - start], y[lo - start : hi - start] = xs, ys
        row += len(xb)
    return x, y
