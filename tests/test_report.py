"""The pull-request report: its tables from dvc's diffs, and the workflow that posts it."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.report import (
    agreement_section,
    format_change,
    format_relative,
    format_value,
    image_plots,
    metrics_section,
    params_section,
    plots_section,
    report,
)
from tests.conftest import ROOT, sh
from tests.helpers import DEFAULTS

WORKFLOW = ROOT / ".github" / "workflows" / "pr.yml"


def change(old: object, new: object) -> dict:
    return {"old": old, "new": new}


def metrics_diff(module: dict, manual: dict, comparison: dict) -> dict:
    """A `dvc metrics diff --all --json` answer, from {key: (old, new)} per file."""
    return {
        f"metrics/{stem}.json": {key: change(*values) for key, values in changes.items()}
        for stem, changes in (("module", module), ("manual", manual), ("comparison", comparison))
    }


UNCHANGED_COMPARISON = {"weight_diff": (0.0, 0.0), "bias_diff": (0.0, 0.0)}


def test_values_print_as_in_the_json_files():
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value(100) == "100"
    assert format_value(0.05) == "0.05"
    assert format_value(2.9688041) == "2.9688041"
    assert format_value("a|b") == "a\\|b"  # a pipe would split the table cell


def test_changes_are_signed_and_relative_to_the_base():
    assert format_change(0.05, 0.1) == "+0.05"
    assert format_change(1.0, 0.75) == "-0.25"
    assert format_relative(0.05, 0.1) == "+100%"
    assert format_relative(-2.0, -1.0) == "+50%"  # relative to |base|: the value went up
    assert format_relative(0.0312, 0.3595) == "+1,052%"  # no exponent for a large change


@pytest.mark.parametrize(
    ("old", "new"), [(None, 1.0), (1.0, None), (False, True), ("normal", "uniform")]
)
def test_a_change_without_a_size_is_a_dash(old, new):
    assert format_change(old, new) == format_relative(old, new) == "—"


def test_a_relative_change_from_zero_is_a_dash():
    assert format_change(0, 2) == "+2"
    assert format_relative(0, 2) == "—"


def test_params_table_lists_each_changed_param_sorted():
    diff = {
        "params.yaml": {"lr": change(0.05, 0.1), "init.weight": change(None, 16)},
        "other.yaml": {"x": change("a", "b")},
    }
    assert params_section(diff) == (
        "| Param | Base | New |\n"
        "| --- | --- | --- |\n"
        "| other.yaml:x | a | b |\n"
        "| init.weight | null | 16 |\n"
        "| lr | 0.05 | 0.1 |"
    )
    assert params_section({}) == params_section({"params.yaml": {}}) == "No params changed."


def test_metrics_table_shows_both_approaches_for_every_metric_that_changed():
    diff = metrics_diff(
        module={"weight": (2.0, 3.0), "bias": (0.5, 0.5), "epochs": (100, 100)},
        manual={"weight": (2.0, 3.0), "bias": (0.5, 0.25), "epochs": (100, 100)},
        comparison={"weight_diff": (0.0, 0.0), "bias_diff": (0.0, 0.25)},
    )
    assert metrics_section(diff).splitlines() == [
        "| Metric | Approach | Base | New | Change | Relative change |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        # bias changed for manual only: module's row is there too, to compare with.
        "| bias | module | 0.5 | 0.5 | +0 | +0% |",
        "| bias | manual | 0.5 | 0.25 | -0.25 | -50% |",
        "| weight | module | 2 | 3 | +1 | +50% |",
        "| weight | manual | 2 | 3 | +1 | +50% |",
    ]


def test_metrics_table_reports_a_metric_that_became_null():
    diff = metrics_diff({"test_mse": (0.9, None)}, {"test_mse": (0.9, None)}, {})
    assert "| test_mse | module | 0.9 | null | — | — |" in metrics_section(diff)
    assert metrics_section(metrics_diff({}, {}, UNCHANGED_COMPARISON)) == "No metrics changed."


def test_agreement_says_when_the_approaches_agree_exactly():
    section = agreement_section(metrics_diff({}, {}, UNCHANGED_COMPARISON))
    assert section.splitlines()[:4] == [
        "| Difference | Base | New |",
        "| --- | ---: | ---: |",
        "| bias_diff | 0 | 0 |",
        "| weight_diff | 0 | 0 |",
    ]
    assert section.endswith("Module and manual agree exactly: every difference is 0.")


def test_agreement_names_the_largest_difference():
    comparison = {
        "weight_diff": (0.0, 1e-7),
        "bias_diff": (0.0, 2e-7),
        "test_mse_diff": (None,) * 2,
    }
    section = agreement_section(metrics_diff({}, {}, comparison))
    assert "| test_mse_diff | null | null |" in section
    assert section.endswith(
        "The largest difference between module and manual is bias_diff = 2e-07."
    )


def test_image_plots_come_from_dvc_yaml_in_order():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    images = image_plots(pipeline)
    assert images == ["plots/fit.png", "plots/loss.png", "plots/params.png"]
    assert all((ROOT / path).is_file() for path in images)


def test_image_links_are_repo_paths_unless_given_a_url():
    assert plots_section(["plots/fit.png"]) == "![plots/fit.png](plots/fit.png)"
    url = "https://github.com/o/r/raw/abc/"
    assert plots_section(["plots/fit.png"], url) == f"![plots/fit.png]({url}plots/fit.png)"


def test_nothing_changed_is_one_sentence():
    unchanged = metrics_diff({"weight": (3.0, 3.0)}, {"weight": (3.0, 3.0)}, UNCHANGED_COMPARISON)
    markdown = report("main", {}, unchanged, ["plots/fit.png"])
    assert (
        markdown
        == "## Pipeline results against `main`\n\nNo params or metrics changed against `main`.\n"
    )


def test_report_does_not_depend_on_the_order_dvc_lists_keys_in():
    params = {"params.yaml": {"lr": change(0.05, 0.1), "epochs": change(100, 20)}}
    metrics = metrics_diff(
        {"weight": (2.0, 3.0), "bias": (0.4, 0.5)}, {"bias": (0.4, 0.5), "weight": (2.0, 3.0)}, {}
    )

    def reversed_keys(nested: dict) -> dict:
        return {
            k: reversed_keys(v) if isinstance(v, dict) else v for k, v in reversed(nested.items())
        }

    images = ["plots/fit.png"]
    first = report("main", params, metrics, images)
    assert first == report("main", reversed_keys(params), reversed_keys(metrics), images)
    assert [line for line in first.splitlines() if line.startswith("###")] == [
        "### Params",
        "### Metrics",
        "### How far module and manual agree",
        "### Plots",
    ]


def test_report_imports_no_torch():
    code = "import sys, stages.report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def run_report(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "stages.report", *args, cwd=project, check=check)


def set_lr(project: Path, lr: float) -> None:
    """Change lr in params.yaml in place, keeping its comments."""
    path = project / "params.yaml"
    text, count = re.subn(r"^lr: *\S+", f"lr: {lr}", path.read_text(), flags=re.MULTILINE)
    assert count == 1
    path.write_text(text)


@pytest.mark.e2e
def test_report_against_the_previous_commit(project):
    new_lr = DEFAULTS["lr"] / 2  # smaller than a working lr, so it converges too
    set_lr(project, new_lr)
    sh("dvc", "repro", cwd=project)
    sh("git", "commit", "-qam", "Halve lr", cwd=project)

    assert run_report(project, "--base", "HEAD~1", "--out", "report.md").stdout == ""
    markdown = (project / "report.md").read_text()
    assert markdown == run_report(project, "--base", "HEAD~1").stdout  # deterministic

    assert f"| lr | {format_value(DEFAULTS['lr'])} | {format_value(new_lr)} |" in markdown
    for approach in ("module", "manual"):
        old = json.loads(sh("git", "show", f"HEAD~1:metrics/{approach}.json", cwd=project).stdout)
        new = json.loads((project / "metrics" / f"{approach}.json").read_text())
        for key in ("weight", "train_mse"):
            assert old[key] != new[key]
            row = (
                f"| {key} | {approach} | {format_value(old[key])} | {format_value(new[key])} | "
                f"{format_change(old[key], new[key])} | {format_relative(old[key], new[key])} |"
            )
            assert row in markdown
    old = json.loads(sh("git", "show", "HEAD~1:metrics/comparison.json", cwd=project).stdout)
    new = json.loads((project / "metrics" / "comparison.json").read_text())
    row = (
        f"| weight_diff | {format_value(old['weight_diff'])} | {format_value(new['weight_diff'])} |"
    )
    assert row in markdown
    for image in ("plots/fit.png", "plots/loss.png", "plots/params.png"):
        assert f"]({image})" in markdown


@pytest.mark.e2e
def test_report_says_so_when_nothing_changed(project):
    result = run_report(project, "--base", "HEAD")
    assert result.stdout.endswith("\n\nNo params or metrics changed against `HEAD`.\n")
    assert "|" not in result.stdout


@pytest.mark.e2e
def test_report_on_an_unknown_revision_is_one_line_error(project):
    result = run_report(project, "--base", "no-such-rev", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: dvc params diff no-such-rev failed:")
    assert "Traceback" not in result.stderr


def workflow() -> dict:
    loaded = yaml.safe_load(WORKFLOW.read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def test_workflow_runs_on_pull_requests_and_may_comment():
    flow = workflow()
    assert "pull_request" in flow["on"]
    assert flow["permissions"]["pull-requests"] == "write"


def test_workflow_reproduces_checks_reports_and_updates_one_comment():
    steps = workflow()["jobs"]["report"]["steps"]
    env = workflow()["jobs"]["report"]["env"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    runs = "\n".join(step.get("run", "") for step in steps)

    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert uses["actions/setup-python"]["with"]["python-version"] == "3.11"
    assert env["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # In this order: the README's setup, the reproducibility check, the report.
    setup = runs.index("make run")
    check = runs.index("git status --porcelain -- dvc.lock metrics plots")
    build = runs.index("-m stages.report --base")
    assert setup < check < build
    assert "exit 1" in runs[check:build]

    script = uses["actions/github-script"]["with"]["script"]
    assert "<!-- linreg-report -->" in script
    assert "updateComment" in script and "createComment" in script
    assert "report.md" in uses["actions/upload-artifact"]["with"]["path"]


def test_workflow_passes_the_github_workflow_schema():
    # A dev dependency, installed beside this interpreter by `make`.
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_passes_actionlint():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (its PyPI wrapper downloads a binary at build)")
    result = subprocess.run(
        [actionlint, str(WORKFLOW)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
