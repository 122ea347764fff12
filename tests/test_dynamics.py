"""The dynamics metrics against numpy, plain float64 loops and real runs of both trainers."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from stages import train_manual, train_module
from stages.artifacts import History
from stages.cli import UserError
from stages.dynamics import (
    Hessian,
    Moments,
    dynamics,
    float32_noise,
    hessian,
    least_squares_line,
    observed_rate,
    predicted_excess,
)
from stages.evaluate import common_start, evaluate
from stages.generate import generate
from stages.model import initial_parameters
from tests.helpers import REFERENCE_MANUAL, REFERENCE_MODULE, params

TRAINERS = {"module": train_module.fit, "manual": train_manual.fit}
# Half an ulp of float32, relative: what one rounding to float32 can change a number by.
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


def dataset(kind: str, n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {
        "centred": rng.normal(0, 1, n),
        "offset": rng.normal(5, 2, n),
        "linspace": np.linspace(0, 50, n),
        "narrow": rng.normal(100, 0.1, n),
        "small": rng.normal(0.1, 0.3, n),  # E x² < 1: the other branch of the eigenvector
        "unit": np.tile([-1.0, 1.0], n // 2),  # H = 2·I: every direction an eigenvector
        "constant": np.full(n, 2.5),
        "tiny": rng.normal(0, 0.01, n),  # Σ(x - x̄)² far below 1
        # A mean near 0 with E x² below, above and well above 1: one of the two expressions of
        # the eigenvector cancels there (to 1e-14 of its size), the other must be taken.
        "near 0, below 1": np.tile([-0.5, 0.5], n // 2) + 1e-6,
        "near 0, above 1": np.tile([-1.25, 1.25], n // 2) + 1e-6,
        "near 0, well above 1": np.tile([-2.0, 2.0], n // 2) + 1e-6,
    }[kind].astype(np.float32)
    y = (3 * x.astype(np.float64) + 0.5 + rng.normal(0, 1, n)).astype(np.float32)
    return x, y


KINDS = ["centred", "offset", "linspace", "narrow", "small", "unit"]


def direct_hessian(x: np.ndarray) -> np.ndarray:
    """The Hessian of the MSE in (w, b), built from the data itself."""
    x = x.astype(np.float64)
    return 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])


def direct_least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(w*, b*, MSE*) with numpy's lstsq on the float64 data."""
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    (w, b), *_ = np.linalg.lstsq(np.stack([xd, np.ones_like(xd)], axis=1), yd, rcond=None)
    return w, b, np.mean((w * xd + b - yd) ** 2)


def direct_mse(x: np.ndarray, y: np.ndarray, w: float, b: float) -> float:
    return np.mean((w * x.astype(np.float64) + b - y.astype(np.float64)) ** 2)


def float64_descent(x: np.ndarray, y: np.ndarray, start, lr: float, epochs: int):
    """Full-batch gradient descent in float64, one plain step at a time: [(w, b)] per epoch."""
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    w, b = start
    path = [(w, b)]
    for _ in range(epochs):
        r = w * xd + b - yd
        w, b = w - lr * 2 * np.mean(r * xd), b - lr * 2 * np.mean(r)
        path.append((w, b))
    return path


# ---- closed forms against numpy ----


@pytest.mark.parametrize(
    "kind", [*KINDS, "constant", "near 0, below 1", "near 0, above 1", "near 0, well above 1"]
)
def test_eigenvalues_and_eigenvectors_match_numpy(kind):
    x, y = dataset(kind)
    h = hessian(Moments.of(x, y))
    direct = direct_hessian(x)
    low, high = np.linalg.eigvalsh(direct)
    # eigvalsh is accurate to a few ulps of the largest eigenvalue, for the small one too.
    assert h.lambda_max == pytest.approx(high, rel=1e-12)
    assert abs(h.lambda_min - low) <= 1e-12 * high
    for lam, v in ((h.lambda_max, h.v_max), (h.lambda_min, h.v_min)):
        assert math.hypot(*v) == pytest.approx(1, rel=1e-14)
        assert np.linalg.norm(direct @ v - lam * np.array(v)) <= 1e-12 * high


