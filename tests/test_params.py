"""params.yaml validation: every bad value is refused with a message naming the key."""

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.generate import generate
from stages.params import DataParams, ParamsError, count_test_rows, load_params, parse_params
from tests.conftest import ENV
from tests.helpers import ROOT, params, raw_params


def test_the_committed_params_file_is_valid():
    loaded = load_params(ROOT / "params.yaml")
    assert loaded.lr > 0 and loaded.epochs >= 1


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        ({"lr": "abc"}, "lr", "finite number > 0"),
        ({"lr": 0}, "lr", "> 0"),
        ({"lr": -0.1}, "lr", "> 0"),
        ({"lr": math.inf}, "lr", "finite"),
        ({"lr": math.nan}, "lr", "finite"),
        ({"lr": True}, "lr", "finite number"),
        ({"epochs": 0}, "epochs", "whole number ≥ 1"),
        ({"epochs": 2.5}, "epochs", "whole number"),
        ({"seed": -1}, "seed", "whole number ≥ 0"),
        ({"init.weight": "x"}, "init.weight", "null"),
        ({"data.n_samples": 1}, "data.n_samples", "≥ 2"),
        ({"data.test_fraction": 1}, "data.test_fraction", "[0, 1)"),
        ({"data.test_fraction": -0.1}, "data.test_fraction", "[0, 1)"),
        ({"data.n_samples": 10, "data.test_fraction": 0.01}, "data.test_fraction", "0 test rows"),
        ({"data.n_samples": 2, "data.test_fraction": 0.9}, "data.test_fraction", "2 test rows"),
        ({"data.x_std": 0}, "data.x_std", "> 0"),
        ({"data.noise_scale": -1}, "data.noise_scale", "> 0"),
        ({"data.x_min": 5, "data.x_max": 5}, "data.x_max", "greater than data.x_min"),
        ({"data.x_dist": "cauchy"}, "data.x_dist", "normal, linspace, uniform"),
        ({"data.noise_dist": "laplace"}, "data.noise_dist", "normal, randint"),
        ({"data.noise_dist": "randint", "data.noise_scale": 2.5}, "data.noise_scale", "whole"),
    ],
)
def test_bad_values_name_the_key_the_value_and_what_is_allowed(overrides, key, allowed):
    with pytest.raises(ParamsError) as caught:
        params(**overrides)
    message = str(caught.value)
    assert message.startswith(f"{key} = ")
    assert allowed in message
    assert "\n" not in message


def test_unknown_and_missing_keys_are_named():
    raw = raw_params()
    raw["data"]["x_distt"] = "normal"
    with pytest.raises(ParamsError, match=r"unknown key data\.x_distt; allowed in data: .*x_dist"):
        parse_params(raw)
    raw = raw_params()
    del raw["init"]["bias"]
    with pytest.raises(ParamsError, match=r"missing key init\.bias"):
        parse_params(raw)
    with pytest.raises(ParamsError, match="unknown key lr_typo"):
        parse_params({**raw_params(), "lr_typo": 1})


def test_a_whole_number_float_is_accepted_as_randint_scale():
    assert params(**{"data.noise_dist": "randint", "data.noise_scale": 3.0}).data.noise_scale == 3


def test_load_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ParamsError, match=str(bad)):
        load_params(bad)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def test_test_size_rounds_half_up():
    assert count_test_rows(1000, 0.2) == 200
    assert count_test_rows(10, 0.25) == 3  # 2.5 rounds up
    assert count_test_rows(10, 0.24) == 2
    assert count_test_rows(7, 0) == 0
    assert count_test_rows(50, 0.29) == 15  # 14.5, though 50 * 0.29 is 14.499999999999998


def half_up_share(n: int, digits: str) -> int:
    """n · 0.<digits>, rounded half up, in integers: the oracle for the test-set size."""
    scale = 10 ** len(digits)
    return (2 * n * int(digits) + scale) // (2 * scale)


@given(n=st.integers(2, 10**12), digits=st.from_regex(r"[0-9]{1,6}", fullmatch=True))
def test_test_fraction_is_accepted_exactly_when_both_sets_are_non_empty(n, digits):
    fraction = float(f"0.{digits}")  # as YAML reads what a person types
    n_test = half_up_share(n, digits)
    assert count_test_rows(n, fraction) == n_test
    valid = fraction == 0 or 1 <= n_test <= n - 1
    try:
        params(**{"data.n_samples": n, "data.test_fraction": fraction})
    except ParamsError as error:
        assert not valid
        assert str(error).startswith("data.test_fraction = ")
    else:
        assert valid


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.text()))
def test_lr_is_accepted_exactly_when_it_is_a_finite_positive_number(value):
    valid = isinstance(value, int | float) and math.isfinite(value) and value > 0
    try:
        assert params(lr=value).lr == value
    except ParamsError as error:
        assert not valid
        assert str(error).startswith("lr = ")
    else:
        assert valid


