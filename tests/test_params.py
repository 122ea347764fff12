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
from tests.helpers import ROOT, endless_pipe, params, raw_params

# The maxima as the messages write them, for the tests below that spell out whole messages.
SEED_RULE = "a whole number ≥ 0 and ≤ 9,223,372,036,854,775,807"  # 2^63 - 1
EPOCHS_RULE = "a whole number ≥ 1 and ≤ 1,000,000"
N_SAMPLES_RULE = "a whole number ≥ 2 and ≤ 1,000,000,000,000"
# Just past the ±1e15 limit of values: the next float64, 1e15 + 0.125.
PAST_LIMIT = math.nextafter(1e15, math.inf)
UNIT_X = {"data.x_dist": "uniform", "data.x_min": -1, "data.x_max": 1}  # x in [-1, 1]


def test_the_committed_params_file_is_valid():
    loaded = load_params(ROOT / "params.yaml")
    assert loaded.lr > 0 and loaded.epochs >= 1


def refusal(**overrides: object) -> str:
    """The message with which parse_params refuses params.yaml with these keys changed."""
    with pytest.raises(ParamsError) as caught:
        params(**overrides)
    return str(caught.value)


# One test per rule, each message in full: the key, the value as the file gives it (a string in
# quotes, a long integer by its number of digits), and what is allowed.
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": "abc"}, "lr = 'abc' is not allowed; expected a finite number > 0"),
        ({"lr": 0}, "lr = 0 is not allowed; expected a finite number > 0"),
        ({"lr": -0.1}, "lr = -0.1 is not allowed; expected a finite number > 0"),
        ({"lr": math.inf}, "lr = inf is not allowed; expected a finite number > 0"),
        ({"lr": math.nan}, "lr = nan is not allowed; expected a finite number > 0"),
        # bool is an int in Python, but `lr: true` is a typo, not the number 1.
        ({"lr": True}, "lr = True is not allowed; expected a finite number > 0"),
        ({"lr": None}, "lr = None is not allowed; expected a finite number > 0"),
        (
            {"lr": 10**400},
            "lr = <an integer of 401 digits> is not allowed; expected a finite number > 0",
        ),
        (
            {"data.test_fraction": "0.2"},
            "data.test_fraction = '0.2' is not allowed; expected a finite number",
        ),
        (
            {"data.test_fraction": -math.inf},
            "data.test_fraction = -inf is not allowed; expected a finite number",
        ),
        # Values limited to ±1e15 say so.
        (
            {"data.x_std": 0},
            "data.x_std = 0 is not allowed; expected a finite number > 0 and ≤ 1e15",
        ),
        (
            {"data.x_std": -1.5},
            "data.x_std = -1.5 is not allowed; expected a finite number > 0 and ≤ 1e15",
        ),
        (
            {"data.x_dist": "uniform", "data.x_std": PAST_LIMIT},
            "data.x_std = 1000000000000000.1 is not allowed; expected a finite number > 0 and "
            "≤ 1e15",
        ),
        (
            {"data.noise_scale": math.nan},
            "data.noise_scale = nan is not allowed; expected a finite number > 0 and ≤ 1e15",
        ),
        (
            {"data.x_min": -PAST_LIMIT},
            "data.x_min = -1000000000000000.1 is not allowed; expected a number from -1e15 to 1e15",
        ),
        (
            {"data.x_max": PAST_LIMIT},
            "data.x_max = 1000000000000000.1 is not allowed; expected a number from -1e15 to 1e15",
        ),
        (
            {"data.weight": "3"},
            "data.weight = '3' is not allowed; expected a number from -1e15 to 1e15",
        ),
        (
            {"data.bias": False},
            "data.bias = False is not allowed; expected a number from -1e15 to 1e15",
        ),
        (
            {"data.x_mean": math.inf},
            "data.x_mean = inf is not allowed; expected a number from -1e15 to 1e15",
        ),
        (
            {"data.x_mean": -(10**400)},
            "data.x_mean = <an integer of 401 digits> is not allowed; expected a number from -1e15 "
            "to 1e15",
        ),
    ],
)
def test_a_value_that_is_no_number_or_out_of_range_is_refused_with_the_whole_rule(
    overrides, message
):
    assert refusal(**overrides) == message


