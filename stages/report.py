"""Compare the workspace with a base revision and check the gates: writes a markdown report for a
pull request; a tool, not a DVC stage."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from stages.artifacts import write_bytes
from stages.cli import UserError, run
from stages.gates import (
    RELATIVE,
    Gate,
    GatesError,
    Outcome,
    check_against,
    evaluate,
    load_gates,
    metrics_files,
    read_metrics,
)
from stages.params import parse_yaml

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# Metrics files are told apart by their stem: one per approach, and one comparing the two.
APPROACHES = ("module", "manual")
AGREEMENT = "comparison"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
NONE = "—"  # a change that has no number: a value that is null, text or a flag
MAX_TEXT = 200  # characters of any one name or value shown; a comment has room for 65,536

# What the report shows comes partly from the pull request (param and metric names, texts in
# params files, gate descriptions), and GitHub renders it as markdown in a comment. Nothing in
# it may break the table, hide text, notify people or link elsewhere:
# - line breaks and other control characters (bidi overrides included) become spaces;
# - HTML (`<!--`, `<img>`) and entities are shown as text: & < > become entities;
# - @mentions, #references and autolinks (`https://`, `www.`) get a zero-width space, which
#   GitHub's post-processing does not match across;
# - markdown punctuation is escaped with a backslash: code (`), emphasis (*, _ at a word's edge),
#   links and images ([ ]), strike-through (~), cell borders (|) and the backslash itself.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]+")
_SPECIAL = re.compile(r"[&<>@#\\`*\[\]~|]|(?<![^\W_])_|_(?![^\W_])|:(?=//)|(?i:www)(?=\.)")
_ZWSP = "&#8203;"
_REPLACEMENTS = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "@": "@" + _ZWSP, "#": "#" + _ZWSP}


def dvc_json(*args: str) -> dict:
    """Run `dvc ARGS --json` with this interpreter's dvc; raise UserError with dvc's message."""
    command = [sys.executable, "-m", "dvc", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip()
        raise UserError(f"dvc {' '.join(args)} failed: {message}")
    return json.loads(result.stdout or "{}")


def image_plots(pipeline: dict) -> list[str]:
    """The image files that dvc.yaml's stages declare as plots, in the order they appear."""
    images = []
    for stage in pipeline.get("stages", {}).values():
        for entry in stage.get("plots", []):
            for path in entry if isinstance(entry, dict) else [entry]:
                if path.lower().endswith(IMAGE_SUFFIXES):
                    images.append(path)
    return images


def _is_number(value: Any) -> bool:
    # bool is a subclass of int, but a flag going from false to true has no size.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one_line(text: Any) -> str:
    text = _CONTROL.sub(" ", str(text)).strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def escape(text: Any) -> str:
    """Text as GitHub shows it literally in a table cell or a sentence: see the rules above."""

    def replace(match: re.Match) -> str:
        found = match[0]
        if found in _REPLACEMENTS:
            return _REPLACEMENTS[found]
        if found == ":" or found.lower() == "www":
            return found + _ZWSP
        return "\\" + found

    return _SPECIAL.sub(replace, _one_line(text))