# The documented limits (README, Parameters): accepted up to them, refused beyond.
@pytest.mark.parametrize(
    ("key", "largest"),
    [("epochs", 10**6), ("data.n_samples", 10**12), ("seed", 2**63 - 1)],
)
def test_counts_are_accepted_up_to_their_documented_limit_and_refused_beyond(key, largest):
    assert params(**{key: largest})  # the largest allowed
    for too_large in (largest + 1, 10**30, float(10**30)):
        with pytest.raises(ParamsError, match=f"{key} = .* is not allowed; expected a whole"):
            params(**{key: too_large})


def test_ten_billion_rows_are_accepted_as_the_scale_out_work_projects():
    assert params(**{"data.n_samples": 10**10}).data.n_samples == 10**10
    assert params(**{"data.n_samples": 1e10}).data.n_samples == 10**10


@pytest.mark.parametrize("key", ["seed", "lr", "epochs", "init.weight", "data.n_samples"])
def test_a_400_digit_integer_is_refused_in_a_short_line(key):
    with pytest.raises(ParamsError) as caught:
        params(**{key: 10**400 - 1})
    message = str(caught.value)
    assert message.startswith(f"{key} = <an integer of 400 digits> is not allowed")
    assert len(message) < 200


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # Each alone beyond ±1e15.
        ({"data.x_std": 1e300}, "data.x_std"),
        ({"data.x_mean": -1e300}, "data.x_mean"),
        ({"data.x_min": -1e300}, "data.x_min"),
        ({"data.x_max": 1e300}, "data.x_max"),
        ({"data.weight": 1e20}, "data.weight"),
        ({"data.bias": 1e300}, "data.bias"),
        ({"data.noise_scale": 1e300}, "data.noise_scale"),
        ({"init.weight": 1e300}, "init.weight"),
        ({"init.bias": -1e16}, "init.bias"),
        # Each within, together beyond: normal x reaches x_mean ± 40 · x_std ...
        ({"data.x_std": 1e14}, "data.x_std"),
        ({"data.x_mean": 9e14, "data.x_std": 1e13}, "data.x_mean"),
        # ... y reaches |weight| · that + |bias| + the noise's reach ...
        ({"data.weight": 1e14}, "data.weight"),
        ({"data.x_dist": "uniform", "data.x_max": 1e15, "data.weight": 2}, "data.weight"),
        ({"data.bias": 1e15, "data.weight": 1}, "data.bias"),
        ({"data.noise_scale": 1e14}, "data.noise_scale"),
        ({"data.noise_dist": "randint", "data.noise_scale": 1e15}, "data.noise_scale"),
        # ... and the starting prediction init.weight · x + init.bias.
        ({"data.x_dist": "uniform", "init.weight": 1e15}, "init.weight"),
        ({"init.bias": 1e15}, "init.bias"),
    ],
)
def test_params_that_would_take_x_or_y_beyond_float32_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ParamsError) as caught:
        params(**overrides)
    message = str(caught.value)
    assert message.startswith(f"{key} = ") and "is not allowed" in message
    assert "1e15" in message and len(message) < 250


def test_without_the_check_generate_would_write_infinite_values():
    # The premise of the test above: DataParams built around validation reach float32's end.
    data = params().data
    unchecked = DataParams(**{**data.__dict__, "x_std": 1e300})
    with np.errstate(over="ignore"):  # numpy warns as it casts 1e300 to float32's inf
        x, y, _ = next(generate(unchecked, seed=0, chunk_rows=100))
    assert not np.isfinite(x).all() and not np.isfinite(y).all()


magnitudes = st.floats(-20, 20).map(lambda e: 10.0**e)


@given(
    x_dist=st.sampled_from(["normal", "uniform", "linspace"]),
    noise_dist=st.sampled_from(["normal", "randint"]),
    x_mean=magnitudes,
    x_std=magnitudes,
    x_max=magnitudes,
    weight=magnitudes,
    bias=magnitudes,
    noise_scale=magnitudes.map(math.ceil),
)
def test_whatever_validation_accepts_generate_writes_as_finite_float32(**values):
    overrides = {f"data.{key}": value for key, value in values.items()}
    overrides.update({"data.x_min": -overrides["data.x_max"], "data.n_samples": 200})
    try:
        data = params(**overrides).data
    except ParamsError as error:
        assert str(error).startswith("data.")
        return
    x, y, _ = next(generate(data, seed=0))
    assert np.isfinite(x).all() and np.isfinite(y).all()
    assert np.abs(x).max() <= 1e15 and np.abs(y).max() <= 1e15


