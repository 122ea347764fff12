"""Metrics from streamed moments, checked against direct float64 computations, and the stage's
metric files against numpy on the data."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from stages import data
from stages import evaluate as evaluate_stage
from stages.cli import UserError
from stages.evaluate import Moments, compare, evaluate, least_squares_sse, sse, training_outcome
from tests.conftest import ROOT
from tests.helpers import set_params


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, 5000).astype(np.float32)
    y = (3 * x + 0.5 + rng.normal(0, 1, 5000)).astype(np.float32)
    return x, y


def test_merged_moments_equal_moments_of_the_whole(xy):
    x, y = xy
    merged = Moments()
    for start in range(0, len(x), 777):
        merged = merged.merge(Moments.of(x[start : start + 777], y[start : start + 777]))
    whole = Moments.of(x, y)
    for field in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    assert merged.n == whole.n == 5000


def test_sse_and_least_squares_match_direct_float64(xy):
    x, y = xy
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    m = Moments.of(x, y)
    for w, b in [(3.0, 0.5), (-1.0, 7.0), (2.9, 0.6)]:
        assert sse(m, w, b) == pytest.approx(np.sum((w * xd + b - yd) ** 2), rel=1e-10)
    design = np.stack([xd, np.ones_like(xd)], axis=1)
    (w, b), residual, *_ = np.linalg.lstsq(design, yd, rcond=None)
    assert least_squares_sse(m) == pytest.approx(residual[0], rel=1e-10)
    assert sse(m, w, b) == pytest.approx(least_squares_sse(m), rel=1e-12)


def test_the_least_squares_baseline_is_right_at_large_n_where_float32_lstsq_is_not():
    # A big offset in x is where a float32 solve with default rcond goes wrong.
    rng = np.random.default_rng(1)
    x = rng.normal(1000, 1, 2_000_000).astype(np.float32)
    y = (3 * x.astype(np.float64) + 0.5 + rng.normal(0, 1, len(x))).astype(np.float32)
    m = Moments()
    for start in range(0, len(x), 1 << 18):
        m = m.merge(Moments.of(x[start : start + (1 << 18)], y[start : start + (1 << 18)]))
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    xc = xd - xd.mean()
    w = np.sum(xc * (yd - yd.mean())) / np.sum(xc * xc)
    b = yd.mean() - w * xd.mean()
    assert least_squares_sse(m) / len(x) == pytest.approx(np.mean((w * xd + b - yd) ** 2), rel=1e-9)


def test_metrics_of_a_model(xy):
    x, y = xy
    train, test = Moments.of(x[:4000], y[:4000]), Moments.of(x[4000:], y[4000:])
    metrics = evaluate(train, test, 2.9, 0.7, true_weight=3, true_bias=0.5)
    xt, yt = x[4000:].astype(np.float64), y[4000:].astype(np.float64)
    test_mse = np.mean((2.9 * xt + 0.7 - yt) ** 2)
    assert metrics["weight_error"] == pytest.approx(0.1)
    assert metrics["bias_error"] == pytest.approx(0.2)
    assert metrics["test_mse"] == pytest.approx(test_mse, rel=1e-10)
    assert metrics["test_r2"] == pytest.approx(1 - test_mse / np.var(yt), rel=1e-10)
    assert metrics["train_mse_ols_ratio"] > 1


def test_the_ratio_is_never_below_one_even_at_the_optimum(xy):
    x, y = xy
    m = Moments.of(x, y)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    w, b = np.polyfit(xd, yd, 1)
    assert evaluate(m, Moments(), w, b, 3, 0.5)["train_mse_ols_ratio"] >= 1


def test_no_test_set_gives_null_test_metrics(xy):
    metrics = evaluate(Moments.of(*xy), Moments(), 3, 0.5, 3, 0.5)
    assert metrics["test_mse"] is None and metrics["test_r2"] is None
    assert compare(metrics, metrics)["test_mse_diff"] is None


def test_an_exact_fit_has_no_ratio():
    two_rows = Moments.of(np.array([0, 1], np.float32), np.array([1, 3], np.float32))
    assert evaluate(two_rows, Moments(), 2, 1, 2, 1)["train_mse_ols_ratio"] is None


def test_compare_gives_absolute_differences():
    a = {"weight": 2.0, "bias": 1.0, "train_mse": 3.0, "test_mse": 4.0}
    b = {"weight": 2.5, "bias": 0.5, "train_mse": 3.0, "test_mse": 5.0}
    assert compare(a, b) == {
        "weight_diff": 0.5,
        "bias_diff": 0.5,
        "train_mse_diff": 0.0,
        "test_mse_diff": 1.0,
    }


def test_training_outcome_reads_divergence_from_the_update_count():
    assert training_outcome(100, 100) == {
        "epochs": 100,
        "diverged": False,
        "diverged_at_epoch": None,
    }
    assert training_outcome(7, 100) == {"epochs": 7, "diverged": True, "diverged_at_epoch": 8}


def significant_digits(value: float) -> int:
    """Digits of the shortest decimal that reads back as `value`: 0.01250 → 3."""
    mantissa = repr(float(value)).split("e")[0].lstrip("-")
    return len(mantissa.replace(".", "").lstrip("0").rstrip("0"))


@pytest.mark.parametrize("test_rows", [1500, 0])
def test_the_evaluate_stage_writes_the_metrics_numpy_computes_from_the_files(
    test_rows, tmp_path, monkeypatch
):
    """The stage in process, on Parquet files of several row groups written and read back here
    with pyarrow, state_dicts saved with torch.save: every metric against numpy in float64."""
    monkeypatch.setattr(data, "BATCH_ROWS", 999)  # moments merged over several batches
    rng = np.random.default_rng(5)
    paths = {}
    for name, n in (("train", 4000), ("test", test_rows)):
        x = rng.normal(2, 3, n).astype(np.float32)
        y = (3 * x + 0.5 + rng.normal(0, 1, n)).astype(np.float32)
        paths[name] = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"x": x, "y": y}), paths[name], row_group_size=700)
    models = {"module": (2.875, 0.625), "manual": (3.125, 0.25)}
    for name, (w, b) in models.items():
        state = {"linear.weight": torch.tensor([[w]]), "linear.bias": torch.tensor([b])}
        torch.save(state, tmp_path / f"{name}.pt")
    # module ran all 3 epochs; manual stopped after 1 update (diverged at row 2).
    rows = {"module": "0,9,0,0\n1,4,1,1\n2,3,2,1\n3,2,3,1\n", "manual": "0,9,0,0\n1,4,1,1\n"}
    for name, text in rows.items():
        (tmp_path / f"{name}.csv").write_text("epoch,loss,weight,bias\n" + text)
    params_path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_path)
    set_params(params_path, epochs=3, **{"data.weight": 3.0, "data.bias": 0.5})
    outputs = [
        tmp_path / f"{name}.json" for name in ("m_module", "m_manual", "comparison", "dynamics")
    ]
    args = ["--params", str(params_path), str(paths["train"]), str(paths["test"])]
    args += [str(tmp_path / f"{a}.{ext}") for ext in ("pt", "csv") for a in ("module", "manual")]
    result = CliRunner().invoke(evaluate_stage.app, [*args, *map(str, outputs)])
    assert result.exit_code == 0, (result.output, result.exception)

    columns = {
        name: [pq.read_table(path).column(c).to_numpy().astype(np.float64) for c in ("x", "y")]
        for name, path in paths.items()
    }
    (xs, ys), (xt, yt) = columns["train"], columns["test"]
    (w_ols, b_ols), *_ = np.linalg.lstsq(np.stack([xs, np.ones_like(xs)], 1), ys, rcond=None)
    ols_mse = np.mean((w_ols * xs + b_ols - ys) ** 2)
    written = {
        name: json.loads(path.read_text()) for name, path in zip(models, outputs, strict=False)
    }
    for path in outputs:  # one key per line, so that a change shows as such in a git diff
        assert path.read_text() == json.dumps(json.loads(path.read_text()), indent=2) + "\n"
    oracle = {}
    for name, (w, b) in models.items():
        train_mse = np.mean((w * xs + b - ys) ** 2)
        test_mse = np.mean((w * xt + b - yt) ** 2) if test_rows else None
        expected = {
            "weight": w,
            "bias": b,
            "weight_error": abs(w - 3.0),
            "bias_error": abs(b - 0.5),
            "train_mse": train_mse,
            "test_mse": test_mse,
            "test_r2": 1 - test_mse / np.var(yt) if test_rows else None,
            "train_mse_ols_ratio": train_mse / ols_mse,
        }
        oracle[name] = expected
        metrics = written[name]
        # observed_rate and the dynamics file have their own oracles (tests/test_dynamics.py).
        assert metrics.keys() == {
            *expected,
            *("epochs", "diverged", "diverged_at_epoch", "observed_rate"),
        }
        for key, value in expected.items():
            # Ten significant digits are written (the README): a relative 1e-9 is that rounding.
            if value is None:
                assert metrics[key] is None, (name, key)
                continue
            assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
            assert significant_digits(metrics[key]) <= 10, (name, key, metrics[key])
    assert (written["module"]["epochs"], written["module"]["diverged"]) == (3, False)
    assert written["module"]["diverged_at_epoch"] is None
    assert (written["manual"]["epochs"], written["manual"]["diverged"]) == (1, True)
    assert written["manual"]["diverged_at_epoch"] == 2
    comparison = json.loads(outputs[2].read_text())
    assert comparison.keys() == {"weight_diff", "bias_diff", "train_mse_diff", "test_mse_diff"}
    for key in ("weight", "bias", "train_mse", "test_mse"):
        if oracle["module"][key] is None:
            assert comparison[f"{key}_diff"] is None
            continue
        difference = abs(oracle["module"][key] - oracle["manual"][key])
        assert comparison[f"{key}_diff"] == pytest.approx(difference, rel=1e-9), key


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([2.0, 2.0, 2.0], [1.0, 2.0, 4.0]),  # one distinct x: no slope to get wrong
        ([0.0, 0.01, 0.02, 0.03], [0.5, 0.52, 0.53, 0.57]),  # Σ(x - x̄)² far below 1
    ],
)
def test_sse_holds_for_degenerate_and_narrow_x(x, y):
    x, y = np.array(x, np.float32), np.array(y, np.float32)
    m = Moments.of(x, y)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    for w, b in [(0.0, 0.0), (3.0, -1.0)]:
        assert sse(m, w, b) == pytest.approx(np.sum((w * xd + b - yd) ** 2), rel=1e-9)


def test_metrics_of_small_errors_and_of_a_constant_test_set():
    # Least squares leaves an error sum below 1 here: the ratio must still be computed.
    x = np.array([0, 1, 2, 3], np.float32)
    y = np.array([0.1, 0.9, 2.1, 2.9], np.float32)
    test = Moments.of(np.array([1, 2], np.float32), np.array([5, 5], np.float32))
    metrics = evaluate(Moments.of(x, y), test, 1.0, 0.0, 1, 0)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    w, b = np.polyfit(xd, yd, 1)
    ratio = np.sum((xd - yd) ** 2) / np.sum((w * xd + b - yd) ** 2)
    assert metrics["train_mse_ols_ratio"] == pytest.approx(ratio, rel=1e-9)
    # A test set with one value of y has no variance to explain: no R², but an MSE.
    assert metrics["test_r2"] is None and metrics["test_mse"] == pytest.approx((16 + 9) / 2)
    # Σ(y - ȳ)² = 0.005 in this test set, far below 1: R² is still defined, here a perfect 1.
    narrow = Moments.of(np.array([1, 2], np.float32), np.array([0.1, 0.2], np.float32))
    assert evaluate(Moments.of(x, y), narrow, 0.1, 0.0, 1, 0)["test_r2"] == pytest.approx(1)


# An empty part's means are NaN (numpy warns); merging must ignore them, not spread them.
@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_merging_keeps_every_row_single_rows_and_empty_parts_included(xy):
    x, y = xy
    whole = Moments.of(x[:5], y[:5])
    # Rows one at a time, then an empty part on either side.
    merged = Moments()
    for i in range(5):
        merged = merged.merge(Moments.of(x[i : i + 1], y[i : i + 1]))
    merged = merged.merge(Moments()).merge(Moments.of(x[:0], y[:0]))
    for field in ("n", "mean_x", "mean_y", "sxx", "sxy", "syy"):
        assert getattr(merged, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    assert Moments().merge(whole) == whole == whole.merge(Moments())


def test_least_squares_where_the_spread_of_x_is_exactly_one():
    # x = ±0.5 four times: Σ(x - x̄)² = 1 exactly, and y on a line through them: no error left.
    x = np.array([-0.5, 0.5, -0.5, 0.5], np.float32)
    m = Moments.of(x, 2 * x + 1)
    assert m.sxx == 1 and least_squares_sse(m) == 0


def test_the_evaluate_stage_refuses_an_empty_training_set(tmp_path):
    empty = tmp_path / "train.parquet"
    pq.write_table(
        pa.table({"x": pa.array([], pa.float32()), "y": pa.array([], pa.float32())}), empty
    )
    args = ["--params", str(ROOT / "params.yaml"), str(empty), str(empty)]
    args += [str(tmp_path / name) for name in ("a.pt", "b.pt", "a.csv", "b.csv")]
    args += [str(tmp_path / name) for name in ("a.json", "b.json", "c.json", "d.json")]
    result = CliRunner().invoke(evaluate_stage.app, args)
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{empty}: the dataset has no rows"
    assert not list(tmp_path.glob("*.json"))
