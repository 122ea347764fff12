"""Read params.yaml and check every value, so that a stage fails before it writes anything."""

import math
import re
import reprlib
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from stages.cli import UserError

X_DISTS = ("normal", "linspace", "uniform")
NOISE_DISTS = ("normal", "randint")

# The documented limits (README, Parameters). Beyond them a run is not slow but endless, or its
# numbers stop being numbers.
MAX_SEED = 2**63 - 1  # numpy's SeedSequence and torch.manual_seed take any int64
# One history row per epoch goes into git: 10^6 epochs are a 40 MB CSV, and hours at n = 10^7.
MAX_EPOCHS = 10**6
# 10^12 rows are 8 TB of Parquet; the scale-out work projects 10^10. Row counts stay far below
# 2^53, so every count and fraction of one is exact in float64.
MAX_SAMPLES = 10**12
# Every x, every y and the starting prediction stay within ±1e15. Training squares the errors in
# float32, whose largest value is 3.4e38, and adds up to 2^16 of them in a chunk: errors up to
# 7e16 keep that sum finite, and 1e15 leaves room for the noise and the starting point.
MAX_VALUE = 1e15
LIMIT_TEXT = "1e15"
# Normal x and noise count as reaching 40 standard deviations: a draw beyond that has probability
# below 1e-300 (numpy's sampler cannot even return one beyond 14).
NORMAL_REACH = 40
# The largest params file read (the project's own is 1.5 KB), and the deepest brackets in it.
# ruamel's pure-Python parser (see parse_yaml) reads 16 KiB of any YAML in about 0.3 s.
MAX_PARAMS_BYTES = 16 * 1024
MAX_FLOW_DEPTH = 32


class ParamsError(UserError):
    pass


class YAMLRefused(YAMLError):
    """Valid YAML that parse_yaml refuses to build (see there): a YAMLError, so that every reader
    of YAML files reports it as it reports a syntax error."""


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
    """Rows in the test set: n·fraction rounded half up (1000 · 0.25 → 250, 10 · 0.25 → 3).

    The product is taken exactly, on the fraction as written (its shortest decimal): in float
    arithmetic 50 · 0.29 is 14.499999999999998, which would round to 14 instead of 15.
    """
    return math.floor(Fraction(repr(test_fraction)) * n_samples + Fraction(1, 2))