NULL_RULE = "a number from -1e15 to 1e15, or null for nn.Linear's random initialisation"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"init.weight": "x"}, f"init.weight = 'x' is not allowed; expected {NULL_RULE}"),
        ({"init.weight": True}, f"init.weight = True is not allowed; expected {NULL_RULE}"),
        ({"init.bias": math.nan}, f"init.bias = nan is not allowed; expected {NULL_RULE}"),
        ({"init.bias": -math.inf}, f"init.bias = -inf is not allowed; expected {NULL_RULE}"),
        (
            {"init.bias": PAST_LIMIT},
            f"init.bias = 1000000000000000.1 is not allowed; expected {NULL_RULE}",
        ),
        (
            {"init.weight": 10**400},
            f"init.weight = <an integer of 401 digits> is not allowed; expected {NULL_RULE}",
        ),
    ],
)
def test_a_starting_value_is_a_number_within_1e15_or_null(overrides, message):
    assert refusal(**overrides) == message


@pytest.mark.parametrize(
    "overrides",
    [
        {"data.x_min": -1e15},  # x is normal here: x_min and x_max do not move it
        {"data.x_max": 1e15},
        {"data.x_dist": "uniform", "data.x_std": 1e15},
        # With weight 0 and bias 0, y is the noise alone: randint reaches its scale.
        {"data.weight": 0, "data.bias": 0, "data.noise_dist": "randint", "data.noise_scale": 1e15},
        # Normal x reaches x_mean ± 40 · x_std = ±1e15; weight 0 keeps y small.
        {"data.x_std": 2.5e13, "data.weight": 0},
        # The starting prediction init.weight · x + init.bias, with x in [-1, 1].
        {**UNIT_X, "init.weight": -1e15, "init.bias": 0},
        {**UNIT_X, "init.weight": 1e15 - 1, "init.bias": None},  # a null one counts as 1
        {"init.weight": 0, "init.bias": 1e15},
        # lr has no limit: too large a one diverges, which training reports.
        {"lr": 1e300},
    ],
)
def test_values_are_accepted_up_to_1e15_and_so_are_x_y_and_the_start_they_give(overrides):
    assert params(**overrides)  # refused above, each just past: PAST_LIMIT and the range tests


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seed": -1}, f"seed = -1 is not allowed; expected {SEED_RULE}"),
        ({"seed": 2**63}, f"seed = 9223372036854775808 is not allowed; expected {SEED_RULE}"),
        # 2^63 - 1 as a float is 2^63.
        (
            {"seed": float(2**63 - 1)},
            f"seed = 9.223372036854776e+18 is not allowed; expected {SEED_RULE}",
        ),
        # Integers of more than 64 bits are shown by their number of digits.
        ({"seed": 2**64}, f"seed = <an integer of 20 digits> is not allowed; expected {SEED_RULE}"),
        (
            {"seed": 10**20 - 1},
            f"seed = <an integer of 20 digits> is not allowed; expected {SEED_RULE}",
        ),
        (
            {"seed": 10**20},
            f"seed = <an integer of 21 digits> is not allowed; expected {SEED_RULE}",
        ),
        ({"seed": "42"}, f"seed = '42' is not allowed; expected {SEED_RULE}"),
        ({"seed": 4.2}, f"seed = 4.2 is not allowed; expected {SEED_RULE}"),
        ({"seed": math.inf}, f"seed = inf is not allowed; expected {SEED_RULE}"),
        ({"seed": None}, f"seed = None is not allowed; expected {SEED_RULE}"),
        ({"epochs": 0}, f"epochs = 0 is not allowed; expected {EPOCHS_RULE}"),
        ({"epochs": 2.5}, f"epochs = 2.5 is not allowed; expected {EPOCHS_RULE}"),
        ({"epochs": True}, f"epochs = True is not allowed; expected {EPOCHS_RULE}"),
        ({"epochs": 1_000_001}, f"epochs = 1000001 is not allowed; expected {EPOCHS_RULE}"),
        ({"epochs": 1_000_001.0}, f"epochs = 1000001.0 is not allowed; expected {EPOCHS_RULE}"),
        ({"data.n_samples": 1}, f"data.n_samples = 1 is not allowed; expected {N_SAMPLES_RULE}"),
        (
            {"data.n_samples": 10**12 + 1},
            f"data.n_samples = 1000000000001 is not allowed; expected {N_SAMPLES_RULE}",
        ),
        (
            {"data.n_samples": 10**400 - 1},
            "data.n_samples = <an integer of 400 digits> is not allowed; expected "
            f"{N_SAMPLES_RULE}",
        ),
        (
            {"data.n_samples": 1e13},
            f"data.n_samples = 10000000000000.0 is not allowed; expected {N_SAMPLES_RULE}",
        ),
    ],
)
def test_a_count_that_is_no_whole_number_or_out_of_range_is_refused_with_the_whole_rule(
    overrides, message
):
    assert refusal(**overrides) == message


