"""Read gates.yaml and check each gate against the workspace's metrics and the base's; used by
`python -m stages.report --check`, not a DVC stage.

A gate names one metric as FILE:KEY, a one-line description and exactly one bound:
- an absolute bound: `max` or `min` (value ≤ max, value ≥ min);
- a required value: `equals` (true, false, a number, a text or null);
- a bound on the change against the base: `max_increase` or `max_decrease` (new - base ≤ d,
  base - new ≤ d), or `max_relative_increase` or `max_relative_decrease`, as a fraction of
  |base| (0.05 = 5%). A metric the base does not have passes a change bound, and says so.
These are MLflow's MetricThreshold and TFMA's value and change thresholds, with the direction in
the name instead of a greater_is_better flag.
"""

import math
import reprlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.error import YAMLError

from stages.cli import UserError
from stages.params import parse_yaml

ABSOLUTE = ("max", "min")
CHANGE = ("max_increase", "max_decrease")
RELATIVE = ("max_relative_increase", "max_relative_decrease")
BOUNDS = ("equals", *ABSOLUTE, *CHANGE, *RELATIVE)
FIELDS = ("metric", "description")
VALUE_TYPES = "true, false, a number, a text or null"

# Values in messages are cut short: a YAML alias bomb must not make the error message huge.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = _short.maxdict = 3
_short.maxlevel = 1


class GatesError(UserError):
    pass


@dataclass(frozen=True)
class Gate:
    path: str  # the metrics file, as dvc.yaml declares it
    key: str  # the key inside it; nested keys joined with dots, as dvc prints them
    description: str
    bound: str  # one of BOUNDS
    limit: Any  # the bound's number, or the required value of `equals`

    @property
    def metric(self) -> str:
        return f"{self.path}:{self.key}"

    @property
    def against_base(self) -> bool:
        return self.bound in CHANGE + RELATIVE


@dataclass(frozen=True)
class Outcome:
    gate: Gate
    value: Any  # in the workspace
    base: Any  # at the base revision; None when the base has no value, or the gate needs none
    passed: bool
    new_metric: bool = False  # a change gate that passed because the base has no value


def metrics_files(pipeline: dict) -> list[str]:
    """The metrics files that dvc.yaml declares, in its stages or at its top level."""
    entries = [
        entry
        for stage in (pipeline.get("stages") or {}).values()
        for entry in stage.get("metrics", [])
    ]
    entries += pipeline.get("metrics") or []
    files = []
    for entry in entries:
        files += list(entry) if isinstance(entry, dict) else [entry]
    return sorted(set(files))


