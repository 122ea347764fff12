"""Evaluate both models and their training: writes each one's metrics, their comparison, dynamics.

Every metric here is a function of a few float64 sums over the data (count, means, centred sums
of squares and products), gathered in one streaming pass per file. That gives the closed-form
least-squares baseline exactly, keeps memory flat at any n, and evaluates any (w, b) in O(1).
The same sums give the Hessian of the training loss, and with it what gradient descent does at
the run's lr (stages/dynamics.py has the derivation).
"""

from pathlib import Path
from typing import Annotated

import typer

from stages.artifacts import History, f32, read_history, write_json
from stages.cli import UserError, run
from stages.dynamics import Moments, dynamics, least_squares_sse, moments, observed_rate, sse
from stages.model import load_parameters
from stages.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def evaluate(
    train: Moments, test: Moments, weight: float, bias: float, true_weight: float, true_bias: float
) -> dict[str, float | None]:
    """Accuracy metrics of one model; test metrics are None when there is no test set."""
    train_sse = sse(train, weight, bias)
    test_sse = sse(test, weight, bias) if test.n else None
    return {
        "weight": f32(weight),
        "bias": f32(bias),
        "weight_error": abs(weight - true_weight),
        "bias_error": abs(bias - true_bias),
        "train_mse": train_sse / train.n,
        "test_mse": test_sse / test.n if test.n else None,
        "test_r2": 1 - test_sse / test.syy if test.n and test.syy > 0 else None,
        # None when least squares fits the training data exactly (e.g. two rows).
        "train_mse_ols_ratio": _ratio(train_sse, least_squares_sse(train)),
    }


def compare(module: dict, manual: dict) -> dict[str, float | None]:
    """How far the two approaches are apart: absolute differences of their key metrics."""
    return {
        f"{key}_diff": abs(module[key] - manual[key]) if module[key] is not None else None
        for key in ("weight", "bias", "train_mse", "test_mse")
    }


def training_outcome(updates: int, epochs: int) -> dict[str, int | bool | None]:
    """Read the run's end from its history: fewer updates than asked means it diverged."""
    diverged = updates < epochs
    return {
        "epochs": updates,
        "diverged": diverged,
        "diverged_at_epoch": updates + 1 if diverged else None,
    }


def rounded(metrics: dict) -> dict:
    # Ten significant digits: far below anything a metric can tell apart, and it keeps the last
    # bits of float64 rounding out of the committed files.
    return {k: float(f"{v:.10g}") if isinstance(v, float) else v for k, v in metrics.items()}


def common_start(histories: dict[str, History]) -> tuple[float, float]:
    """Row 0 of the histories: the starting point, which both trainers share by construction."""
    starts = {name: (h.weight[0], h.bias[0]) for name, h in histories.items()}
    if len(set(starts.values())) > 1:
        found = ", ".join(f"{name} {start}" for name, start in starts.items())
        raise UserError(
            f"the histories start from different points ({found}); both trainers start from "
            "the same (w, b), so they come from different runs: `dvc repro` rebuilds them"
        )
    return next(iter(starts.values()))


@app.command()
def main(
    train_path: Annotated[Path, typer.Argument(help="Training data (Parquet).")],
    test_path: Annotated[Path, typer.Argument(help="Test data (Parquet); may have no rows.")],
    module_model_path: Annotated[Path, typer.Argument(help="The module trainer's state_dict.")],
    manual_model_path: Annotated[Path, typer.Argument(help="The manual trainer's state_dict.")],
    module_history_path: Annotated[
        Path, typer.Argument(help="The module trainer's history CSV (epoch, loss, weight, bias).")
    ],
    manual_history_path: Annotated[Path, typer.Argument(help="The manual trainer's history CSV.")],
    module_metrics_path: Annotated[
        Path, typer.Argument(help="Output: the module model's metrics (JSON).")
    ],
    manual_metrics_path: Annotated[
        Path, typer.Argument(help="Output: the manual model's metrics (JSON).")
    ],
    comparison_path: Annotated[
        Path, typer.Argument(help="Output: how far module and manual are apart (JSON).")
    ],
    dynamics_path: Annotated[
        Path, typer.Argument(help="Output: what theory says gradient descent does here (JSON).")
    ],
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Evaluate both models on train and test; write their metrics, comparison and dynamics."""
    params = load_params(params_path)
    train, test = moments(train_path), moments(test_path, allow_empty=True)
    histories = {
        "module": read_history(module_history_path),
        "manual": read_history(manual_history_path),
    }
    results = {}
    for approach, model_path in (("module", module_model_path), ("manual", manual_model_path)):
        weight, bias = load_parameters(model_path)
        history = histories[approach]
        results[approach] = evaluate(
            train, test, weight, bias, params.data.weight, params.data.bias
        )
        results[approach].update(training_outcome(history.updates, params.epochs))
        results[approach]["observed_rate"] = observed_rate(train, history.weight, history.bias)
    start = common_start(histories)
    write_json(module_metrics_path, rounded(results["module"]))
    write_json(manual_metrics_path, rounded(results["manual"]))
    write_json(comparison_path, rounded(compare(results["module"], results["manual"])))
    write_json(dynamics_path, rounded(dynamics(train, params.lr, params.epochs, start)))


if __name__ == "__main__":
    run(app)