# The documented limits (README, Parameters): accepted at both ends, as integers and as whole
# floats (YAML reads 1e6 as a float), which become ints.
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seed", 0),
        ("seed", 0.0),
        ("seed", 2**63 - 1),
        ("seed", 1e18),
        ("epochs", 1),
        ("epochs", 10**6),
        ("epochs", 1e6),
        ("data.n_samples", 10**12),
        ("data.n_samples", 1e12),
        ("data.n_samples", 1e10),  # as the scale-out work projects
    ],
)
def test_counts_are_accepted_up_to_their_documented_limits_as_ints(key, value):
    loaded = params(**{key: value})
    section = loaded.data if key.startswith("data.") else loaded
    number = getattr(section, key.removeprefix("data."))
    assert number == value and type(number) is int


def test_the_smallest_data_set_is_two_rows_one_for_each_set():
    assert params(**{"data.n_samples": 2, "data.test_fraction": 0.5}).data.n_samples == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.x_dist": "cauchy"},
            "data.x_dist = 'cauchy' is not allowed; expected one of normal, linspace, uniform",
        ),
        (
            {"data.x_dist": "Normal"},
            "data.x_dist = 'Normal' is not allowed; expected one of normal, linspace, uniform",
        ),
        (
            {"data.x_dist": 1},
            "data.x_dist = 1 is not allowed; expected one of normal, linspace, uniform",
        ),
        (
            {"data.x_dist": None},
            "data.x_dist = None is not allowed; expected one of normal, linspace, uniform",
        ),
        (
            {"data.noise_dist": "laplace"},
            "data.noise_dist = 'laplace' is not allowed; expected one of normal, randint",
        ),
        (
            {"data.noise_dist": ["normal"]},
            "data.noise_dist = ['normal'] is not allowed; expected one of normal, randint",
        ),
    ],
)
def test_a_distribution_is_one_of_those_named(overrides, message):
    assert refusal(**overrides) == message


SPLIT_RULE = "0, or a fraction that leaves at least one row in train and in test"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"data.test_fraction": 1},
            "data.test_fraction = 1.0 is not allowed; expected a number in [0, 1)",
        ),
        (
            {"data.test_fraction": -0.1},
            "data.test_fraction = -0.1 is not allowed; expected a number in [0, 1)",
        ),
        (
            {"data.n_samples": 10, "data.test_fraction": 0.01},
            f"data.test_fraction = 0.01 is not allowed; expected {SPLIT_RULE} (with "
            "data.n_samples = 10 it gives 0 test rows)",
        ),
        (
            {"data.n_samples": 10, "data.test_fraction": 0.95},  # 9.5 rounds up to all 10
            f"data.test_fraction = 0.95 is not allowed; expected {SPLIT_RULE} (with "
            "data.n_samples = 10 it gives 10 test rows)",
        ),
        (
            {"data.n_samples": 2, "data.test_fraction": 0.9},
            f"data.test_fraction = 0.9 is not allowed; expected {SPLIT_RULE} (with "
            "data.n_samples = 2 it gives 2 test rows)",
        ),
        (
            {"data.x_min": 5, "data.x_max": 5},
            "data.x_max = 5 is not allowed; expected a number greater than data.x_min = 5.0",
        ),
        (
            {"data.x_min": 5, "data.x_max": -1},
            "data.x_max = -1 is not allowed; expected a number greater than data.x_min = 5.0",
        ),
        (
            {"data.noise_dist": "randint", "data.noise_scale": 2.5},
            "data.noise_scale = 2.5 is not allowed; expected a whole number > 0 when "
            "data.noise_dist is randint",
        ),
    ],
)
def test_values_that_do_not_fit_together_are_refused_naming_the_other_key(overrides, message):
    assert refusal(**overrides) == message