@pytest.mark.parametrize("kind", KINDS)
def test_learning_rate_metrics_follow_from_the_eigenvalues(kind):
    x, y = dataset(kind)
    low, high = np.linalg.eigvalsh(direct_hessian(x))
    lr = 0.7 * 2 / high
    metrics = dynamics(Moments.of(x, y), lr, 10, (0.0, 0.0))
    assert metrics["lr_max"] == pytest.approx(2 / high, rel=1e-12)
    assert metrics["lr_ratio"] == pytest.approx(0.7, rel=1e-12)
    assert metrics["lr_best"] == pytest.approx(2 / (high + low), rel=1e-9)
    assert metrics["condition_number"] == pytest.approx(high / low, rel=1e-9)
    assert metrics["predicted_rate"] == pytest.approx(max((1 - lr * low) ** 2, 0.4**2), rel=1e-9)
    assert metrics["oscillates"] is True  # lr·λ_max = 1.4 > 1
    # lr_best really is the lr whose worst factor max|1 - lr·λ| is smallest: a brute-force search.
    grid = np.linspace(0.01, 2, 200_001) / high
    worst = np.maximum(abs(1 - grid * low), abs(1 - grid * high))
    assert abs(grid[np.argmin(worst)] - metrics["lr_best"]) <= 2 * (grid[1] - grid[0])


def test_oscillates_only_past_half_of_lr_max():
    x, y = dataset("offset")
    m = Moments.of(x, y)
    lr_max = dynamics(m, 1.0, 1, (0.0, 0.0))["lr_max"]
    assert dynamics(m, 0.49 * lr_max, 1, (0.0, 0.0))["oscillates"] is False
    assert dynamics(m, 0.51 * lr_max, 1, (0.0, 0.0))["oscillates"] is True


def test_the_long_run_rate_is_what_a_float64_loop_shows():
    # The offset data's λ differ 200-fold: after 600 updates at lr = 0.01 only the slow direction
    # is left (the steep one shrank by 0.17 per update), with an excess still far above float64
    # rounding. At lr = 0.05 the steep direction diverges: after 60 updates it sets the rate.
    x, y = dataset("offset")
    *_, best = direct_least_squares(x, y)
    for lr, epochs in ((0.01, 600), (0.05, 60)):
        path = float64_descent(x, y, (0.0, 0.0), lr, epochs)
        excess = [direct_mse(x, y, w, b) - best for w, b in path[-2:]]
        rate = dynamics(Moments.of(x, y), lr, 1, (0.0, 0.0))["predicted_rate"]
        assert excess[1] / excess[0] == pytest.approx(rate, rel=1e-8)


def test_every_x_the_same_leaves_the_undefined_values_null():
    x, y = dataset("constant")
    m = Moments.of(x, y)
    assert m.sxx == 0
    lr, start = 0.05, (1.0, -2.0)
    metrics = dynamics(m, lr, 20, start)
    high = np.linalg.eigvalsh(direct_hessian(x))[1]
    assert metrics["condition_number"] is None and metrics["lr_best"] is None
    assert metrics["lr_max"] == pytest.approx(2 / high, rel=1e-12)
    # The flat direction carries no loss: the rate is the steep direction's.
    assert metrics["predicted_rate"] == pytest.approx((1 - lr * high) ** 2, rel=1e-12)
    w, b = float64_descent(x, y, start, lr, 20)[-1]
    best = np.mean((y.astype(np.float64) - y.astype(np.float64).mean()) ** 2)
    assert metrics["predicted_ols_ratio"] == pytest.approx(direct_mse(x, y, w, b) / best, rel=1e-12)
    json.dumps(metrics, allow_nan=False)  # strict JSON: null, never NaN


def test_an_exact_fit_has_no_predicted_ratio_and_overflow_is_null():
    two_rows = Moments.of(np.array([0, 1], np.float32), np.array([1, 3], np.float32))
    assert dynamics(two_rows, 0.1, 10, (0.0, 0.0))["predicted_ols_ratio"] is None
    x, y = dataset("centred")
    diverging = dynamics(Moments.of(x, y), 3.0, 10**6, (0.0, 0.0))
    assert diverging["predicted_ols_ratio"] is None and diverging["lr_ratio"] > 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lr_ratio", [0.05, 0.45, 0.9, 1.05])
