"""Train by hand (tensors W and b, hand-written loss and update): writes state_dict and history."""

from pathlib import Path
from typing import Annotated

import torch
import typer

from stages.artifacts import History
from stages.cli import run
from stages.training import Recorder, chunk_slices, run_training

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def full_batch_loss(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> float:
    """Forward and backward over every row; return the MSE, its gradient left in w.grad, b.grad."""
    loss = 0.0
    for rows in chunk_slices(len(x)):
        y_pred = w * x[rows] + b
        # The mean squared error, written out; a chunk's share of the mean is its sum over n.
        chunk_loss = ((y_pred - y[rows]) ** 2).sum() / len(x)
        chunk_loss.backward()
        loss += chunk_loss.item()
    return loss


def fit(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: float,
    bias: float,
    lr: float,
    epochs: int,
    recorder: Recorder | None = None,
) -> History:
    """Full-batch gradient descent by hand; row k of the history is after k updates."""
    recorder = recorder or Recorder()
    w = torch.tensor(weight, requires_grad=True)
    b = torch.tensor(bias, requires_grad=True)
    for epoch in range(epochs + 1):
        loss = full_batch_loss(x, y, w, b)
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
    train_path: Path,
    model_path: Path,
    history_path: Path,
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Fit y = w·x + b on the training data with two tensors and a hand-written update."""
    run_training(fit, "train_manual", params_path, train_path, model_path, history_path)


if __name__ == "__main__":
    run(app)
