"""Evaluate both trained models on train and test: writes the metrics of each and their comparison.

Every metric here is a function of a few float64 sums over the data (count, means, centred sums
of squares and products), gathered in one streaming pass per file. That gives the closed-form
least-squares baseline exactly, keeps memory flat at any n, and evaluates any (w, b) in O(1).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from stages.artifacts import f32, read_history, write_json
from stages.cli import run
from stages.data import iter_batches
from stages.model import load_parameters
from stages.params import load_params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@dataclass(frozen=True)
class Moments:
    """Count, means and centred sums Σ(x-x̄)², Σ(x-x̄)(y-ȳ), Σ(y-ȳ)² of a dataset, in float64."""

    n: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    syy: float = 0.0

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> "Moments":
        x, y = x.astype(np.float64), y.astype(np.float64)
        mean_x, mean_y = x.mean(), y.mean()
        dx, dy = x - mean_x, y - mean_y
        # Elementwise products and np.sum, not a BLAS dot, whose result depends on its thread count.
        return cls(len(x), mean_x, mean_y, (dx * dx).sum(), (dx * dy).sum(), (dy * dy).sum())

    def merge(self, other: "Moments") -> "Moments":
        """Moments of both datasets together (Chan et al.), with no second pass over the data."""
        if other.n == 0 or self.n == 0:
            return other if self.n == 0 else self
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        share = self.n * other.n / n
        return Moments(
            n=n,
            mean_x=self.mean_x + dx * other.n / n,
            mean_y=self.mean_y + dy * other.n / n,
            sxx=self.sxx + other.sxx + dx * dx * share,
            sxy=self.sxy + other.sxy + dx * dy * share,
            syy=self.syy + other.syy + dy * dy * share,
        )


def moments(path: Path, *, allow_empty: bool = False) -> Moments:
    total = Moments()
    for x, y in iter_batches(path, allow_empty=allow_empty):
        total = total.merge(Moments.of(x, y))
    return total


def least_squares_sse(m: Moments) -> float:
    """The smallest sum of squared errors any line reaches: that of the closed-form solution."""
    if m.sxx == 0:  # one distinct x: every line through the mean point is optimal
        return m.syy
    return max(m.syy - m.sxy * m.sxy / m.sxx, 0.0)


def sse(m: Moments, weight: float, bias: float) -> float:
    """Σ(y - weight·x - bias)² from the moments alone.

    Written as the least-squares error plus two squares (a wrong slope, a wrong offset at the
    mean), so that it is never below the optimum, even by rounding.
    """
    slope_excess = m.sxx * (weight - m.sxy / m.sxx) ** 2 if m.sxx > 0 else 0.0
    offset_excess = m.n * (m.mean_y - weight * m.mean_x - bias) ** 2
    return least_squares_sse(m) + slope_excess + offset_excess


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


@app.command()
def main(
    train_path: Path,
    test_path: Path,
    module_model_path: Path,
    manual_model_path: Path,
    module_history_path: Path,
    manual_history_path: Path,
    module_metrics_path: Path,
    manual_metrics_path: Path,
    comparison_path: Path,
    params_path: Annotated[Path, typer.Option("--params", help="The params file.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Evaluate both models on train and test; write their metrics and their comparison."""
    params = load_params(params_path)
    train, test = moments(train_path), moments(test_path, allow_empty=True)
    results = {}
    for approach, model_path, history_path in (
        ("module", module_model_path, module_history_path),
        ("manual", manual_model_path, manual_history_path),
    ):
        weight, bias = load_parameters(model_path)
        updates = read_history(history_path).updates
        results[approach] = evaluate(
            train, test, weight, bias, params.data.weight, params.data.bias
        )
        results[approach].update(training_outcome(updates, params.epochs))
    write_json(module_metrics_path, rounded(results["module"]))
    write_json(manual_metrics_path, rounded(results["manual"]))
    write_json(comparison_path, rounded(compare(results["module"], results["manual"])))


if __name__ == "__main__":
    run(app)