@pytest.mark.parametrize(
    "overrides",
    [
        {"data.test_fraction": 0},  # no test set
        {"data.n_samples": 10, "data.test_fraction": 0.05},  # 0.5 rounds up to one test row
        {"data.n_samples": 10, "data.test_fraction": 0.94},  # 9.4: one row left to train on
        {"data.x_min": 5, "data.x_max": math.nextafter(5, math.inf)},
        {"data.noise_dist": "randint", "data.noise_scale": 3.0},
        {"data.noise_dist": "normal", "data.noise_scale": 0.5},  # whole only for randint
    ],
)
def test_values_that_just_fit_together_are_accepted(overrides):
    assert params(**overrides)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "the top level must be a mapping of keys to values, not [1]"),
        ({**raw_params(), "init": None}, "init must be a mapping of keys to values, not None"),
        ({**raw_params(), "data": "x"}, "data must be a mapping of keys to values, not 'x'"),
        (
            {**raw_params(), "lr_typo": 1},
            "unknown key lr_typo; allowed in the top level: data, epochs, init, lr, seed",
        ),
        # Of several, the first in sorted order; a key that is no string as shown in messages;
        # a long one cut to 60 characters.
        (
            {**raw_params(), "zz": 1, "aa": 2, 3: 4},
            "unknown key 3; allowed in the top level: data, epochs, init, lr, seed",
        ),
        (
            {**raw_params(), "k" * 100: 1},
            f"unknown key {'k' * 60}; allowed in the top level: data, epochs, init, lr, seed",
        ),
        (
            raw_params(**{"init.scale": 1}),
            "unknown key init.scale; allowed in init: bias, weight",
        ),
        (
            raw_params(**{"data.x_distt": "normal"}),
            "unknown key data.x_distt; allowed in data: bias, n_samples, noise_dist, noise_scale, "
            "test_fraction, weight, x_dist, x_max, x_mean, x_min, x_std",
        ),
        ({"lr": 0.1}, "missing key data"),
        ({**raw_params(), "init": {}}, "missing key init.bias"),
        ({**raw_params(), "data": {}}, "missing key data.bias"),
    ],
)
def test_a_section_that_is_no_mapping_or_has_a_key_wrong_is_refused_naming_it(raw, message):
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert str(caught.value) == message


def test_load_params_names_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ParamsError, match=str(bad)):
        load_params(bad)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ParamsError) as caught:
        load_params(missing)
    assert (
        str(caught.value) == f"{missing}: cannot read the params file (No such file or directory)"
    )


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


