"""The MSE of a line from float64 moments of the data, and how gradient descent moves on it.

Reads and writes nothing: pure functions of the moments, lr, epochs and a history.

The derivation, once. The training loss is L(w, b) = mean((w·x + b - y)²), a quadratic in
θ = (w, b). Its gradient is H·(θ - θ*) and its Hessian is constant,

    H = 2·[[E x², E x], [E x, 1]],

where θ* = (w*, b*) is the least-squares line, so L(θ) = L* + ½·eᵀ·H·e with e = θ - θ*.
One update θ ← θ - lr·∇L(θ) turns the error e into (I - lr·H)·e. Along the eigenvector v_i of H
(eigenvalue λ_i ≥ 0) the error's component c_i = v_iᵀe is multiplied by (1 - lr·λ_i) per update,
so after k updates the excess over the optimum is

    L(θ_k) - L* = ½·Σ_i λ_i·c_i²·(1 - lr·λ_i)^(2k).

Every component shrinks when |1 - lr·λ_i| < 1 for all i, i.e. lr < 2/λ_max = lr_max. The excess
shrinks per update by a mix of the factors (1 - lr·λ_i)², and in the long run by the largest
one, predicted_rate. The worst factor max_i |1 - lr·λ_i| is smallest where the two directions
balance, 1 - lr·λ_min = lr·λ_max - 1, at lr_best = 2/(λ_max + λ_min). When 1 - lr·λ_max < 0 the
steep component changes sign every update: the parameters oscillate around the optimum.
A direction with λ = 0 (every x equal) is flat: the loss does not depend on it and no update
changes it, so it carries no excess and is left out of the rate.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from stages.data import iter_batches

# Half an ulp of float32, relative: the largest change rounding a number to float32 can make.
FLOAT32_ROUNDING = 2.0**-24
# An epoch's excess is usable for observed_rate while it is at least this many times the change
# that rounding its weight and bias to float32 can make to the loss (float32_noise). Each usable
# excess is then known to 0.1%, and observed_rate, from two of them q updates apart, to
# 0.2%/q or better. Closer to the float32 floor the measured ratios wander: on the default run
# the last five ratios run from 0.8202 to 0.8219 where the theory says 0.8209 (measured).
NOISE_MARGIN = 1000.0


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
        # For float32 data these sums are exact in float64 (24-bit values, n < 2^29 per batch),
        # so n equal x give exactly that x as the mean and a spread of exactly 0.
        mean_x, mean_y = x.mean(), y.mean()
        dx, dy = x - mean_x, y - mean_y
        # Elementwise products and np.sum, not a BLAS dot, whose result depends on its thread count.
        sums = (dx * dx).sum(), (dx * dy).sum(), (dy * dy).sum()
        return cls(len(x), float(mean_x), float(mean_y), *map(float, sums))

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


def moments(
    path: Path, *, allow_empty: bool = False, file: pq.ParquetFile | None = None
) -> Moments:
    """Moments of a dataset, streamed one batch at a time (`file`: see data.iter_batches)."""
    total = Moments()
    for x, y in iter_batches(path, allow_empty=allow_empty, file=file):
        total = total.merge(Moments.of(x, y))
    return total


def least_squares_sse(m: Moments) -> float:
    """The smallest sum of squared errors any line reaches: that of the closed-form solution."""
    if m.sxx == 0:  # one distinct x: every line through the mean point is optimal
        return m.syy
    return max(m.syy - m.sxy * m.sxy / m.sxx, 0.0)


def least_squares_line(m: Moments) -> tuple[float, float]:
    """(w*, b*); with one distinct x, the flat line through the mean point (any line there is)."""
    w = m.sxy / m.sxx if m.sxx > 0 else 0.0
    return w, m.mean_y - w * m.mean_x


def sse(m: Moments, weight: float, bias: float) -> float:
    """Σ(y - weight·x - bias)² from the moments alone.

    Written as the least-squares error plus two squares (a wrong slope, a wrong offset at the
    mean), so that it is never below the optimum, even by rounding.
    """
    slope_excess = m.sxx * (weight - m.sxy / m.sxx) ** 2 if m.sxx > 0 else 0.0
    offset_excess = m.n * (m.mean_y - weight * m.mean_x - bias) ** 2
    return least_squares_sse(m) + slope_excess + offset_excess


def excess(m: Moments, weight: float, bias: float) -> float:
    """The training MSE at (weight, bias) minus the least-squares MSE: ≥ 0."""
    return (sse(m, weight, bias) - least_squares_sse(m)) / m.n


@dataclass(frozen=True)
class Hessian:
    """H = 2·[[E x², E x], [E x, 1]], the Hessian of the MSE in (w, b), with its eigen-pairs."""

    ww: float
    wb: float
    bb: float
    lambda_max: float
    lambda_min: float
    # Unit eigenvector of lambda_max; that of lambda_min is it turned by 90°.
    v_max: tuple[float, float]

    @property
    def v_min(self) -> tuple[float, float]:
        return (-self.v_max[1], self.v_max[0])


def hessian(m: Moments) -> Hessian:
    """The Hessian and its eigenvalues and eigenvectors in closed form.

    With a = E x² and c = E x, the eigenvalues of [[a, c], [c, 1]] are
    (a + 1)/2 ± s with s = √(((a - 1)/2)² + c²). λ_min comes from the determinant,
    λ_max·λ_min = 4·(a - c²) = 4·Var x, rather than from the difference, which would cancel.
    """
    var_x, mean_x = m.sxx / m.n, m.mean_x
    a = var_x + mean_x * mean_x
    s = math.hypot((a - 1) / 2, mean_x)
    mu = (a + 1) / 2 + s  # the largest eigenvalue of H/2
    # Two expressions of the same eigenvector; each sums two terms ≥ 0, and the chosen one has
    # a norm ≥ s, so it never cancels. s = 0 means H = 2·I: every direction is an eigenvector.
    if s == 0:
        v = (1.0, 0.0)
    else:
        v = (mu - 1, mean_x) if a >= 1 else (mean_x, mu - a)
        norm = math.hypot(*v)
        v = (v[0] / norm, v[1] / norm)
    lambda_max = 2 * mu
    return Hessian(2 * a, 2 * mean_x, 2.0, lambda_max, 4 * var_x / lambda_max, v)


def rates(h: Hessian, lr: float) -> list[float]:
    """(1 - lr·λ)² for each direction that carries loss (λ > 0), steep direction first."""
    return [(1 - lr * lam) ** 2 for lam in (h.lambda_max, h.lambda_min) if lam > 0]


def _power(base: float, exponent: int) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


def predicted_excess(h: Hessian, lr: float, updates: int, error: tuple[float, float]) -> float:
    """½·Σ λ_i·c_i²·(1 - lr·λ_i)^(2·updates): the excess after `updates` exact updates from
    the error θ_0 - θ*; inf if it exceeds float64."""
    total = 0.0
    for lam, v in ((h.lambda_max, h.v_max), (h.lambda_min, h.v_min)):
        c = v[0] * error[0] + v[1] * error[1]
        if lam > 0 and c != 0:
            total += 0.5 * lam * c * c * _power((1 - lr * lam) ** 2, updates)
    return total


def as_float32(value: float) -> float:
    """The float32 value that a history's decimal stands for.

    A history keeps the shortest decimal that reads back as each float32 (2.05, not
    2.049999952316284); as a float64 that decimal is up to half an ulp of float32 away from it.
    """
    return float(np.float32(value))


def dynamics(m: Moments, lr: float, epochs: int, start: tuple[float, float]) -> dict:
    """The dynamics metrics of full-batch gradient descent with `lr` for `epochs` updates from
    `start` = (w_0, b_0), row 0 of a history, on the training data's moments; None where a
    value is undefined."""
    start = (as_float32(start[0]), as_float32(start[1]))
    h = hessian(m)
    lr_max = 2 / h.lambda_max
    flat = h.lambda_min == 0  # every x the same: no lr makes the flat direction converge
    w_star, b_star = least_squares_line(m)
    optimum_mse = least_squares_sse(m) / m.n
    error = (start[0] - w_star, start[1] - b_star)
    final_excess = predicted_excess(h, lr, epochs, error)
    return {
        "lr_max": lr_max,
        "lr_ratio": lr / lr_max,
        "lr_best": None if flat else 2 / (h.lambda_max + h.lambda_min),
        "condition_number": None if flat else h.lambda_max / h.lambda_min,
        "predicted_rate": max(rates(h, lr)),
        "oscillates": bool(1 - lr * h.lambda_max < 0),
        # None when least squares fits exactly (no ratio) or the excess exceeds float64.
        "predicted_ols_ratio": (
            (optimum_mse + final_excess) / optimum_mse
            if optimum_mse > 0 and math.isfinite(final_excess)
            else None
        ),
    }


def float32_noise(m: Moments, weight: float, bias: float) -> float:
    """The most that rounding (weight, bias) to float32 can change the MSE.

    The MSE is quadratic, so a change δ moves it by gᵀδ + ½·δᵀHδ exactly (g the gradient); with
    |δ| ≤ half an ulp in each coordinate this bounds the change. A float32 trainer's weight and
    bias carry this rounding after every update, so an excess near this size is noise.
    """
    h = hessian(m)
    residual_mean = weight * m.mean_x + bias - m.mean_y  # mean of (w·x + b - y)
    # g = H·(θ - θ*), written with centred sums so that it does not cancel near the optimum.
    g_w = 2 * ((weight * m.sxx - m.sxy) / m.n + m.mean_x * residual_mean)
    g_b = 2 * residual_mean
    d_w, d_b = FLOAT32_ROUNDING * abs(weight), FLOAT32_ROUNDING * abs(bias)
    return (
        abs(g_w) * d_w
        + abs(g_b) * d_b
        + 0.5 * (h.ww * d_w * d_w + 2 * abs(h.wb) * d_w * d_b + h.bb * d_b * d_b)
    )


def observed_rate(m: Moments, weights: Sequence[float], biases: Sequence[float]) -> float | None:
    """The factor by which a run's excess shrank per update at the end of its history.

    The excess of each history row is computed in float64 from its float32 weight and bias
    (not from the float32 loss column, whose own rounding is larger). The usable rows are the
    first K + 1, up to the last row before the excess first falls below NOISE_MARGIN times
    float32_noise. Over the last quarter of them, q = K // 4 updates from row K - q to row K,
    the rate is the geometric mean of the successive ratios excess_(k+1)/excess_k, which
    telescopes to (excess_K / excess_(K-q))^(1/q). Early rows are left out because there the
    steep directions still carry part of the excess and pull the ratio below the long-run
    factor. None with fewer than 4 usable updates (q = 0). A diverging run's excess grows: its
    rate is > 1.
    """
    usable = []
    for w, b in zip(map(as_float32, weights), map(as_float32, biases), strict=True):
        value = excess(m, w, b)
        if not value > NOISE_MARGIN * float32_noise(m, w, b):
            break
        usable.append(value)
    last = len(usable) - 1
    if last < 4:  # no row usable, or a quarter of fewer than one update
        return None
    q = last // 4
    return (usable[last] / usable[last - q]) ** (1 / q)
