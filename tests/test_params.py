"""params.yaml validation: every bad value is refused with a message naming the key."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stages.params import ParamsError, count_test_rows, load_params, parse_params
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


@given(
    n=st.integers(2, 10**9),
    fraction=st.floats(0, 1, exclude_max=True),
)
def test_test_fraction_is_accepted_exactly_when_both_sets_are_non_empty(n, fraction):
    n_test = count_test_rows(n, fraction)
    valid = fraction == 0 or 1 <= n_test <= n - 1
    try:
        params(**{"data.n_samples": n, "data.test_fraction": fraction})
    except ParamsError:
        assert not valid
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
