"""Gates: gates.yaml's schema, each bound against hand-picked values, and `stages.report --check`
end to end, on real git and dvc."""

import json
import math
import re
import sys
from pathlib import Path

import pytest
import yaml

from stages.gates import (
    BOUNDS,
    Gate,
    GatesError,
    check_against,
    evaluate,
    load_gates,
    metrics_files,
    parse_gates,
    read_metrics,
)
from stages.params import parse_yaml
from tests.conftest import ROOT, sh

DECLARED = [
    "metrics/comparison.json",
    "metrics/dynamics.json",
    "metrics/manual.json",
    "metrics/module.json",
]


def gate(bound: str, limit: object, key: str = "test_mse") -> Gate:
    return Gate("metrics/module.json", key, "a gate", bound, limit)


def committed_metrics(root: Path = ROOT) -> dict[str, dict]:
    return {path: json.loads((root / path).read_text()) for path in DECLARED}


# --- the schema ---------------------------------------------------------------------------


def test_metrics_files_are_the_ones_dvc_yaml_declares():
    assert metrics_files(yaml.safe_load((ROOT / "dvc.yaml").read_text())) == DECLARED
    pipeline = {
        "stages": {"a": {"metrics": ["m/a.json", {"m/b.json": {"cache": False}}]}, "b": {}},
        "metrics": ["m/top.yaml"],
    }
    assert metrics_files(pipeline) == ["m/a.json", "m/b.json", "m/top.yaml"]


def test_the_shipped_gates_cover_what_the_issue_asks_for():
    gates = load_gates(ROOT / "gates.yaml", DECLARED)
    by_metric = {g.metric: (g.bound, g.limit) for g in gates}
    assert by_metric == {
        "metrics/module.json:diverged": ("equals", False),
        "metrics/manual.json:diverged": ("equals", False),
        "metrics/comparison.json:weight_diff": ("max", 1e-5),
        "metrics/comparison.json:bias_diff": ("max", 1e-5),
        "metrics/comparison.json:train_mse_diff": ("max", 1e-5),
        "metrics/comparison.json:test_mse_diff": ("max", 1e-5),
        "metrics/module.json:train_mse_ols_ratio": ("max", 1.01),
        "metrics/manual.json:train_mse_ols_ratio": ("max", 1.01),
        "metrics/module.json:test_mse": ("max_relative_increase", 0.05),
        "metrics/manual.json:test_mse": ("max_relative_increase", 0.05),
    }
    assert all(g.description and "\n" not in g.description for g in gates)


def test_the_shipped_gates_pass_on_the_committed_results():
    workspace = committed_metrics()
    gates = load_gates(ROOT / "gates.yaml", DECLARED)
    check_against(gates, workspace)
    # The committed results against themselves: no change, every absolute bound as on main.
    outcomes = [evaluate(g, workspace[g.path][g.key], workspace[g.path][g.key]) for g in gates]
    assert [o.gate.metric for o in outcomes if not o.passed] == []


def test_the_schema_in_the_gates_file_comment_lists_every_bound():
    comment = "\n".join(
        line for line in (ROOT / "gates.yaml").read_text().splitlines() if line.startswith("#")
    )
    for bound in BOUNDS:
        assert re.search(rf"\b{bound}:", comment), bound