def test_predicted_ols_ratio_matches_a_float64_loop(kind, lr_ratio):
    x, y = dataset(kind)
    *_, best = direct_least_squares(x, y)
    lr = lr_ratio * 2 / np.linalg.eigvalsh(direct_hessian(x))[1]
    start, epochs = (-1.5, 4.0), 60
    w, b = float64_descent(x, y, start, lr, epochs)[-1]
    predicted = dynamics(Moments.of(x, y), lr, epochs, start)["predicted_ols_ratio"]
    # Both sides are float64; the loop's rounding grows with its 60 steps.
    assert predicted - 1 == pytest.approx(direct_mse(x, y, w, b) / best - 1, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_float32_noise_bounds_what_rounding_can_do(kind):
    x, y = dataset(kind)
    m = Moments.of(x, y)
    w_star, b_star, _ = direct_least_squares(x, y)
    for w, b in [(w_star, b_star), (w_star + 0.01, b_star - 0.3), (-2.0, 7.0)]:
        dw, db = UNIT_ROUNDOFF * abs(w), UNIT_ROUNDOFF * abs(b)
        here = direct_mse(x, y, w, b)
        changes = [
            abs(direct_mse(x, y, w + sw * dw, b + sb * db) - here)
            for sw in (-1, 1)
            for sb in (-1, 1)
        ]
        bound = float32_noise(m, w, b)
        # The worst corner attains the bound up to the sign of the cross term (exact quadratic);
        # the direct sums themselves round at 1e-16 of the MSE.
        assert max(changes) <= bound * (1 + 1e-6) + 1e-15 * here
        assert max(changes) >= 0.5 * bound - 1e-15 * here
        # The bound itself, |g|·δ + ½·δᵀ|H|δ, with g and H taken from the data directly.
        r = w * x.astype(np.float64) + b - y.astype(np.float64)
        g_w, g_b = 2 * np.mean(r * x), 2 * np.mean(r)
        hw, hwb, hb = direct_hessian(x)[0, 0], direct_hessian(x)[0, 1], direct_hessian(x)[1, 1]
        direct = (
            abs(g_w) * dw + abs(g_b) * db + 0.5 * (hw * dw**2 + 2 * abs(hwb) * dw * db + hb * db**2)
        )
        assert bound == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("kind", [*KINDS, "tiny"])
def test_the_least_squares_line_matches_numpy(kind):
    x, y = dataset(kind)
    w_star, b_star, _ = direct_least_squares(x, y)
    assert least_squares_line(Moments.of(x, y)) == pytest.approx((w_star, b_star), rel=1e-9)


def test_with_one_distinct_x_the_least_squares_line_is_flat_through_the_mean():
    x, y = dataset("constant")
    assert least_squares_line(Moments.of(x, y)) == (
        0.0,
        pytest.approx(np.mean(y.astype(np.float64))),
    )


def test_the_predicted_excess_adds_both_directions():
    # H = 2·I with eigenvectors (1, 0) and (0, 1): from the error (1, 2), each update scales the
    # two components by 1 - 2·lr = 0.8, so the excess is ½·2·(1² + 2²)·0.8^(2·3) after three.
    h = Hessian(ww=2.0, wb=0.0, bb=2.0, lambda_max=2.0, lambda_min=2.0, v_max=(1.0, 0.0))
    assert predicted_excess(h, 0.1, 3, (1.0, 2.0)) == pytest.approx(5 * 0.8**6, rel=1e-12)


def test_the_histories_must_share_their_start():
    a, b = History(), History()
    a.append(5.0, 1.0, 2.0)
    b.append(5.0, 1.0, 2.5)
    assert common_start({"module": a, "manual": a}) == (1.0, 2.0)
    with pytest.raises(UserError) as caught:
        common_start({"module": a, "manual": b})
    assert str(caught.value) == (
        "the histories start from different points (module (1.0, 2.0), manual (1.0, 2.5)); "
        "both trainers start from the same (w, b), so they come from different runs: "
        "`dvc repro` rebuilds them"
    )


# ---- observed_rate ----


def test_observed_rate_is_the_geometric_mean_over_the_last_quarter():
    x, y = dataset("linspace")
    *_, best = direct_least_squares(x, y)
    lr = 0.8 * 2 / np.linalg.eigvalsh(direct_hessian(x))[1]
    path = float64_descent(x, y, (0.0, 0.0), lr, 41)  # 41 updates: a quarter is 10 of them
    path = [(float(np.float32(w)), float(np.float32(b))) for w, b in path]  # as a history holds
    excess = [direct_mse(x, y, w, b) - best for w, b in path]
    ratios = [after / before for before, after in itertools.pairwise(excess)]
    expected = math.exp(sum(math.log(r) for r in ratios[-10:]) / 10)
    weights, biases = zip(*path, strict=True)
    assert observed_rate(Moments.of(x, y), weights, biases) == pytest.approx(expected, rel=1e-9)


def test_observed_rate_is_null_with_fewer_than_four_usable_updates():
    x, y = dataset("centred")
    m = Moments.of(x, y)
    w_star, b_star, _ = direct_least_squares(x, y)
    path = float64_descent(x, y, (0.0, 0.0), 0.1, 3)
    assert observed_rate(m, *zip(*path, strict=True)) is None
    # One more update, and the last quarter is one update: the rate is its single ratio.
    path = float64_descent(x, y, (0.0, 0.0), 0.1, 4)
    *_, best = direct_least_squares(x, y)
    excess = [direct_mse(x, y, *np.float32(point).tolist()) - best for point in path[-2:]]
    rate = observed_rate(m, *zip(*path, strict=True))
    assert rate == pytest.approx(excess[1] / excess[0], rel=1e-9)
    assert observed_rate(m, [w_star] * 20, [b_star] * 20) is None  # no excess at all


def data_of(p) -> tuple[np.ndarray, np.ndarray]:
    """The training rows that the pipeline's generate stage writes for these params."""
    chunks = [(x[~test], y[~test]) for x, y, test in generate(p.data, p.seed)]
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def train(fit, x, y, start, lr, epochs) -> History:
    torch.set_num_threads(1)  # as the trainers' stages run
    return fit(torch.from_numpy(x), torch.from_numpy(y), *start, lr, epochs)


def test_observed_rate_stops_before_the_float32_floor():
    # 300 epochs of the default run: the float32 excess reaches its floor near epoch 110 and
    # then wanders. The last quarter of every row would measure that wandering, not the rate.
    p = params(epochs=300)
    x, y = data_of(p)
    m = Moments.of(x, y)
    start = initial_parameters(p.seed, p.init_weight, p.init_bias)
    history = train(train_manual.fit, x, y, start, p.lr, p.epochs)
    *_, best = direct_least_squares(x, y)
    excess = [
        direct_mse(x, y, w, b) - best for w, b in zip(history.weight, history.bias, strict=True)
    ]
    naive = (excess[-1] / excess[-76]) ** (1 / 75)
    predicted = dynamics(m, p.lr, p.epochs, start)["predicted_rate"]
    assert abs(naive - predicted) > 0.05
    assert observed_rate(m, history.weight, history.bias) == pytest.approx(predicted, rel=1e-3)


# ---- real training runs ----


@pytest.fixture(scope="module")
def centred_data():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 200).astype(np.float32)
    y = (3 * x + 0.5 + rng.normal(0, 1, 200)).astype(np.float32)
    return x, y


