"""Train the nn.Module way (nn.Linear, nn.MSELoss, optim.SGD): writes the state_dict and history."""

from pathlib import Path
from typing import Annotated

import torch
import typer
from torch import nn

from stages.artifacts import History
from stages.cli import run
from stages.model import LinearRegression
from stages.training import Recorder, chunk_slices, run_training

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def full_batch_loss(
    model: nn.Module, loss_fn: nn.MSELoss, x: torch.Tensor, y: torch.Tensor
) -> float:
    """Forward and backward over every row; return the MSE, leaving its gradient in .grad."""
    loss = 0.0
    for rows in chunk_slices(len(x)):
        # The loss sums squared errors; dividing each chunk's sum by the full n makes the chunks
        # add up to the full-batch mean, and their gradients to its gradient.
        chunk_loss = loss_fn(model(x[rows]), y[rows]) / len(x)
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
        loss = full_batch_loss(model, loss_fn, x, y)
        w, b = model.linear.weight.item(), model.linear.bias.item()
        # After the last update, the pass above only measures the trained model's loss.
        if not recorder.record(loss, w, b) or epoch == epochs:
            break
        optimizer.step()
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
    """Fit y = w·x + b on the training data with nn.Linear, nn.MSELoss and optim.SGD."""
    run_training(fit, "train_module", params_path, train_path, model_path, history_path)


if __name__ == "__main__":
    run(app)