LIMITED = "a number from -1e15 to 1e15"
X_REACH = "a value that keeps x within ±1e15: data.x_mean ± 40 · data.x_std reaches"
Y_REACH = (
    "a value that keeps y = weight·x + bias + noise within ±1e15 (with these data params it reaches"
)
START_REACH = (
    "a value that keeps the starting prediction init.weight·x + init.bias within ±1e15 (here it "
    "reaches"
)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Each alone beyond ±1e15.
        (
            {"data.x_std": 1e300},
            "data.x_std = 1e+300 is not allowed; expected a finite number > 0 and ≤ 1e15",
        ),
        ({"data.x_mean": -1e300}, f"data.x_mean = -1e+300 is not allowed; expected {LIMITED}"),
        ({"data.x_min": -1e300}, f"data.x_min = -1e+300 is not allowed; expected {LIMITED}"),
        ({"data.x_max": 1e300}, f"data.x_max = 1e+300 is not allowed; expected {LIMITED}"),
        ({"data.weight": 1e20}, f"data.weight = 1e+20 is not allowed; expected {LIMITED}"),
        ({"data.bias": 1e300}, f"data.bias = 1e+300 is not allowed; expected {LIMITED}"),
        (
            {"data.noise_scale": 1e300},
            "data.noise_scale = 1e+300 is not allowed; expected a finite number > 0 and ≤ 1e15",
        ),
        ({"init.weight": 1e300}, f"init.weight = 1e+300 is not allowed; expected {NULL_RULE}"),
        ({"init.bias": -1e16}, f"init.bias = -1e+16 is not allowed; expected {NULL_RULE}"),
        # Each within, together beyond: normal x reaches x_mean ± 40 · x_std, named by the larger
        # part (x_std on a tie) ...
        (
            {"data.x_std": 1e14},
            f"data.x_std = 100000000000000.0 is not allowed; expected {X_REACH} 4e+15",
        ),
        (
            {"data.x_std": math.nextafter(2.5e13, math.inf), "data.weight": 0},  # just past 1e15
            f"data.x_std = 25000000000000.004 is not allowed; expected {X_REACH} 1e+15",
        ),
        (
            {"data.x_mean": 9e14, "data.x_std": 1e13},
            f"data.x_mean = 900000000000000.0 is not allowed; expected {X_REACH} 1.3e+15",
        ),
        (
            {"data.x_mean": -6e14, "data.x_std": 1.5e13},
            f"data.x_std = 15000000000000.0 is not allowed; expected {X_REACH} 1.2e+15",
        ),
        # ... y reaches |weight| · that + |bias| + the noise's reach, named by the largest part
        # (the first of weight, bias, noise_scale on a tie) ...
        (
            {"data.weight": 1e14},
            f"data.weight = 100000000000000.0 is not allowed; expected {Y_REACH} 4e+15)",
        ),
        (
            {"data.x_dist": "uniform", "data.x_max": 1e15, "data.weight": -2},
            f"data.weight = -2.0 is not allowed; expected {Y_REACH} 2e+15)",
        ),
        (
            {"data.x_dist": "linspace", "data.x_min": -1e15, "data.weight": 2},
            f"data.weight = 2.0 is not allowed; expected {Y_REACH} 2e+15)",
        ),
        (
            {"data.bias": -1e15, "data.weight": 1},
            f"data.bias = -1000000000000000.0 is not allowed; expected {Y_REACH} 1e+15)",
        ),
        (
            {**UNIT_X, "data.weight": 5e14, "data.bias": 5e14},
            f"data.weight = 500000000000000.0 is not allowed; expected {Y_REACH} 1e+15)",
        ),
        (
            {**UNIT_X, "data.bias": 6e14, "data.noise_dist": "randint", "data.noise_scale": 6e14},
            f"data.bias = 600000000000000.0 is not allowed; expected {Y_REACH} 1.2e+15)",
        ),
        (
            {"data.noise_scale": 1e14},
            f"data.noise_scale = 100000000000000.0 is not allowed; expected {Y_REACH} 4e+15)",
        ),
        (
            {"data.noise_dist": "randint", "data.noise_scale": 1e15},
            f"data.noise_scale = 1000000000000000.0 is not allowed; expected {Y_REACH} 1e+15)",
        ),
        # ... and the starting prediction init.weight · x + init.bias, where a null value counts
        # as 1, the largest that nn.Linear draws for it.
        (
            {"data.x_dist": "uniform", "init.weight": 1e15},
            f"init.weight = 1000000000000000.0 is not allowed; expected {START_REACH} 1e+16)",
        ),
        (
            {**UNIT_X, "init.weight": -1e15, "init.bias": 1},
            f"init.weight = -1000000000000000.0 is not allowed; expected {START_REACH} 1e+15)",
        ),
        (
            {"init.bias": 1e15},
            f"init.bias = 1000000000000000.0 is not allowed; expected {START_REACH} 1e+15)",
        ),
        (
            {**UNIT_X, "init.weight": 6e14, "init.bias": -6e14},
            f"init.weight = 600000000000000.0 is not allowed; expected {START_REACH} 1.2e+15)",
        ),
        (
            {**UNIT_X, "init.weight": 2, "init.bias": -1e15},
            f"init.bias = -1000000000000000.0 is not allowed; expected {START_REACH} 1e+15)",
        ),
        (
            {**UNIT_X, "init.weight": None, "init.bias": -1e15},
            f"init.bias = -1000000000000000.0 is not allowed; expected {START_REACH} 1e+15)",
        ),
    ],
)
def test_params_that_would_take_x_or_y_beyond_float32_are_refused_naming_the_key(
    overrides, message
):
    assert refusal(**overrides) == message


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