def load_params(path: Path) -> Params:
    """Read and validate a params file; raise ParamsError naming the key on the first problem."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PARAMS_BYTES + 1)
    except OSError as error:
        raise ParamsError(f"{path}: cannot read the params file ({error.strerror})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(
            f"{path}: the params file is over {MAX_PARAMS_BYTES // 1024} KiB; "
            "this project's is about 1 KB"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {error.start} cannot be decoded)"
        ) from None
    try:
        raw = parse_yaml(text)
    except YAMLRefused as error:
        raise ParamsError(f"{path}: {error}") from None
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({_yaml_problem(error)})") from None
    try:
        return parse_params(raw)
    except ParamsError as error:
        raise ParamsError(f"{path}: {error}") from None


def parse_yaml(text: str) -> Any:
    """Parse YAML as DVC itself does (ruamel.yaml, YAML 1.2), so that a stage reads every value
    as `dvc params diff` shows it. PyYAML follows YAML 1.1, where `1e-06`, which DVC writes for
    `-S lr=0.000001`, is a string, not a number (treeverse/dvc#5971).

    What would make parsing slow or crash is refused first, with YAMLRefused naming the line:
    brackets nested deeper than MAX_FLOW_DEPTH (YAML scanners take time quadratic in that depth:
    seconds at 1000), and then, on the parsed nodes before anything is built, what _check_nodes
    refuses. The parser is ruamel's pure-Python one: on block nesting thousands deep, the C one
    crashes the process, while this one raises RecursionError, reported here in one line.
    """
    _check_flow_depth(text)
    yaml = YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
        _check_nodes(node)
        return yaml.constructor.construct_document(node) if node is not None else None
    except RecursionError:
        raise YAMLRefused("the YAML is nested too deeply") from None
    except (ValueError, KeyError, IndexError, AssertionError, TypeError) as error:
        # ruamel builds tagged values (!!float abc, !!bool x), dates (2001-02-30) and the
        # %YAML directive with plain Python calls, whose errors are not YAMLErrors.
        problem = _shorter(" ".join(str(error).split()))
        found = f"{type(error).__name__}: {problem}" if problem else type(error).__name__
        raise YAMLRefused(
            f"a value cannot be read ({found}); write numbers and words as they are, without "
            "YAML tags (!!), dates or directives (%)"
        ) from None


def _check_flow_depth(text: str) -> None:
    # Counts every bracket, in strings and comments too: a params file has no reason for 32.
    depth = 0
    for bracket in re.finditer(r"[\[{\]}]", text):
        depth += 1 if bracket[0] in "[{" else -1
        if depth > MAX_FLOW_DEPTH:
            line = text.count("\n", 0, bracket.start()) + 1
            raise YAMLRefused(f"line {line}: brackets nested more than {MAX_FLOW_DEPTH} deep")


_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_TAG = "tag:yaml.org,2002:int"


def _check_nodes(root: Node | None) -> None:
    """Refuse what YAML allows but a params file never needs, and what would make loading slow
    or fail: a key given twice (YAML leaves it to the reader; ruamel refuses it less clearly); a
    merge key `<<`, with which a file of 1 KB builds mappings of millions of keys; an integer of
    more digits than Python converts. Each node is visited once, however often aliases repeat it.
    """
    seen: set[int] = set()
    stack: list[tuple[Node | None, str]] = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            first_lines: dict[tuple[str, str], int] = {}
            children = []
            for key, value in node.value:
                line = key.start_mark.line + 1
                if key.tag == _MERGE_TAG:
                    raise YAMLRefused(f"line {line}: merge keys (<<) are not allowed")
                if isinstance(key, ScalarNode):
                    name = prefix + _shorter(key.value, 60)
                    if (key.tag, key.value) in first_lines:
                        raise YAMLRefused(
                            f"line {line}: duplicate key {name} (first on line "
                            f"{first_lines[key.tag, key.value]}); each key may appear only once"
                        )
                    first_lines[key.tag, key.value] = line
                    children.append((value, name + "."))
                else:
                    children.extend([(key, prefix), (value, prefix)])
            stack.extend(reversed(children))  # so that the walk goes in the file's order
        elif isinstance(node, SequenceNode):
            stack.extend((item, prefix) for item in reversed(node.value))
        elif node.tag == _INT_TAG and len(node.value) > (sys.get_int_max_str_digits() or 10**9):
            raise YAMLRefused(
                f"line {node.start_mark.line + 1}: {prefix.rstrip('.') or 'a value'} is an "
                f"integer of {len(node.value):,} digits; Python reads at most "
                f"{sys.get_int_max_str_digits():,}"
            )


def _yaml_problem(error: YAMLError) -> str:
    """ruamel's message in one line: what is wrong and on which line."""
    if isinstance(error, MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        return where + _shorter(" ".join(error.problem.split()))
    return _shorter(" ".join(str(error).split()))


def parse_params(raw: Any) -> Params:
    """Validate the parsed YAML of a params file and return typed values."""
    top = _section(raw, "", {"seed", "lr", "epochs", "init", "data"})
    init = _section(top["init"], "init.", {"weight", "bias"})
    data_keys = {f.name for f in DataParams.__dataclass_fields__.values()}
    data = _section(top["data"], "data.", data_keys)

    n_samples = _integer("data.n_samples", data["n_samples"], minimum=2, maximum=MAX_SAMPLES)
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
    x_min = _number("data.x_min", data["x_min"], limit=True)
    x_max = _number("data.x_max", data["x_max"], limit=True)
    if x_min >= x_max:
        _fail("data.x_max", data["x_max"], f"a number greater than data.x_min = {x_min}")
    noise_dist = _choice("data.noise_dist", data["noise_dist"], NOISE_DISTS)
    noise_scale = _number("data.noise_scale", data["noise_scale"], positive=True, limit=True)
    if noise_dist == "randint" and not noise_scale.is_integer():
        _fail("data.noise_scale", noise_scale, "a whole number > 0 when data.noise_dist is randint")
    data_params = DataParams(
        n_samples=n_samples,
        test_fraction=test_fraction,
        weight=_number("data.weight", data["weight"], limit=True),
        bias=_number("data.bias", data["bias"], limit=True),
        x_dist=_choice("data.x_dist", data["x_dist"], X_DISTS),
        x_min=x_min,
        x_max=x_max,
        x_mean=_number("data.x_mean", data["x_mean"], limit=True),
        x_std=_number("data.x_std", data["x_std"], positive=True, limit=True),
        noise_dist=noise_dist,
        noise_scale=noise_scale,
    )
    x_reach = _check_data_range(data_params)

    params = Params(
        seed=_integer("seed", top["seed"], minimum=0, maximum=MAX_SEED),
        lr=_number("lr", top["lr"], positive=True),
        epochs=_integer("epochs", top["epochs"], minimum=1, maximum=MAX_EPOCHS),
        init_weight=_optional_number("init.weight", init["weight"]),
        init_bias=_optional_number("init.bias", init["bias"]),
        data=data_params,
    )
    _check_start(params, x_reach)
    return params


def _check_data_range(data: DataParams) -> float:
    """Check that every x and y generate can draw stays within ±MAX_VALUE, so that it never
    writes an infinite value; name the key that takes it out. Return how far x reaches."""
    if data.x_dist == "normal":
        x_reach = abs(data.x_mean) + NORMAL_REACH * data.x_std
        if x_reach > MAX_VALUE:
            key = "x_std" if NORMAL_REACH * data.x_std >= abs(data.x_mean) else "x_mean"
            _fail(
                f"data.{key}",
                getattr(data, key),
                f"a value that keeps x within ±{LIMIT_TEXT}: data.x_mean ± "
                f"{NORMAL_REACH} · data.x_std reaches {x_reach:.3g}",
            )
    else:
        x_reach = max(abs(data.x_min), abs(data.x_max))
    noise_reach = data.noise_scale * (NORMAL_REACH if data.noise_dist == "normal" else 1)
    terms = {
        "weight": abs(data.weight) * x_reach,
        "bias": abs(data.bias),
        "noise_scale": noise_reach,
    }
    y_reach = sum(terms.values())
    if y_reach > MAX_VALUE:
        key = max(terms, key=terms.__getitem__)
        _fail(
            f"data.{key}",
            getattr(data, key),
            f"a value that keeps y = weight·x + bias + noise within ±{LIMIT_TEXT} "
            f"(with these data params it reaches {y_reach:.3g})",
        )
    return x_reach


def _check_start(params: Params, x_reach: float) -> None:
    """Check that the starting prediction init.weight·x + init.bias stays within ±MAX_VALUE,
    and name the given init value that takes it out (a null one is drawn in [-1, 1])."""
    weight, bias = params.init_weight, params.init_bias
    shares = {
        "init.weight": (abs(weight) * x_reach if weight is not None else x_reach, weight),
        "init.bias": (abs(bias) if bias is not None else 1.0, bias),
    }
    reach = sum(share for share, _ in shares.values())
    given = {key: share for key, (share, value) in shares.items() if value is not None}
    if reach > MAX_VALUE and given:
        key = max(given, key=given.__getitem__)
        _fail(
            key,
            shares[key][1],
            f"a value that keeps the starting prediction init.weight·x + init.bias within "
            f"±{LIMIT_TEXT} (here it reaches {reach:.3g})",
        )


class _ShortRepr(reprlib.Repr):
    """reprlib's shortened repr, which also handles integers of any size: repr() of a
    400-digit integer is 400 characters, and above 4300 digits it raises."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 64:
            return repr(x)
        # A number of b bits has this many digits, or one more.
        digits = math.floor((x.bit_length() - 1) * math.log10(2)) + 1
        digits += abs(x) >= 10**digits
        return f"<an integer of {digits:,} digits>"


_SHORT = _ShortRepr()
# Few items, two levels and short strings: the message stays one short line, and building it
# touches a few dozen objects however large or nested (through YAML aliases) the value is.
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


def _shown(value: Any) -> str:
    """A value as error messages show it: its repr, shortened (strings keep their quotes)."""
    return _SHORT.repr(value)


def _shorter(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ParamsError(f"{key} = {_shown(value)} is not allowed; expected {allowed}")


def _section(raw: Any, prefix: str, keys: set[str]) -> dict[str, Any]:
    name = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{name} must be a mapping of keys to values, not {_shown(raw)}")
    unknown = sorted(_shown(k) if not isinstance(k, str) else k[:60] for k in raw.keys() - keys)
    if unknown:
        raise ParamsError(
            f"unknown key {prefix}{unknown[0]}; allowed in {name}: {', '.join(sorted(keys))}"
        )
    missing = sorted(keys - raw.keys())
    if missing:
        raise ParamsError(f"missing key {prefix}{missing[0]}")
    return raw


def _number(key: str, value: Any, *, positive: bool = False, limit: bool = False) -> float:
    """A finite number (> 0 if `positive`; within ±MAX_VALUE if `limit`)."""
    if positive:
        allowed = "a finite number > 0" + (f" and ≤ {LIMIT_TEXT}" if limit else "")
    else:
        allowed = f"a number from -{LIMIT_TEXT} to {LIMIT_TEXT}" if limit else "a finite number"
    # bool is a subclass of int in Python, but `lr: true` is a typo, not the number 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(key, value, allowed)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64's range (about 10^308)
        _fail(key, value, allowed)
    if not math.isfinite(number) or (positive and number <= 0):
        _fail(key, value, allowed)
    if limit and abs(number) > MAX_VALUE:
        _fail(key, value, allowed)
    return number


def _optional_number(key: str, value: Any) -> float | None:
    if value is None:
        return None
    allowed = (
        f"a number from -{LIMIT_TEXT} to {LIMIT_TEXT}, or null for nn.Linear's random "
        "initialisation"
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(key, value, allowed)
    try:
        number = float(value)
    except OverflowError:
        _fail(key, value, allowed)
    if not math.isfinite(number) or abs(number) > MAX_VALUE:
        _fail(key, value, allowed)
    return number


def _integer(key: str, value: Any, *, minimum: int, maximum: int) -> int:
    allowed = f"a whole number ≥ {minimum} and ≤ {maximum:,}"
    number = value
    # A whole float is that number: people write large counts as 1e8, which YAML reads as a float.
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        _fail(key, value, allowed)
    if not minimum <= number <= maximum:
        _fail(key, value, allowed)
    return number


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(key, value, "one of " + ", ".join(choices))
    return value