def write_params(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
    return path


def committed_params_with(old: str, new: str) -> str:
    text = (ROOT / "params.yaml").read_text()
    assert text.count(old) == 1
    return text.replace(old, new)


def line_of(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def test_a_duplicate_key_is_refused_in_one_line_naming_the_file_the_key_and_the_line(tmp_path):
    # (text replaced, its replacement, the key named, where it is first, where again)
    cases = [
        ("lr: 0.05", "lr: 0.05\nlr: 0.1", "lr", "lr: 0.05", "lr: 0.1"),
        ("  bias: 0.5 ", "  bias: 0.5\n  bias: 0.7 ", "data.bias", "bias: 0.5", "bias: 0.7"),
        ("seed: 42 ", "seed: {a: 1, a: 2} ", "seed.a", "seed:", "seed:"),
    ]
    for old, new, key, first_text, again_text in cases:
        text = committed_params_with(old, new)
        first, again = line_of(text, first_text), line_of(text, again_text)
        path = write_params(tmp_path, text)
        with pytest.raises(ParamsError) as caught:
            load_params(path)
        assert str(caught.value) == (
            f"{path}: line {again}: duplicate key {key} (first on line {first}); "
            "each key may appear only once"
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff\xfe" + (ROOT / "params.yaml").read_bytes(), "not UTF-8 text"),
        ((ROOT / "params.yaml").read_text() + "#" * 20_000, "the params file is over 16 KiB"),
        ("", "the top level must be a mapping of keys to values, not None"),
        (
            committed_params_with("lr: 0.05", "lr: " + "9" * 5000),
            "line 2: lr is an integer of 5,000 digits; Python reads at most 4,300",
        ),
        (
            committed_params_with("lr: 0.05", "lr: " + "[" * 40 + "]" * 40),
            "line 2: brackets nested more than 32 deep",
        ),
        (
            committed_params_with("lr: 0.05", "lr:\n" + "  - " * 2000 + "1"),
            "the YAML is nested too deeply",
        ),
        (committed_params_with("x_dist: normal", "x_dist: " + "n" * 10_000), "data.x_dist = 'nnnn"),
    ],
)
def test_an_odd_params_file_is_refused_in_one_short_line(tmp_path, text, message):
    path = write_params(tmp_path, text)
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 250


def nested_aliases(levels: int, width: int) -> str:
    """A YAML list of `width` references to a list of `width` references to ...: a few hundred
    bytes that stand for width**levels numbers."""
    anchors = [f"&a0 [{', '.join(['1'] * width)}]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"[{', '.join(anchors)}]"


def merged_mappings(levels: int) -> str:
    """Mappings that each merge the previous one twice: 2**levels keys from a few lines."""
    lines = ["m0: &m0 {a: 1, b: 2}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The 1.7 KB file: seed is a list of 10^9 numbers through nested aliases.
        (
            committed_params_with("seed: 42 ", f"seed: {nested_aliases(9, 10)} "),
            "seed = [[1, 1, 1, 1, ...]",
        ),
        (
            merged_mappings(24) + (ROOT / "params.yaml").read_text(),
            "line 2: merge keys (<<) are not allowed",
        ),
        (
            committed_params_with("lr: 0.05", "lr: " + "[" * 7000 + "]" * 7000),
            "line 2: brackets nested more than 32 deep",
        ),
        (
            committed_params_with("lr: 0.05", "lr:\n" + "- " * 7000 + "1"),
            "the YAML is nested too deeply",
        ),
    ],
)
def test_a_hostile_params_file_stops_a_stage_at_once_with_one_short_line(tmp_path, text, message):
    path = write_params(tmp_path, text)
    assert path.stat().st_size < 16 * 1024
    # A timeout, not a timing. Before these checks, the first took minutes and gigabytes, and the
    # last two ended in a RecursionError traceback; the pure-Python parser alone takes minutes
    # on the brackets, and the merge keys make any YAML reader merge 2^24 key-value pairs.
    result = subprocess.run(
        [sys.executable, "-m", "stages.generate", "--params", path, tmp_path / "a", tmp_path / "b"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {message}")
    assert len(lines[0]) < 300