COMMITTED = (ROOT / "params.yaml").read_text()


def committed_params_with(old: str, new: str) -> str:
    assert COMMITTED.count(old) == 1
    return COMMITTED.replace(old, new)


def load_refusal(tmp_path, text: str) -> str:
    """The message with which load_params refuses a params file of this text."""
    path = write_params(tmp_path, text)
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    return str(caught.value)


LONG_KEY = "k" * 61  # shown cut to 60 characters, the last an ellipsis


@pytest.mark.parametrize(
    ("text", "key", "first", "again"),
    [
        (committed_params_with("lr: 0.05", "lr: 0.05\nlr: 0.1"), "lr", 2, 3),
        (committed_params_with("  bias: 0.5 ", "  bias: 0.5\n  bias: 0.7 "), "data.bias", 16, 17),
        (committed_params_with("seed: 42 ", "seed: {a: 1, a: 2} "), "seed.a", 1, 1),
        # An alias repeats a value, checked once; the mappings after it are still checked.
        ("a: &one 1\nb: *one\nc:\n  lr: 1\n  lr: 2\n", "c.lr", 4, 5),
        (f"{'k' * 60}: 1\n{'k' * 60}: 2\n", "k" * 60, 1, 2),
        (f"{LONG_KEY}: 1\n{LONG_KEY}: 2\n", "k" * 59 + "…", 1, 2),
    ],
)
def test_a_duplicate_key_is_refused_in_one_line_naming_the_file_the_key_and_the_line(
    tmp_path, text, key, first, again
):
    assert load_refusal(tmp_path, text) == (
        f"{tmp_path / 'params.yaml'}: line {again}: duplicate key {key} (first on line {first}); "
        "each key may appear only once"
    )


def test_a_params_file_of_16_kib_is_read_and_one_byte_more_is_refused(tmp_path):
    padding = 16 * 1024 - len(COMMITTED.encode())  # a comment up to exactly 16 KiB
    assert load_params(write_params(tmp_path, COMMITTED + "#" * padding)).lr == 0.05
    assert load_refusal(tmp_path, COMMITTED + "#" * (padding + 1)) == (
        f"{tmp_path / 'params.yaml'}: the params file is over 16 KiB; this project's is about 1 KB"
    )


def test_a_params_path_that_never_ends_is_read_no_further_than_the_limit(tmp_path):
    # --params may name a pipe or a device that never ends. load_params reads 16 KiB and one
    # byte, refuses, and closes the pipe: the writer is cut off instead of having its whole
    # megabyte read.
    path = tmp_path / "params.yaml"
    with endless_pipe(path, b"#") as cut_off, pytest.raises(ParamsError) as caught:
        load_params(path)
    assert (
        str(caught.value) == f"{path}: the params file is over 16 KiB; this project's is about 1 KB"
    )
    assert cut_off == [True]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff\xfe" + COMMITTED.encode(), "not UTF-8 text (byte 0 cannot be decoded)"),
        (b"seed: 1\nlr: 0.0\xe5\n", "not UTF-8 text (byte 15 cannot be decoded)"),
        ("", "the top level must be a mapping of keys to values, not None"),
        ("- 1\n", "the top level must be a mapping of keys to values, not [1]"),
        # A key that is no string: YAML allows it, Python reads it as a tuple.
        (
            "? [1, 2]\n: 3\n" + COMMITTED,
            "unknown key (1, 2); allowed in the top level: data, epochs, init, lr, seed",
        ),
        (
            committed_params_with("x_dist: normal", "x_dist: " + "n" * 10_000),
            f"data.x_dist = '{'n' * 27}...{'n' * 28}' is not allowed; expected one of normal, "
            "linspace, uniform",
        ),
    ],
)
def test_an_odd_params_file_is_refused_in_one_short_line(tmp_path, text, message):
    assert load_refusal(tmp_path, text) == f"{tmp_path / 'params.yaml'}: {message}"


