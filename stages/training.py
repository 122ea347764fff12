"""What the two trainers share: chunking, the history and divergence check, progress, outputs.

Both trainers run full-batch gradient descent: one update per epoch, from the gradient of the
mean squared error over every training row. The rows are visited in chunks whose losses are
scaled by 1/n and backpropagated one after another: autograd adds up the chunks' gradients, so
the sum is the full-batch gradient, while temporaries stay the size of a chunk at any n.
"""

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from stages.artifacts import History, write_history
from stages.cli import UserError
from stages.data import read_dataset
from stages.model import initial_parameters, save_parameters
from stages.params import load_params

# Rows per chunk: 256 KiB of float32 per column, so a chunk's temporaries stay in cache while
# autograd's fixed cost per chunk is spread over enough rows. At n = 1e7 on one thread
# (`python benchmarks/bench.py --only epoch --chunk-log2 15 16 17 18 19`), 2^16 and 2^17 were the
# fastest; 2^15 paid 1.3x to 1.5x more in per-chunk overhead, 2^19 up to 1.6x more in cache misses.
CHUNK_ROWS = 1 << 16
# Training stops once the loss is not finite or exceeds this many times the starting loss: a
# diverging run can grow by 1e20 without ever overflowing float32, and nothing useful is left then.
DIVERGENCE_FACTOR = 1e10


def chunk_slices(n: int) -> list[slice]:
    return [slice(start, start + CHUNK_ROWS) for start in range(0, n, CHUNK_ROWS)]


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
                raise UserError(
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


# fit(x, y, weight, bias, lr, epochs, recorder) -> History: each trainer's own training loop.
Fit = Callable[[torch.Tensor, torch.Tensor, float, float, float, int, Recorder], History]


def run_training(
    fit: Fit, label: str, params_path: Path, train_path: Path, model_path: Path, history_path: Path
) -> None:
    """A trainer's main(): read params and data, fit from the shared start, write the outputs."""
    params = load_params(params_path)
    # One thread: the result then cannot depend on how a reduction is split between threads.
    torch.set_num_threads(1)
    x, y = (torch.from_numpy(column) for column in read_dataset(train_path))
    weight, bias = initial_parameters(params.seed, params.init_weight, params.init_bias)
    recorder = Recorder(Progress(label, params.epochs))
    history = fit(x, y, weight, bias, params.lr, params.epochs, recorder)
    save_parameters(model_path, history.weight[-1], history.bias[-1])
    write_history(history_path, history)