GOOD = {"metric": "metrics/module.json:test_mse", "description": "test MSE", "max": 2}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "expected a list of gates"),
        ({"metric": "x"}, "expected a list of gates"),
        (["max: 1"], "gate 1: expected a mapping"),
        ([GOOD, {**GOOD, "metric": "test_mse"}], "gate 2: metric = 'test_mse' is not allowed; "),
        ([{**GOOD, "metric": 3}], "expected FILE:KEY"),
        (
            [{**GOOD, "metric": "metrics/modul.json:test_mse"}],
            "gate 1 (metrics/modul.json:test_mse): metrics/modul.json is not a metrics file of "
            "dvc.yaml; declared: metrics/comparison.json, metrics/dynamics.json, "
            "metrics/manual.json, metrics/module.json",
        ),
        (
            [{**GOOD, "max_increse": 1}],
            "gate 1 (metrics/module.json:test_mse): unknown field max_increse; allowed: metric, "
            "description and one bound of equals, max, min, max_increase, max_decrease, "
            "max_relative_increase, max_relative_decrease",
        ),
        ([{k: v for k, v in GOOD.items() if k != "description"}], "description = None"),
        ([{**GOOD, "description": "two\nlines"}], "expected a one-line text"),
        ([{**GOOD, "description": "  "}], "expected a one-line text"),
        ([{**GOOD, "min": 1}], "has 2 (max, min) bounds; give exactly one of equals, max"),
        ([{k: v for k, v in GOOD.items() if k != "max"}], "has none bounds; give exactly one"),
        ([{**GOOD, "max": "1.01"}], "max = '1.01' is not allowed; expected a finite number"),
        ([{**GOOD, "max": True}], "max = True is not allowed; expected a finite number"),
        ([{**GOOD, "max": math.inf}], "max = inf is not allowed"),
        ([{**GOOD, "max": math.nan}], "max = nan is not allowed"),
        ([{**GOOD, "max": [1]}], "max = [1] is not allowed"),
        (
            [{"metric": GOOD["metric"], "description": "d", "max_increase": -1}],
            "max_increase = -1 is not allowed; expected a number ≥ 0",
        ),
        (
            [{"metric": GOOD["metric"], "description": "d", "max_relative_decrease": "5%"}],
            "max_relative_decrease = '5%' is not allowed; expected a fraction of the base ≥ 0 "
            "(0.05 = 5%)",
        ),
        (
            [{"metric": GOOD["metric"], "description": "d", "equals": {"a": 1}}],
            "equals = {'a': 1} is not allowed; expected true, false, a number, a text or null",
        ),
    ],
)
def test_a_bad_gate_is_refused_naming_it_and_what_is_allowed(raw, message):
    with pytest.raises(GatesError) as caught:
        parse_gates(raw, DECLARED)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_huge_value_is_cut_short_in_the_message():
    # Nested aliases: a few lines of YAML that stand for a list of 10^8 numbers.
    text = "a: &a [0,0,0,0,0,0,0,0,0,0]\n"
    for name, previous in zip("bcdefgh", "abcdefg", strict=True):
        text += f"{name}: &{name} [*{previous},*{previous},*{previous},*{previous},*{previous}]\n"
    text += "gates:\n  - metric: metrics/module.json:test_mse\n    description: d\n    max: *h\n"
    with pytest.raises(GatesError) as caught:
        parse_gates(parse_yaml(text)["gates"], DECLARED)
    assert str(caught.value) == (
        "gate 1 (metrics/module.json:test_mse): max = [[...], [...], [...], ...] is not allowed; "
        "expected a finite number"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- metric: a\n  - b\n", "gates.yaml: not valid YAML"),
        ("- {metric: a, metric: b}\n", "gates.yaml: not valid YAML"),  # a duplicate key
        ("", "gates.yaml: expected a list of gates"),
    ],
)
def test_a_gates_file_that_is_not_a_list_of_gates_is_one_line(tmp_path, text, message):
    (tmp_path / "gates.yaml").write_text(text)
    with pytest.raises(GatesError) as caught:
        load_gates(tmp_path / "gates.yaml", DECLARED)
    assert str(caught.value).replace(str(tmp_path) + "/", "").startswith(message)
    assert "\n" not in str(caught.value)


def test_a_missing_gates_file_says_so(tmp_path):
    with pytest.raises(GatesError, match=r"cannot read the gates file \(No such file"):
        load_gates(tmp_path / "gates.yaml", DECLARED)


def test_numbers_are_read_as_dvc_reads_yaml(tmp_path):
    # YAML 1.2: 1e-5 is a number (PyYAML, YAML 1.1, would read the text "1e-5").
    (tmp_path / "gates.yaml").write_text(
        "- metric: metrics/comparison.json:weight_diff\n  description: d\n  max: 1e-5\n"
    )
    assert load_gates(tmp_path / "gates.yaml", DECLARED)[0].limit == 0.00001


def test_a_gate_must_name_a_key_of_the_workspace_metrics():
    workspace = committed_metrics()
    gates = parse_gates([{**GOOD, "metric": "metrics/module.json:test_mes"}], DECLARED)
    with pytest.raises(GatesError) as caught:
        check_against(gates, workspace)
    assert str(caught.value) == (
        "gate 1 (metrics/module.json:test_mes): metrics/module.json has no key test_mes; keys: "
        "bias, bias_error, diverged, diverged_at_epoch, epochs, observed_rate, test_mse, test_r2, "
        "train_mse, train_mse_ols_ratio, weight, weight_error"
    )


def test_a_numeric_bound_on_a_flag_is_refused():
    gates = parse_gates([{**GOOD, "metric": "metrics/module.json:diverged"}], DECLARED)
    with pytest.raises(GatesError, match=r"max needs a number, but .* is False; use equals"):
        check_against(gates, committed_metrics())