def code(text: Any) -> str:
    """A code span: markdown, HTML and mentions inside are shown as typed. Its fence is longer
    than any run of backticks in the text, so the text cannot close it."""
    text = _one_line(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        # As many digits as evaluate writes, so that a change never shows two equal numbers.
        return f"{value:.10g}"
    return str(value)


def format_change(old: Any, new: Any) -> str:
    return f"{new - old:+.4g}" if _is_number(old) and _is_number(new) else NONE


def format_relative(old: Any, new: Any) -> str:
    if not (_is_number(old) and _is_number(new)) or old == 0:
        return NONE
    percent = 100 * (new - old) / abs(old)
    return f"{percent:+.3g}%" if abs(percent) < 1000 else f"{percent:+,.0f}%"


def table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """A markdown table of plain text, every cell escaped; columns from `numeric_from` on are
    right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [[escape(cell) for cell in header], align, *([escape(c) for c in r] for r in rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def bound_text(gate: Gate) -> str:
    limit = format_value(gate.limit)
    if gate.bound in RELATIVE:
        limit = f"{100 * gate.limit:.6g}% of base"
    return {
        "equals": f"= {limit}",
        "max": f"≤ {limit}",
        "min": f"≥ {limit}",
    }.get(gate.bound, f"{gate.bound.rpartition('_')[2]} ≤ {limit}")


def gates_section(outcomes: list[Outcome]) -> str:
    """One row per gate, in the order of the gates file, under a one-line verdict."""
    if not outcomes:
        return "There are no gates to check."
    failed = sum(not outcome.passed for outcome in outcomes)
    verdict = (
        f"❌ {failed} of {len(outcomes)} gates {'fails' if failed == 1 else 'fail'}."
        if failed
        else f"✅ All {len(outcomes)} gates pass."
    )
    rows = []
    for outcome in outcomes:
        gate, value, base = outcome.gate, outcome.value, outcome.base
        shown = format_value(value)
        if gate.against_base and _is_number(base) and _is_number(value):
            size = format_relative if gate.bound in RELATIVE else format_change
            shown += f" ({size(base, value)})"
        if not gate.against_base:
            base_cell = NONE
        else:
            base_cell = "none" if base is None else format_value(base)
        result = "✅ pass" if outcome.passed else "❌ fail"
        if outcome.new_metric:
            result += ": new metric, the base has no value"
        rows.append([gate.description, gate.metric, base_cell, shown, bound_text(gate), result])
    header = ["Gate", "Metric", "Base", "Value", "Bound", "Result"]
    return verdict + "\n\n" + table(header, rows, numeric_from=len(header))


def failure_lines(outcomes: list[Outcome]) -> list[str]:
    """One plain line per failed gate, for the log."""
    return [
        f"gate failed: {o.gate.description}: {o.gate.metric} = {format_value(o.value)}"
        + (f" (base {format_value(o.base)})" if o.gate.against_base else "")
        + f", bound {bound_text(o.gate)}"
        for o in outcomes
        if not o.passed
    ]


def _approach_order(path: str) -> tuple[int, str]:
    stem = Path(path).stem
    return (APPROACHES.index(stem) if stem in APPROACHES else len(APPROACHES), stem)


def params_section(params_diff: dict) -> str:
    """Every param that changed, from `dvc params diff --json`."""
    rows = []
    for path in sorted(params_diff):
        for key in sorted(params_diff[path]):
            change = params_diff[path][key]
            name = key if path == "params.yaml" else f"{path}:{key}"
            rows.append([name, format_value(change.get("old")), format_value(change.get("new"))])
    if not rows:
        return "No params changed."
    return table(["Param", "Base", "New"], rows, numeric_from=3)


def metrics_section(metrics_diff: dict) -> str:
    """Each metric that changed for either approach, with a row per approach for comparison."""
    approaches = sorted((p for p in metrics_diff if Path(p).stem != AGREEMENT), key=_approach_order)
    changed = sorted(
        {
            key
            for path in approaches
            for key, change in metrics_diff[path].items()
            if change.get("old") != change.get("new")
        }
    )
    rows = []
    for key in changed:
        for path in approaches:
            if key in metrics_diff[path]:
                old, new = metrics_diff[path][key].get("old"), metrics_diff[path][key].get("new")
                rows.append(
                    [
                        key,
                        Path(path).stem,
                        format_value(old),
                        format_value(new),
                        format_change(old, new),
                        format_relative(old, new),
                    ]
                )
    if not rows:
        return "No metrics changed."
    header = ["Metric", "Approach", "Base", "New", "Change", "Relative change"]
    return table(header, rows, numeric_from=2)


def agreement_section(metrics_diff: dict) -> str:
    """How far apart module and manual are, before and after, and the largest gap now."""
    diffs = {
        key: change
        for path, changes in metrics_diff.items()
        if Path(path).stem == AGREEMENT
        for key, change in changes.items()
    }
    if not diffs:
        return f"No {AGREEMENT} metrics to show how far the approaches agree."
    rows = [
        [key, format_value(diffs[key].get("old")), format_value(diffs[key].get("new"))]
        for key in sorted(diffs)
    ]
    gaps = {
        key: change.get("new") for key, change in diffs.items() if _is_number(change.get("new"))
    }
    if gaps and max(gaps.values()) == 0:
        summary = "Module and manual agree exactly: every difference is 0."
    elif gaps:
        key = max(sorted(gaps), key=lambda k: gaps[k])
        summary = (
            f"The largest difference between module and manual is {escape(key)} = {gaps[key]:.3g}."
        )
    else:
        summary = "No difference between module and manual could be measured."
    return table(["Difference", "Base", "New"], rows, numeric_from=1) + "\n\n" + summary


def plots_section(images: list[str], plots_url: str = "") -> str:
    if not images:
        return "The pipeline declares no image plots."
    prefix = plots_url.rstrip("/") + "/" if plots_url else ""
    # Percent-encoded, so that no character of a path or URL can end the link early.
    return "\n\n".join(
        f"![{escape(path)}]({quote(_one_line(prefix + path), safe=':/%')})" for path in images
    )


def report(
    base: str,
    params_diff: dict,
    metrics_diff: dict,
    images: list[str],
    plots_url: str = "",
    gates: list[Outcome] | None = None,
) -> str:
    """The whole markdown report: the gates first when they were checked; one sentence instead
    of empty tables when nothing changed."""
    head = [f"## Pipeline results against {code(base)}"]
    if gates is not None:
        head += ["### Gates", gates_section(gates)]
    metrics_changed = any(
        change.get("old") != change.get("new")
        for changes in metrics_diff.values()
        for change in changes.values()
    )
    if not any(params_diff.values()) and not metrics_changed:
        return "\n\n".join([*head, f"No params or metrics changed against {code(base)}."]) + "\n"
    sections = [
        *head,
        "### Params",
        params_section(params_diff),
        "### Metrics",
        metrics_section(metrics_diff),
        "### How far module and manual agree",
        agreement_section(metrics_diff),
        "### Plots",
        plots_section(images, plots_url),
    ]
    return "\n\n".join(sections) + "\n"


def check_gates(gates: list[Gate], workspace: dict, metrics_diff: dict) -> list[Outcome]:
    """Each gate on the workspace's metrics, and on the base's values from the diff."""
    return [
        evaluate(
            gate,
            workspace[gate.path][gate.key],
            metrics_diff.get(gate.path, {}).get(gate.key, {}).get("old"),
        )
        for gate in gates
    ]


@app.command()
def main(
    base: Annotated[str, typer.Option(help="The git revision to compare with, e.g. origin/main.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write the markdown here, not to stdout.")
    ] = None,
    plots_url: Annotated[
        str,
        typer.Option(
            help="Prefix of the image links, e.g. https://github.com/OWNER/REPO/raw/SHA; "
            "by default the links are paths in the repository."
        ),
    ] = "",
    check: Annotated[
        bool,
        typer.Option("--check", help="Check the gates first; exit 1 after writing if one fails."),
    ] = False,
    gates_path: Annotated[
        Path, typer.Option("--gates", help="The gates file that --check reads.")
    ] = Path("gates.yaml"),
) -> None:
    """Write markdown for a pull request: the params and metrics that changed against BASE, and
    with --check the gates of gates.yaml first."""
    pipeline = parse_yaml(Path("dvc.yaml").read_text())
    # A broken gates file fails before the slower dvc calls.
    gates = load_gates(gates_path, metrics_files(pipeline)) if check else []
    workspace = {path: read_metrics(path) for path in sorted({gate.path for gate in gates})}
    try:
        check_against(gates, workspace)
    except GatesError as error:
        raise GatesError(f"{gates_path}: {error}") from None
    params_diff = dvc_json("params", "diff", base)
    metrics_diff = dvc_json("metrics", "diff", "--all", base)
    outcomes = check_gates(gates, workspace, metrics_diff) if check else None
    markdown = report(
        base, params_diff, metrics_diff, image_plots(pipeline), plots_url, gates=outcomes
    )
    if out_path is None:
        sys.stdout.write(markdown)
    else:
        write_bytes(out_path, markdown.encode())
    failures = failure_lines(outcomes or [])
    if failures:
        print("\n".join(failures), file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    run(app)