# Integers of more digits than Python converts to int (4,300 by default) are refused before
# they are read, naming the key and its line; up to that, they are numbers like any other.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            committed_params_with("lr: 0.05", "lr: " + "9" * 4300),
            "lr = <an integer of 4,300 digits> is not allowed; expected a finite number > 0",
        ),
        (
            committed_params_with("lr: 0.05", "lr: " + "9" * 4301),
            "line 2: lr is an integer of 4,301 digits; Python reads at most 4,300",
        ),
        (
            committed_params_with("seed: 42 ", "seed: [1, " + "9" * 5000 + "] "),
            "line 1: seed is an integer of 5,000 digits; Python reads at most 4,300",
        ),
        # An unknown key too, as written (a key that ends in X, a dot cut off the path).
        (
            committed_params_with("  x_max: 10.0 ", "  x_MAX: " + "9" * 5000 + " "),
            "line 19: data.x_MAX is an integer of 5,000 digits; Python reads at most 4,300",
        ),
        ("9" * 5000, "line 1: a value is an integer of 5,000 digits; Python reads at most 4,300"),
    ],
)
def test_an_integer_too_long_for_python_is_refused_naming_its_key_and_line(tmp_path, text, message):
    assert load_refusal(tmp_path, text) == f"{tmp_path / 'params.yaml'}: {message}"


def test_without_pythons_digit_limit_a_long_integer_is_read_as_a_number(tmp_path):
    # PYTHONINTMAXSTRDIGITS=0 lifts the limit; a params file (16 KiB at most) then holds no
    # integer too long to read.
    text = committed_params_with("lr: 0.05", "lr: " + "9" * 5000)
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        message = load_refusal(tmp_path, text)
    finally:
        sys.set_int_max_str_digits(limit)
    assert message == (
        f"{tmp_path / 'params.yaml'}: lr = <an integer of 5,000 digits> is not allowed; "
        "expected a finite number > 0"
    )


# Brackets are counted wherever they are, in comments and strings too: a params file has no
# reason for 33.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# " + "[" * 32 + "]" * 32 + "\n" + COMMITTED, None),
        ("# " + "{" * 16 + "[" * 16 + "]" * 16 + "}" * 16 + " [{}]\n" + COMMITTED, None),
        (
            "# " + "[" * 33 + "]" * 33 + "\n" + COMMITTED,
            "line 1: brackets nested more than 32 deep",
        ),
        # Each closing bracket counts one level down, and the line is counted from the top, first
        # line blank.
        (
            "\n# [] {} [1, [2]]\n# " + "[" * 33 + "\n" + COMMITTED,
            "line 3: brackets nested more than 32 deep",
        ),
        (
            committed_params_with("lr: 0.05", "lr: " + "[" * 40 + "]" * 40),
            "line 2: brackets nested more than 32 deep",
        ),
    ],
)
def test_brackets_nested_more_than_32_deep_are_refused_naming_the_line(tmp_path, text, message):
    path = write_params(tmp_path, text)
    if message is None:
        assert load_params(path).lr == 0.05
    else:
        assert load_refusal(tmp_path, text) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("seed: [1, 2\nlr: 0.1\n", "line 2: expected ',' or ']', but got ':'"),
        ("seed: 1\n  lr: 2\n", "line 2: mapping values are not allowed here"),
        ("seed: 'x\n", "line 2: found unexpected end of stream"),
        # Not tied to a line by ruamel: its own words, on one line.
        (
            "seed: 1\x01\n",
            "unacceptable character #x0001: special characters are not allowed in "
            '"<unicode string>", position 7',
        ),
        # ruamel's words are cut after 200 characters (here those of an alias's name).
        ("seed: *" + "a" * 176 + "\n", "line 1: found undefined alias '" + "a" * 176 + "'"),
        ("seed: *" + "a" * 177 + "\n", "line 1: found undefined alias '" + "a" * 176 + "…"),
    ],
)
def test_a_yaml_syntax_error_says_what_and_on_which_line(tmp_path, text, problem):
    assert load_refusal(tmp_path, text) == f"{tmp_path / 'params.yaml'}: not valid YAML ({problem})"


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


