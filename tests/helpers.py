"""What tests share: params with a few keys changed (in memory or in a params.yaml), and the
float64 oracle of full-batch gradient descent with the float32 rounding it allows."""

import contextlib
import copy
import io
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from ruamel.yaml import YAML

from stages.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())

# The two reference runs of the pipeline issue, as overrides of params.yaml (also in the README).
REFERENCE_MODULE = {
    "seed": 5,
    "lr": 0.001,
    "epochs": 50,
    "init.weight": None,
    "init.bias": None,
    "data.n_samples": 50,
    "data.test_fraction": 0,
    "data.x_dist": "linspace",
    "data.x_min": 0,
    "data.x_max": 50,
    "data.weight": 2,
    "data.bias": 1,
    "data.noise_dist": "randint",
    "data.noise_scale": 10,
}
REFERENCE_MANUAL = {
    "seed": 5,
    "lr": 0.1,
    "epochs": 20,
    "init.weight": 16,
    "init.bias": 10,
    "data.n_samples": 1000,
    "data.test_fraction": 0,
    "data.x_dist": "normal",
    "data.x_mean": 0,
    "data.x_std": 1,
    "data.weight": 3,
    "data.bias": 0.5,
    "data.noise_dist": "normal",
    "data.noise_scale": 1,
}


def raw_params(**overrides: object) -> dict:
    """params.yaml as a dict, with dotted keys overridden: raw_params(**{"data.x_std": 2})."""
    raw = copy.deepcopy(DEFAULTS)
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target[section]
        target[key] = value
    return raw


def params(**overrides: object) -> Params:
    return parse_params(raw_params(**overrides))


def set_params(path: Path, **overrides: object) -> None:
    """Set dotted keys in a params.yaml, keeping its comments, and check that they took.

    A plain text replacement silently does nothing when the text differs (another spacing, a
    changed default), and the test then runs with other params than it says. Here a key that is
    not in the file fails the test, and the file is read back to confirm every new value.
    """
    path = Path(path)
    round_trip = YAML()
    raw = round_trip.load(path.read_text())
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        target = raw
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if not isinstance(target, dict) or key not in target:
            pytest.fail(f"{path}: no key {dotted} to set")
        target[key] = value
    out = io.StringIO()
    round_trip.dump(raw, out)
    path.write_text(out.getvalue())
    written = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        found = written
        for part in dotted.split("."):
            found = found[part]
        assert found == value, f"{path}: {dotted} reads back as {found!r}, not {value!r}"


def gradient_descent(
    x: np.ndarray, y: np.ndarray, weight: float, bias: float, lr: float, epochs: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The oracle for both trainers: full-batch gradient descent on the MSE in float64, on all
    rows at once (no chunks). Row k of each array is the state after k updates, as in a history."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w, b = float(weight), float(bias)
    rows = []
    for _ in range(epochs + 1):
        residual = w * x + b - y
        rows.append((w, b, np.mean(residual * residual)))
        w, b = w - lr * 2 * np.mean(residual * x), b - lr * 2 * np.mean(residual)
    weights, biases, losses = map(np.array, zip(*rows, strict=True))
    return weights, biases, losses


# float32's unit roundoff: every float32 operation is exact up to a relative error of at most u.
U32 = 2.0**-24


def float32_drift(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, biases: np.ndarray, lr: float, chunk: int
) -> tuple[float, float]:
    """How far a float32 run may be from the float64 `gradient_descent`, at most: (a bound on
    |weight - weight64| and |bias - bias64| on every row; a bound on |loss - loss64| on a row).

    Standard rounding analysis: a float32 sum of terms a_i, each made with a few roundings, is
    off by at most K·u·Σ|a_i|, K the longest chain of roundings: a few per term, the depth of
    torch's sum within a chunk (at most log2 of its length, doubled for its vector lanes), and
    one addition per chunk where autograd accumulates the chunks' gradients. Every term is
    bounded by the row's magnitude |w·x| + |b| + |y|. An update then adds lr·(gradient error) and
    one rounding of w and of b. Gradient descent on a quadratic maps an error e to (I - lr·H)e,
    whose norm is at most 1 while lr·λmax(H) ≤ 2 (checked here), so the errors of the updates add
    up at worst, never grow. A chunk-scaling bug (a chunk's mean instead of its sum over n) scales
    the gradient by the number of chunks: orders of magnitude beyond this bound.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    hessian = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])
    assert lr * np.linalg.eigvalsh(hessian).max() <= 2, "the float64 oracle itself diverges"
    chunks = math.ceil(n / chunk)
    depth = chunks + 2 * math.ceil(math.log2(min(chunk, n))) + 8
    drift, loss_bound = 0.0, 0.0
    for w, b in zip(weights, biases, strict=True):
        magnitude = np.abs(w * x) + abs(b) + np.abs(y)
        gradient_error = depth * U32 * 2 * (np.mean(magnitude * np.abs(x)) + np.mean(magnitude))
        drift += lr * gradient_error + U32 * (abs(w) + abs(b))
        loss_bound = max(loss_bound, depth * U32 * 2 * np.mean(magnitude * magnitude))
    return drift, loss_bound


def damaged_in_the_middle(tmp_path):
    """A file whose footer is intact but whose second row group's page header is garbage: it
    opens, and fails only when that row group is read."""
    path = tmp_path / "d.parquet"
    x = np.arange(2000, dtype=np.float32)
    pq.write_table(pa.table({"x": x, "y": x}), path, row_group_size=1000)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    content = bytearray(path.read_bytes())
    content[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(content))
    return path


@contextlib.contextmanager
def endless_pipe(path: Path, byte: bytes) -> Iterator[list[bool]]:
    """A FIFO at `path` whose writer offers 1 MiB of `byte`. A pipe has no size (fstat says 0),
    like a file still growing, so only a bounded read stops a reader. Yields a list that holds
    True once the reader has closed the pipe before taking it all."""
    os.mkfifo(path)
    cut_off: list[bool] = []

    def write() -> None:
        try:
            with open(path, "wb", buffering=0) as pipe:
                for _ in range(64):
                    pipe.write(byte * (16 * 1024))
        except BrokenPipeError:
            cut_off.append(True)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield cut_off
    finally:
        writer.join(timeout=60)  # a guard against a hang, not a timing check
