"""Train by hand (tensors W and b, hand-written loss and update): writes state_dict and history."""

from pathlib import Path
from typing import Annotated

import torch
import torch.distributed as dist
import typer

from stages.artifacts import History
from stages.cli import run
from stages.training import Recorder, Shard, exact_sum, run_training

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def chunk_table(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shard: Shard
) -> torch.Tensor:
    """Forward and backward over each chunk of `shard` on its own (x and y are its rows): a row
    per chunk of all processes, (loss, dloss/dw, dloss/db), filled for this shard's chunks."""
    rows_of_table = []
    for rows in shard.chunks():
        y_pred = w * x[rows] + b
        # The mean squared error, written out; a chunk's share of the mean is its sum over n.
        chunk_loss = ((y_pred - y[rows]) ** 2).sum() / shard.n
        chunk_loss.backward()
        rows_of_table.append((chunk_loss.item(), w.grad.item(), b.grad.item()))
        w.grad, b.grad = None, None  # the next chunk's gradient on its own, not added to this
    return shard.table(rows_of_table)


def full_batch_loss(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, shard: Shard | None = None
) -> float:
    """Return the MSE over every row, its gradient left in w.grad and b.grad.

    x and y are the rows of `shard` (by default, all rows in one process).
    """
    shard = shard or Shard.of(len(x))
    table = chunk_table(x, y, w, b, shard)
    # With several processes, each has filled only its own chunks' rows: adding the tables
    # gives every process all of them, exactly, since each row is non-zero in one process only.
    if dist.is_initialized():
        dist.all_reduce(table, op=dist.ReduceOp.SUM)
    loss, w_grad, b_grad = exact_sum(table)  # the same sums on 1 or N processes
    w.grad, b.grad = torch.tensor(w_grad), torch.tensor(b_grad)
    return loss


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: float,
    bias: float,
    lr: float,
    epochs: int,
    recorder: Recorder | None = None,
    shard: Shard | None = None,
) -> History:
    """Full-batch gradient descent by hand; row k of the history is after k updates."""
    recorder = recorder or Recorder()
    w = torch.tensor(weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    for epoch in range(epochs + 1):
        loss = full_batch_loss(x, y, w, b, shard)
        # After the last update, the pass above only measures the trained model's loss.
        if not recorder.record(loss, w.item(), b.item()) or epoch == epochs:
            break
        with torch.no_grad():  # the update itself must not become part of the graph
            w -= lr * w.grad
            b -= lr * b.grad
        w.grad.zero_()
        b.grad.zero_()
    return recorder.finish()


@app.command()
def main(
    train_path: Annotated[Path, typer.Argument(help="The training data (Parquet).")],
    model_path: Annotated[Path, typer.Argument(help="Where to write the state_dict (.pt).")],
    history_path: Annotated[Path, typer.Argument(help="Where to write the history (CSV).")],
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Fit y = w·x + b on the training data with two tensors and a hand-written update.

    LINREG_WORKERS=N trains in N processes, with the same result; see the README.
    """
    run_training(fit, "train_manual", params_path, train_path, model_path, history_path)


if __name__ == "__main__":
    run(app)