@pytest.mark.parametrize("approach", TRAINERS)
def test_just_above_lr_max_diverges_and_just_below_converges(centred_data, approach):
    x, y = centred_data
    m = Moments.of(x, y)
    lr_max = dynamics(m, 1.0, 1, (0.0, 0.0))["lr_max"]
    start, epochs = (0.0, 0.0), 2000
    # 1% above, the steep component grows by 2% per update: the loss passes the trainers'
    # divergence bound (1e10 times the start) after about 600 updates.
    above = train(TRAINERS[approach], x, y, start, 1.01 * lr_max, epochs)
    assert above.updates < epochs
    assert observed_rate(m, above.weight, above.bias) == pytest.approx(
        dynamics(m, 1.01 * lr_max, epochs, start)["predicted_rate"], rel=1e-3
    )
    below = train(TRAINERS[approach], x, y, start, 0.99 * lr_max, epochs)
    assert below.updates == epochs
    ratio = evaluate(m, Moments(), below.weight[-1], below.bias[-1], 3, 0.5)["train_mse_ols_ratio"]
    assert ratio < 1 + 1e-9


def rounding_bound(x, y, history: History) -> float:
    """How far a float32 run's final train_mse_ols_ratio can be from exact arithmetic's.

    Each update rounds w and b to float32, moving θ by at most UNIT_ROUNDOFF·|θ_k|. A converging
    run's update map is a contraction, so the moves add up to at most S = Σ_k UNIT_ROUNDOFF·|θ_k|
    at the end, and change the final MSE by at most |g|·S + ½·λ_max·S² (g its gradient there).
    """
    w, b = history.weight[-1], history.bias[-1]
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    r = w * xd + b - yd
    gradient = np.hypot(2 * np.mean(r * xd), 2 * np.mean(r))
    s = sum(
        UNIT_ROUNDOFF * math.hypot(wk, bk)
        for wk, bk in zip(history.weight, history.bias, strict=True)
    )
    *_, best = direct_least_squares(x, y)
    return (gradient * s + 0.5 * np.linalg.eigvalsh(direct_hessian(x))[1] * s * s) / best