def test_metrics_files_are_read_with_nested_keys_joined_as_dvc_names_them(tmp_path):
    (tmp_path / "m.json").write_text('{"a": {"b": 1.5, "c": {"d": null}}, "e": true}')
    (tmp_path / "m.toml").write_text("e = 2\n[a]\nb = 1.5\n")
    assert read_metrics(str(tmp_path / "m.json")) == {"a.b": 1.5, "a.c.d": None, "e": True}
    assert read_metrics(str(tmp_path / "m.toml")) == {"a.b": 1.5, "e": 2}
    with pytest.raises(GatesError, match=r"cannot read the metrics file .*run `dvc repro` first"):
        read_metrics(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GatesError, match="expected a mapping"):
        read_metrics(str(tmp_path / "bad.json"))


# --- each bound ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bound", "limit", "value", "base", "passed"),
    [
        ("max", 1.01, 1.01, None, True),  # bounds include their limit
        ("max", 1.01, 1.0100001, None, False),
        ("max", 1.01, -5, None, True),
        ("max", 1.01, None, None, False),  # null: nothing shows the bound holds
        ("max", 1.01, math.nan, None, False),
        ("max", 1.01, math.inf, None, False),
        ("min", 0.9, 0.9, None, True),
        ("min", 0.9, 0.89, None, False),
        ("max_increase", 0.5, 1.5, 1.0, True),
        ("max_increase", 0.5, 1.75, 1.0, False),
        ("max_increase", 0.5, -100, 1.0, True),  # a decrease is fine
        ("max_decrease", 0.5, 0.5, 1.0, True),
        ("max_decrease", 0.5, 0.25, 1.0, False),
        ("max_decrease", 0.5, 100, 1.0, True),
        ("max_relative_increase", 0.05, 1.05, 1.0, True),
        ("max_relative_increase", 0.05, 1.0625, 1.0, False),  # +6.25%
        ("max_relative_increase", 0.05, 0.5, 1.0, True),
        ("max_relative_increase", 0.05, -1.9, -2.0, True),  # 5% of |base| = 0.1
        ("max_relative_increase", 0.05, -1.8, -2.0, False),
        ("max_relative_increase", 0.05, 0.0, 0.0, True),  # from 0, any increase is too much
        ("max_relative_increase", 0.05, 0.001, 0.0, False),
        ("max_relative_decrease", 0.25, 3.0, 4.0, True),
        ("max_relative_decrease", 0.25, 2.9, 4.0, False),
        ("max_relative_increase", 0.05, None, 1.0, False),  # null now
        ("max_relative_increase", 0.05, 1.0, math.nan, False),
        ("max_increase", 0.5, 1.0, "text", False),
        ("equals", False, False, None, True),
        ("equals", False, True, None, False),
        ("equals", False, 0, None, False),  # a flag is not the number 0
        ("equals", 1, True, None, False),
        ("equals", 1, 1.0, None, True),
        ("equals", None, None, None, True),
        ("equals", None, 0, None, False),
        ("equals", "normal", "normal", None, True),
        ("equals", "normal", "uniform", None, False),
    ],
)
def test_each_bound_against_values_picked_by_hand(bound, limit, value, base, passed):
    outcome = evaluate(gate(bound, limit), value, base)
    assert outcome.passed is passed
    assert outcome.new_metric is False


@pytest.mark.parametrize("bound", ["max_increase", "max_relative_decrease"])
def test_a_metric_the_base_lacks_passes_a_change_gate_and_says_so(bound):
    outcome = evaluate(gate(bound, 0.01), 12.5, None)
    assert outcome.passed and outcome.new_metric
    assert outcome.value == 12.5 and outcome.base is None


def test_a_metric_the_base_lacks_still_fails_an_absolute_gate():
    outcome = evaluate(gate("max", 1.0), 12.5, None)
    assert not outcome.passed and not outcome.new_metric


# --- `python -m stages.report --check` end to end ------------------------------------------


def set_param(project: Path, key: str, value: object) -> None:
    """Set a top-level key of params.yaml in place, keeping its comment; fail if it is absent."""
    path = project / "params.yaml"
    text, count = re.subn(
        rf"^{key}: *\S+", f"{key}: {value}", path.read_text(), count=1, flags=re.MULTILINE
    )
    assert count == 1, key
    path.write_text(text)
    assert yaml.safe_load(text)[key] == value


def check(project: Path, *args: str):
    return sh(
        sys.executable, "-m", "stages.report", "--base", "main", "--check", "--out", "report.md",
        *args, cwd=project, check=False,
    )  # fmt: skip


def gate_rows(markdown: str) -> dict[str, list[str]]:
    """The gate table, by gate description: [metric, base, value, bound, result]."""
    section = markdown.split("### Gates", 1)[1].split("###", 1)[0]
    rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("|")]
    assert rows[0] == ["Gate", "Metric", "Base", "Value", "Bound", "Result"]
    return {row[0]: row[1:] for row in rows[2:]}


