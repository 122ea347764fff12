"""What the two trainers share: chunks, their exact sum, the history and divergence check,
progress, and the stage's main() on one process or many.

Both trainers run full-batch gradient descent: one update per epoch, from the gradient of the
mean squared error over every training row. The rows are cut into chunks of CHUNK_ROWS at fixed
row indices. Each chunk's loss (its squared errors summed, over n) is backpropagated on its own,
and its loss and gradient go into its own row of a table, one row per chunk. The columns of the
table are then added exactly (math.fsum) and rounded once, so the sums do not depend on the order
in which they are added, and temporaries stay the size of a chunk at any n.

That is also what makes the result independent of the number of processes. Each process owns a
run of whole chunks, fills only their rows of the table, and leaves the others zero; the tables
of all processes are added with one all_reduce. gloo adds in an order that depends on the
number of processes (pytorch/gloo#192), but every row is non-zero in one process only, and adding
zeros is exact in any order. Every process then holds the same table, bit for bit, that one
process would have filled alone, and takes the same exact sum: the same gradient, the same
update, the same bytes, on one process or many. (DDP would add the gradients in gloo's order, and
DistributedSampler would pad the rows with repeats: neither keeps the bytes.)
"""

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from stages.artifacts import History, write_history
from stages.data import count_rows, read_dataset
from stages.distributed import SharedError, process_group, start_workers, under_torchrun, workers
from stages.model import initial_parameters, save_parameters
from stages.params import Params, load_params

# Rows per chunk: 256 KiB of float32 per column, so a chunk's temporaries stay in cache while
# autograd's fixed cost per chunk is spread over enough rows. At n = 1e7 on one thread
# (`python benchmarks/bench.py --only epoch --chunk-log2 15 16 17 18 19`), 2^16 and 2^17 were the
# fastest; 2^15 paid 1.3x to 1.5x more in per-chunk overhead, 2^19 up to 1.6x more in cache misses.
CHUNK_ROWS = 1 << 16
# Training stops once the loss is not finite or exceeds this many times the starting loss: a
# diverging run can grow by 1e20 without ever overflowing float32, and nothing useful is left then.
DIVERGENCE_FACTOR = 1e10