RUNS = {
    "reference module": REFERENCE_MODULE,
    "reference manual": REFERENCE_MANUAL,
    "default": {},
    "oscillating": {"lr": 0.8, "epochs": 30},
    "uniform x": {"data.x_dist": "uniform", "lr": 0.01, "epochs": 400},
}


@pytest.mark.parametrize("run", RUNS)
def test_predicted_ols_ratio_matches_both_trainers(run):
    p = params(**RUNS[run])
    x, y = data_of(p)
    m = Moments.of(x, y)
    start = initial_parameters(p.seed, p.init_weight, p.init_bias)
    predicted = dynamics(m, p.lr, p.epochs, start)["predicted_ols_ratio"]
    for fit in TRAINERS.values():
        history = train(fit, x, y, start, p.lr, p.epochs)
        assert history.updates == p.epochs
        # The trained float32 values, as evaluate loads them from the model file.
        w, b = (float(np.float32(v)) for v in (history.weight[-1], history.bias[-1]))
        observed = evaluate(m, Moments(), w, b, 0, 0)["train_mse_ols_ratio"]
        # Measured here: under 1% of the bound on every run.
        assert abs(observed - predicted) <= rounding_bound(x, y, history)


@pytest.mark.parametrize("reference", [REFERENCE_MODULE, REFERENCE_MANUAL])
def test_predicted_and_observed_rates_agree_on_the_reference_runs(reference):
    p = params(**reference)
    x, y = data_of(p)
    m = Moments.of(x, y)
    start = initial_parameters(p.seed, p.init_weight, p.init_bias)
    predicted = dynamics(m, p.lr, p.epochs, start)["predicted_rate"]
    # In exact arithmetic the excess is Σ a_i·r_i^k: each successive ratio is a mix of the two
    # factors r_i = (1 - lr·λ_i)², weighted by each direction's share of the excess. Over the
    # last quarter (from update J on) the observed rate is therefore within
    # |r_predicted - r_other| times (the other direction's share at J) of the long-run factor.
    w_star, b_star, _ = direct_least_squares(x, y)
    lambdas, vectors = np.linalg.eigh(direct_hessian(x))
    r = (1 - p.lr * lambdas) ** 2
    slow = int(np.argmax(r))
    components = vectors.T @ np.array([start[0] - w_star, start[1] - b_star])
    j = p.epochs - p.epochs // 4  # every row is far above the float32 floor on these two runs
    parts = 0.5 * lambdas * components**2 * r**j
    transient = abs(r[slow] - r[1 - slow]) * parts[1 - slow] / parts.sum()
    # On top, float32 rounding: each end of the window is usable only if its excess is at least
    # 1000 times its rounding noise, so the rate is off by at most 2/1000 over q updates.
    tolerance = transient + 2e-3 / (p.epochs // 4) * predicted
    for fit in TRAINERS.values():
        history = train(fit, x, y, start, p.lr, p.epochs)
        observed = observed_rate(m, history.weight, history.bias)
        assert abs(observed - predicted) <= tolerance