@pytest.mark.e2e
def test_a_branch_whose_training_diverges_fails_with_the_gate_named(project):
    sh("git", "switch", "-q", "-c", "diverge", cwd=project)
    set_param(project, "lr", 5)  # 100 times the default: the weight grows by 1e20 in ten epochs
    sh("dvc", "repro", cwd=project)
    sh("git", "commit", "-qam", "lr 5", cwd=project)

    result = check(project)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    # The log names each failed gate.
    assert "gate failed: module training does not diverge: metrics/module.json:diverged = " in (
        result.stderr
    )
    assert "gate failed: manual training does not diverge" in result.stderr
    # The report is written all the same, its gate table first, right after the title.
    markdown = (project / "report.md").read_text()
    assert markdown.splitlines()[:3] == ["## Pipeline results against `main`", "", "### Gates"]
    rows = gate_rows(markdown)
    for approach in ("module", "manual"):
        assert json.loads((project / f"metrics/{approach}.json").read_text())["diverged"] is True
        assert rows[f"{approach} training does not diverge"] == [
            f"metrics/{approach}.json:diverged",
            "—",
            "true",
            "= false",
            "❌ fail",
        ]
    failed = [name for name, row in rows.items() if row[-1] == "❌ fail"]
    assert re.search(rf"\n❌ {len(failed)} of {len(rows)} gates fail\.\n", markdown)
    assert len(result.stderr.strip().splitlines()) == len(failed)


@pytest.mark.e2e
def test_a_harmless_change_passes_and_a_new_metric_passes_its_change_gate(project):
    # The base lacks test_r2 in module.json, as if that metric were new on this branch.
    module_json = project / "metrics" / "module.json"
    metrics = json.loads(module_json.read_text())
    module_json.write_text(json.dumps({k: v for k, v in metrics.items() if k != "test_r2"}))
    sh("git", "commit", "-qam", "a base without test_r2", cwd=project)
    sh("git", "switch", "-q", "-c", "harmless", cwd=project)
    set_param(project, "lr", 0.06)  # a little faster: converges as well
    sh("dvc", "repro", cwd=project)
    gates = project / "gates.yaml"
    gates.write_text(
        gates.read_text()
        + "- metric: metrics/module.json:test_r2\n"
        + "  description: module test R² no more than 1% lower\n"
        + "  max_relative_decrease: 0.01\n"
    )
    sh("git", "commit", "-qam", "lr 0.06, and a gate on test_r2", cwd=project)

    result = check(project)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    markdown = (project / "report.md").read_text()
    rows = gate_rows(markdown)
    assert "\n✅ All 11 gates pass.\n" in markdown
    assert all(row[-1].startswith("✅ pass") for row in rows.values())
    r2 = json.loads(module_json.read_text())["test_r2"]
    metric, base, value, bound, result_cell = rows["module test R² no more than 1% lower"]
    assert (metric, base, bound) == (
        "metrics/module.json:test_r2",
        "none",
        "decrease ≤ 1% of base",
    )
    assert float(value) == pytest.approx(r2, rel=1e-9)
    assert result_cell == "✅ pass: new metric, the base has no value"
    # test_mse changed, and its change against the base is shown beside the value.
    old = json.loads(sh("git", "show", "main:metrics/module.json", cwd=project).stdout)["test_mse"]
    new = json.loads(module_json.read_text())["test_mse"]
    assert old != new
    shown = rows["module test MSE at most 5% worse than the base"]
    assert float(shown[1]) == pytest.approx(old, rel=1e-9)
    number, percent = re.fullmatch(r"(\S+) \(([+-]\S+)%\)", shown[2]).groups()
    assert float(number) == pytest.approx(new, rel=1e-9)
    assert float(percent) == pytest.approx(100 * (new - old) / old, rel=1e-2)


@pytest.mark.e2e
def test_a_bad_gates_file_exits_2_with_one_line(project):
    gates = project / "gates.yaml"
    gates.write_text(gates.read_text().replace("max: 1.01", "max: 1.01\n  min: 1", 1))
    result = check(project)
    assert result.returncode == 2
    assert result.stderr == (
        "error: gates.yaml: gate 7 (metrics/module.json:train_mse_ols_ratio): has 2 (max, min) "
        "bounds; give exactly one of equals, max, min, max_increase, max_decrease, "
        "max_relative_increase, max_relative_decrease\n"
    )
    assert not (project / "report.md").exists()

    gates.write_text("- metric: metrics/module.json:test_mes\n  description: d\n  max: 1\n")
    result = check(project, "--gates", "gates.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: gates.yaml: gate 1 (metrics/module.json:test_mes): metrics/module.json has no "
        "key test_mes; "
    )
    assert len(result.stderr.splitlines()) == 1