def chunk_count(n: int) -> int:
    return -(-n // CHUNK_ROWS)


@dataclass(frozen=True)
class Shard:
    """The chunks that one process trains on: chunks first..stop-1 of the n training rows."""

    n: int
    first: int
    stop: int

    @classmethod
    def of(cls, n: int, rank: int = 0, size: int = 1) -> "Shard":
        """Process `rank` of `size` gets an equal run of whole chunks, give or take one."""
        chunks = chunk_count(n)
        return cls(n, chunks * rank // size, chunks * (rank + 1) // size)

    @property
    def rows(self) -> tuple[int, int]:
        """The rows start..stop-1 of the training data that this process reads."""
        return min(self.first * CHUNK_ROWS, self.n), min(self.stop * CHUNK_ROWS, self.n)

    def chunks(self) -> Iterator[slice]:
        """Each of this process's chunks, as rows within this process's rows."""
        start = self.rows[0]
        for k in range(self.first, self.stop):
            yield slice(k * CHUNK_ROWS - start, (k + 1) * CHUNK_ROWS - start)

    def table(self, rows: list[tuple[float, float, float]]) -> torch.Tensor:
        """The table of all processes' chunks, a row each, with this process's chunks' rows
        (loss, dloss/dw, dloss/db), in the order of chunks(), and zeros elsewhere."""
        table = torch.zeros(chunk_count(self.n), 3)
        if rows:
            table[self.first : self.stop] = torch.tensor(rows)
        return table


def exact_sum(table: torch.Tensor) -> tuple[float, float, float]:
    """Each column of the per-chunk table, added exactly and rounded once to a float64."""
    return tuple(math.fsum(column) for column in table.double().T.tolist())


def combine(table: torch.Tensor) -> tuple[float, float, float]:
    """Add every process's table (when there are several), then sum its columns exactly."""
    if dist.is_initialized():
        dist.all_reduce(table, op=dist.ReduceOp.SUM)  # exact: each row is non-zero once
    return exact_sum(table)


class Progress:
    """A progress line on stderr when it is a terminal; one summary line at the end otherwise."""

    def __init__(self, label: str, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self.live = sys.stderr.isatty()
        self.shown_at = 0.0

    def update(self, epoch: int, loss: float) -> None:
        now = time.monotonic()
        if self.live and (now - self.shown_at > 0.1 or epoch == self.epochs):
            self.shown_at = now
            bar = "#" * (20 * epoch // self.epochs)
            print(
                f"\r{self.label} [{bar:<20}] epoch {epoch}/{self.epochs} loss {loss:.6g}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    def finish(self, history: History, diverged_at: int | None) -> None:
        if self.live:
            print(file=sys.stderr)
        outcome = f"diverged at epoch {diverged_at}, kept" if diverged_at else "trained"
        epochs = "epoch" if history.updates == 1 else "epochs"
        print(
            f"{self.label}: {outcome} {history.updates} {epochs}: loss {history.loss[0]:.6g} -> "
            f"{history.loss[-1]:.6g}, weight {history.weight[-1]:.6g}, bias {history.bias[-1]:.6g}",
            file=sys.stderr,
        )


class Recorder:
    """Builds the history row by row and says when to stop because the loss has diverged."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.history = History()
        self.progress = progress
        self.bound = math.inf
        self.diverged_at: int | None = None

    def record(self, loss: float, weight: float, bias: float) -> bool:
        """Add a row (loss at this weight and bias); return False instead if the loss diverged."""
        epoch = len(self.history.loss)
        if epoch == 0:
            if not math.isfinite(loss):
                # SharedError: with several processes, each holds this same loss.
                raise SharedError(
                    f"the loss at the starting point is {loss}: the data or init values are too "
                    "large for float32"
                )
            self.bound = DIVERGENCE_FACTOR * loss
        elif not (math.isfinite(loss) and loss <= self.bound):
            self.diverged_at = epoch
            return False
        self.history.append(loss, weight, bias)
        if self.progress:
            self.progress.update(epoch, loss)
        return True

    def finish(self) -> History:
        if self.progress:
            self.progress.finish(self.history, self.diverged_at)
        return self.history


# fit(x, y, weight, bias, lr, epochs, recorder, shard) -> History: each trainer's own loop.
Fit = Callable[[torch.Tensor, torch.Tensor, float, float, float, int, Recorder, Shard], History]


def run_training(
    fit: Fit, label: str, params_path: Path, train_path: Path, model_path: Path, history_path: Path
) -> None:
    """A trainer's main(): read params and data, fit from the shared start, write the outputs.

    With LINREG_WORKERS=N > 1 the training below runs in N processes forked from this one; each
    trains on its own share of the rows, and the first one writes.
    """
    params = load_params(params_path)
    n = count_rows(train_path)  # checks the file before any worker starts
    work = partial(train, fit, label, params, n, train_path, model_path, history_path)
    if not under_torchrun() and (count := workers()) > 1:
        start_workers(label, count, work)
    else:
        work()


def train(
    fit: Fit,
    label: str,
    params: Params,
    n: int,
    train_path: Path,
    model_path: Path,
    history_path: Path,
) -> None:
    """Train in this process, alone or as one of a group, on this process's share of n rows."""
    # One thread: the result then cannot depend on how a reduction is split between threads.
    torch.set_num_threads(1)
    with process_group() as group:
        shard = Shard.of(n, group.rank, group.size)
        x, y = (torch.from_numpy(column) for column in read_dataset(train_path, *shard.rows))
        weight, bias = initial_parameters(params.seed, params.init_weight, params.init_bias)
        recorder = Recorder(Progress(label, params.epochs) if group.writes else None)
        history = fit(x, y, weight, bias, params.lr, params.epochs, recorder, shard)
    if group.writes:
        save_parameters(model_path, history.weight[-1], history.bias[-1])
        write_history(history_path, history)