def load_gates(path: Path, declared: list[str]) -> list[Gate]:
    """Read and validate a gates file; raise GatesError naming the gate on the first problem."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise GatesError(f"{path}: cannot read the gates file ({error.strerror})") from None
    try:
        raw = parse_yaml(text)
    except YAMLError as error:
        problem = " ".join(str(error).split())
        raise GatesError(f"{path}: not valid YAML ({_short.repr(problem)[1:-1]})") from None
    try:
        return parse_gates(raw, declared)
    except GatesError as error:
        raise GatesError(f"{path}: {error}") from None


def parse_gates(raw: Any, declared: list[str]) -> list[Gate]:
    if not isinstance(raw, list):
        raise GatesError(
            f"expected a list of gates, each with metric, description and one bound, "
            f"not {_short.repr(raw)}"
        )
    return [_parse_gate(number, entry, declared) for number, entry in enumerate(raw, start=1)]


def _parse_gate(number: int, entry: Any, declared: list[str]) -> Gate:
    where = f"gate {number}"
    if not isinstance(entry, dict):
        raise GatesError(
            f"{where}: expected a mapping with metric, description and one bound, "
            f"not {_short.repr(entry)}"
        )
    metric = entry.get("metric")
    if not isinstance(metric, str) or ":" not in metric:
        raise GatesError(
            f"{where}: metric = {_short.repr(metric)} is not allowed; "
            f"expected FILE:KEY, for example metrics/module.json:test_mse"
        )
    where = f"gate {number} ({_short.repr(metric)[1:-1]})"
    path = next((f for f in declared if metric.startswith(f + ":")), None)
    if path is None:
        raise GatesError(
            f"{where}: {metric.partition(':')[0]} is not a metrics file of dvc.yaml; "
            f"declared: {', '.join(declared) or 'none'}"
        )
    key = metric[len(path) + 1 :]

    unknown = sorted(str(k) for k in entry if k not in FIELDS + BOUNDS)
    if unknown:
        raise GatesError(
            f"{where}: unknown field {_short.repr(unknown[0])[1:-1]}; allowed: "
            f"{', '.join(FIELDS)} and one bound of {', '.join(BOUNDS)}"
        )
    description = entry.get("description")
    if not isinstance(description, str) or not description.strip() or "\n" in description.strip():
        raise GatesError(
            f"{where}: description = {_short.repr(description)} is not allowed; "
            f"expected a one-line text saying what the gate checks"
        )
    bounds = [name for name in BOUNDS if name in entry]
    if len(bounds) != 1:
        given = f"{len(bounds)} ({', '.join(bounds)})" if bounds else "none"
        raise GatesError(f"{where}: has {given} bounds; give exactly one of {', '.join(BOUNDS)}")
    bound = bounds[0]
    limit = entry[bound]
    if bound == "equals":
        if not (limit is None or isinstance(limit, bool | str) or _is_finite(limit)):
            raise GatesError(
                f"{where}: equals = {_short.repr(limit)} is not allowed; expected {VALUE_TYPES}"
            )
    elif bound in ABSOLUTE:
        if not _is_finite(limit):
            raise GatesError(
                f"{where}: {bound} = {_short.repr(limit)} is not allowed; expected a finite number"
            )
    elif not _is_finite(limit) or limit < 0:
        what = "a fraction of the base ≥ 0 (0.05 = 5%)" if bound in RELATIVE else "a number ≥ 0"
        raise GatesError(f"{where}: {bound} = {_short.repr(limit)} is not allowed; expected {what}")
    return Gate(path, key, description.strip(), bound, limit)


def read_metrics(path: str) -> dict[str, Any]:
    """A metrics file's values with nested keys joined by dots, as `dvc metrics show` names them."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise GatesError(
            f"{path}: cannot read the metrics file ({error.strerror}); run `dvc repro` first"
        ) from None
    try:
        raw = tomllib.loads(text) if path.endswith(".toml") else parse_yaml(text)
    except (YAMLError, tomllib.TOMLDecodeError):
        raise GatesError(f"{path}: not a valid metrics file (JSON, YAML or TOML)") from None
    if not isinstance(raw, dict):
        raise GatesError(f"{path}: expected a mapping of metric names to values")
    return _flatten(raw)


def _flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_against(gates: list[Gate], workspace: dict[str, dict[str, Any]]) -> None:
    """Each gate's key exists in the workspace's metrics file, and a numeric bound names a
    number (or a null, which then fails the gate) rather than a flag or a text."""
    for number, gate in enumerate(gates, start=1):
        where = f"gate {number} ({gate.metric})"
        values = workspace[gate.path]
        if gate.key not in values:
            keys = sorted(values)
            shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
            raise GatesError(f"{where}: {gate.path} has no key {gate.key}; keys: {shown}")
        value = values[gate.key]
        if gate.bound != "equals" and value is not None and not _is_number(value):
            raise GatesError(
                f"{where}: {gate.bound} needs a number, but {gate.metric} is "
                f"{_short.repr(value)}; use equals for a flag or a text"
            )


def evaluate(gate: Gate, value: Any, base: Any = None) -> Outcome:
    """Whether `value` (the workspace's) meets the gate; `base` matters only for change bounds."""
    if gate.bound == "equals":
        # Strict about types: `equals: false` is not met by 0, nor `equals: 1` by true.
        same_kind = isinstance(value, bool) == isinstance(gate.limit, bool)
        return Outcome(gate, value, None, same_kind and value == gate.limit)
    if not _is_number(value):  # null in the workspace: nothing shows that the bound holds
        return Outcome(gate, value, base if gate.against_base else None, False)
    if gate.bound == "max":
        return Outcome(gate, value, None, value <= gate.limit)
    if gate.bound == "min":
        return Outcome(gate, value, None, value >= gate.limit)
    if not _is_number(base):
        return Outcome(gate, value, base, passed=base is None, new_metric=base is None)
    allowed = gate.limit * abs(base) if gate.bound in RELATIVE else gate.limit
    # Against the bound's value, base ± allowed, rather than the change against `allowed`: then
    # 1.05 meets "at most 5% above 1.0" (1.05 - 1.0 is 0.050000000000000044 in floats).
    if gate.bound.endswith("increase"):
        return Outcome(gate, value, base, value <= base + allowed)  # False for a NaN
    return Outcome(gate, value, base, value >= base - allowed)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)
