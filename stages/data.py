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
    """Open a dataset and check its schema; raise DataError naming the file and the problem."""
    try:
        # pre_buffer=False: by default pyarrow reads the whole file into memory before the first
        # batch, which would undo the streaming (0.87 vs 0.16 GiB peak on 80M rows, measured).
        file = pq.ParquetFile(path, pre_buffer=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; `dvc repro` creates it") from None
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    schema = file.schema_arrow
    for column in SCHEMA:
        if column.name not in schema.names:
            raise DataError(f"{path}: missing column {column.name!r} (found {schema.names})")
        found = schema.field(column.name).type
        if found != column.type:
            raise DataError(f"{path}: column {column.name!r} is {found}; expected {column.type}")
    if file.metadata.num_rows == 0 and not allow_empty:
        raise DataError(f"{path}: the dataset has no rows")
    return file


def iter_batches(
    path: Path, *, allow_empty: bool = False, file: pq.ParquetFile | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) float32 arrays of at most BATCH_ROWS rows, each checked for NaN and infinity.

    `file` is `path` already opened with open_dataset, by a caller that needed its row count.
    """
    file = file or open_dataset(path, allow_empty=allow_empty)
    start = 0
    try:
        for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=["x", "y"]):
            x, y = (_to_numpy(batch.column(name)) for name in ("x", "y"))
            for name, values in (("x", x), ("y", y)):
                # A null reads back as NaN, so this catches missing values too.
                if not np.isfinite(values).all():
                    bad = start + int(np.flatnonzero(~np.isfinite(values))[0])
                    raise DataError(
                        f"{path}: column {name!r} has a missing, NaN or infinite value "
                        f"(first at row {bad}); every value must be a finite number"
                    )
            start += len(x)
            yield x, y
    except (OSError, pa.ArrowException) as error:
        raise DataError(f"{path}: the file is damaged and cannot be read ({error})") from None


def read_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole non-empty dataset into two float32 arrays, filled batch by batch."""
    file = open_dataset(path)
    n = file.metadata.num_rows
    x, y = np.empty(n, np.float32), np.empty(n, np.float32)
    start = 0
    for xb, yb in iter_batches(path, file=file):
        x[start : start + len(xb)], y[start : start + len(yb)] = xb, yb
        start += len(xb)
    return x, y
