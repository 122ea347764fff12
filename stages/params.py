"""Read params.yaml and check every value, so that a stage fails before it writes anything."""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from stages.cli import UserError

X_DISTS = ("normal", "linspace", "uniform")
NOISE_DISTS = ("normal", "randint")


class ParamsError(UserError):
    pass


@dataclass(frozen=True)
class DataParams:
    n_samples: int
    test_fraction: float
    weight: float
    bias: float
    x_dist: str
    x_min: float
    x_max: float
    x_mean: float
    x_std: float
    noise_dist: str
    noise_scale: float


@dataclass(frozen=True)
class Params:
    seed: int
    lr: float
    epochs: int
    init_weight: float | None
    init_bias: float | None
    data: DataParams


def count_test_rows(n_samples: int, test_fraction: float) -> int:
    """Rows in the test set: n·fraction rounded half up (1000 · 0.25 → 250, 10 · 0.25 → 3)."""
    return math.floor(n_samples * test_fraction + 0.5)


def load_params(path: Path) -> Params:
    """Read and validate a params file; raise ParamsError naming the key on the first problem."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the params file ({error.strerror})") from None
    try:
        raw = parse_yaml(text)
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({_yaml_problem(error)})") from None
    try:
        return parse_params(raw)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None


def parse_yaml(text: str) -> Any:
    """Parse YAML as DVC itself does (ruamel.yaml, YAML 1.2), so that a stage reads every value
    as `dvc params diff` shows it. PyYAML follows YAML 1.1, where `1e-06`, which DVC writes for
    `-S lr=0.000001`, is a string, not a number (treeverse/dvc#5971). A duplicate key is an error.
    """
    return YAML(typ="safe").load(text)


def _yaml_problem(error: YAMLError) -> str:
    """ruamel's message in one line: what is wrong and on which line."""
    if isinstance(error, MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return where + " ".join(error.problem.split())
    return " ".join(str(error).split())


def parse_params(raw: Any) -> Params:
    """Validate the parsed YAML of a params file and return typed values."""
    top = _section(raw, "", {"seed", "lr", "epochs", "init", "data"})
    init = _section(top["init"], "init.", {"weight", "bias"})
    data_keys = {f.name for f in DataParams.__dataclass_fields__.values()}
    data = _section(top["data"], "data.", data_keys)

    n_samples = _integer("data.n_samples", data["n_samples"], minimum=2)
    test_fraction = _number("data.test_fraction", data["test_fraction"])
    if not 0 <= test_fraction < 1:
        _fail("data.test_fraction", test_fraction, "a number in [0, 1)")
    n_test = count_test_rows(n_samples, test_fraction)
    if test_fraction > 0 and not 1 <= n_test <= n_samples - 1:
        _fail(
            "data.test_fraction",
            test_fraction,
            f"0, or a fraction that leaves at least one row in train and in test "
            f"(with data.n_samples = {n_samples} it gives {n_test} test rows)",
        )
    x_min = _number("data.x_min", data["x_min"])
    x_max = _number("data.x_max", data["x_max"])
    if x_min >= x_max:
        _fail("data.x_max", x_max, f"a number greater than data.x_min = {x_min}")
    noise_dist = _choice("data.noise_dist", data["noise_dist"], NOISE_DISTS)
    noise_scale = _number("data.noise_scale", data["noise_scale"], positive=True)
    if noise_dist == "randint" and not noise_scale.is_integer():
        _fail("data.noise_scale", noise_scale, "a whole number > 0 when data.noise_dist is randint")

    return Params(
        seed=_integer("seed", top["seed"], minimum=0, maximum=2**63 - 1),
        lr=_number("lr", top["lr"], positive=True),
        epochs=_integer("epochs", top["epochs"], minimum=1),
        init_weight=_optional_number("init.weight", init["weight"]),
        init_bias=_optional_number("init.bias", init["bias"]),
        data=DataParams(
            n_samples=n_samples,
            test_fraction=test_fraction,
            weight=_number("data.weight", data["weight"]),
            bias=_number("data.bias", data["bias"]),
            x_dist=_choice("data.x_dist", data["x_dist"], X_DISTS),
            x_min=x_min,
            x_max=x_max,
            x_mean=_number("data.x_mean", data["x_mean"]),
            x_std=_number("data.x_std", data["x_std"], positive=True),
            noise_dist=noise_dist,
            noise_scale=noise_scale,
        ),
    )


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ParamsError(f"{key} = {value!r} is not allowed; expected {allowed}")


def _section(raw: Any, prefix: str, keys: set[str]) -> dict[str, Any]:
    name = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{name} must be a mapping of keys to values, not {raw!r}")
    unknown = sorted(str(k) for k in raw.keys() - keys)
    if unknown:
        raise ParamsError(
            f"unknown key {prefix}{unknown[0]}; allowed in {name}: {', '.join(sorted(keys))}"
        )
    missing = sorted(keys - raw.keys())
    if missing:
        raise ParamsError(f"missing key {prefix}{missing[0]}")
    return raw


def _number(key: str, value: Any, *, positive: bool = False) -> float:
    # bool is a subclass of int in Python, but `lr: true` is a typo, not the number 1.
    allowed = "a finite number > 0" if positive else "a finite number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(key, value, allowed)
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        _fail(key, value, allowed)
    return value


def _optional_number(key: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(key, value, "a finite number, or null for nn.Linear's random initialisation")
    return float(value)


def _integer(key: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    allowed = f"a whole number ≥ {minimum}" + (f" and ≤ {maximum}" if maximum else "")
    # A whole float is that number: people write large counts as 1e8, which YAML reads as a float.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, value, allowed)
    if value < minimum or (maximum is not None and value > maximum):
        _fail(key, value, allowed)
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        _fail(key, value, "one of " + ", ".join(choices))
    return value