# Values that ruamel parses but then cannot build: its constructor raises plain Python errors,
# not YAMLErrors (found by the mutation run's review; they used to end in a traceback).
UNBUILDABLE = [
    ("seed: 2001-02-30", "ValueError: day is out of range for month"),  # a date, untagged
    ("seed: 2020-13-45", "ValueError: month must be in 1..12"),
    ("lr: !!float abc", "ValueError: could not convert string to float: 'abc'"),
    ("seed: !!int 1e3", "ValueError: invalid literal for int() with base 10: '1e3'"),
    ("lr: !!bool x", "KeyError: 'x'"),
    ("seed: !!int ''", "IndexError: string index out of range"),
    ("seed: !!omap [{a: 1}, {a: 2}]", "AssertionError"),
    (
        "%YAML 1.3\n---\nseed: 1",
        "AssertionError: version minor part can only be 2 or 1, got (1, 3)",
    ),
]
UNBUILDABLE_RULE = (
    "write numbers and words as they are, without YAML tags (!!), dates or directives (%)"
)


@pytest.mark.parametrize(("text", "found"), UNBUILDABLE)
def test_a_value_yaml_cannot_build_is_refused_in_one_line(tmp_path, text, found):
    assert load_refusal(tmp_path, text + "\n") == (
        f"{tmp_path / 'params.yaml'}: a value cannot be read ({found}); {UNBUILDABLE_RULE}"
    )


HOSTILE = [
    # The 1.7 KB file: seed is a list of 10^9 numbers through nested aliases.
    (
        committed_params_with("seed: 42 ", f"seed: {nested_aliases(9, 10)} "),
        "seed = [[1, 1, 1, 1, ...], [[...], [...], [...], [...], ...], [[...], [...], [...], "
        "[...], ...], [[...], [...], [...], [...], ...], ...] is not allowed; expected "
        f"{SEED_RULE}",
    ),
    # A list that holds itself.
    (
        committed_params_with("seed: 42 ", "seed: &s [*s] "),
        f"seed = [[[...]]] is not allowed; expected {SEED_RULE}",
    ),
    (merged_mappings(24) + COMMITTED, "line 2: merge keys (<<) are not allowed"),
    (
        committed_params_with("lr: 0.05", "lr: " + "[" * 7000 + "]" * 7000),
        "line 2: brackets nested more than 32 deep",
    ),
    (
        committed_params_with("lr: 0.05", "lr:\n" + "- " * 7000 + "1"),
        "the YAML is nested too deeply",
    ),
    (
        committed_params_with("lr: 0.05", "lr:\n" + "  - " * 2000 + "1"),
        "the YAML is nested too deeply",
    ),
    # Values ruamel parses but cannot build (UNBUILDABLE), here as a stage would meet them.
    (
        committed_params_with("lr: 0.05", "lr: !!float abc"),
        "a value cannot be read (ValueError: could not convert string to float: 'abc'); "
        + UNBUILDABLE_RULE,
    ),
    (
        committed_params_with("seed: 42 ", "seed: 2001-02-30 "),
        f"a value cannot be read (ValueError: day is out of range for month); {UNBUILDABLE_RULE}",
    ),
]


@pytest.mark.parametrize(("text", "message"), HOSTILE)
def test_a_hostile_params_file_is_refused_in_one_short_line(tmp_path, text, message):
    # Before the checks, the first two took minutes and gigabytes or never ended, the merge keys
    # made any YAML reader merge 2^24 key-value pairs, the pure-Python parser took minutes on the
    # brackets, and deep nesting ended in a RecursionError.
    assert len(text.encode()) < 16 * 1024
    assert load_refusal(tmp_path, text) == f"{tmp_path / 'params.yaml'}: {message}"


@pytest.mark.parametrize(("text", "message"), HOSTILE)
def test_a_hostile_params_file_stops_a_stage_at_once_with_one_short_line(tmp_path, text, message):
    path = write_params(tmp_path, text)
    # A timeout, not a timing: the stage as a process, where a crash or a traceback would show.
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
    assert result.stderr == f"error: {path}: {message}\n"
