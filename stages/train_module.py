"""Train the nn.Module way (nn.Linear, nn.MSELoss, optim.SGD): writes the state_dict and history."""

from pathlib import Path
from typing import Annotated

import torch
import typer
from torch import nn

from stages.artifacts import History
from stages.cli import run
from stages.model import LinearRegression
from stages.training import Recorder, Shard, combine, run_training

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def chunk_table(
    model: LinearRegression, loss_fn: nn.MSELoss, x: torch.Tensor, y: torch.Tensor, shard: Shard
) -> torch.Tensor:
    """Forward and backward over each chunk of `shard` on its own (x and y are its rows): a row
    per chunk of all processes, (loss, dloss/dw, dloss/db), filled for this shard's chunks."""
    weight, bias = model.linear.weight, model.linear.bias
    rows_of_table = []
    for rows in shard.chunks():
        model.zero_grad()  # each chunk's gradient on its own
        # The loss sums squared errors; dividing each chunk's sum by the full n makes the chunks
        # add up to the full-batch mean, and their gradients to its gradient.
        chunk_loss = loss_fn(model(x[rows]), y[rows]) / shard.n
        chunk_loss.backward()
        rows_of_table.append((chunk_loss.item(), weight.grad.item(), bias.grad.item()))
    return shard.table(rows_of_table)


def full_batch_loss(
    model: LinearRegression,
    loss_fn: nn.MSELoss,
    x: torch.Tensor,
    y: torch.Tensor,
    shard: Shard | None = None,
) -> float:
    """Return the MSE over every row, leaving its gradient in .grad.

    x and y are the rows of `shard` (by default, all rows in one process).
    """
    shard = shard or Shard.of(len(x))
    # Every process's chunks, added exactly (stages/training.py): the same on 1 or N processes.
    loss, weight_grad, bias_grad = combine(chunk_table(model, loss_fn, x, y, shard))
    model.linear.weight.grad = torch.tensor([[weight_grad]])
    model.linear.bias.grad = torch.tensor([bias_grad])
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
    """Full-batch gradient descent with optim.SGD; row k of the history is after k updates."""
    recorder = recorder or Recorder()
    model = LinearRegression()
    with torch.no_grad():
        model.linear.weight.fill_(weight)
        model.linear.bias.fill_(bias)
    loss_fn = nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(epochs + 1):
        optimizer.zero_grad()
        loss = full_batch_loss(model, loss_fn, x, y, shard)
        w, b = model.linear.weight.item(), model.linear.bias.item()
        # After the last update, the pass above only measures the trained model's loss.
        if not recorder.record(loss, w, b) or epoch == epochs:
            break
        optimizer.step()
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
    """Fit y = w·x + b on the training data with nn.Linear, nn.MSELoss and optim.SGD.

    LINREG_WORKERS=N trains in N processes, with the same result; see the README.
    """
    run_training(fit, "train_module", params_path, train_path, model_path, history_path)


if __name__ == "__main__":
    run(app)
