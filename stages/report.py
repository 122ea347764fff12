"""Compare the workspace with a base revision: writes a markdown report for a pull request."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stages.artifacts import write_bytes
from stages.cli import UserError, run
from stages.params import parse_yaml

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# Metrics files are told apart by their stem: one per approach, and one comparing the two.
APPROACHES = ("module", "manual")
AGREEMENT = "comparison"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
NONE = "—"  # a change that has no number: a value that is null, text or a flag


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


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        # As many digits as evaluate writes, so that a change never shows two equal numbers.
        return f"{value:.10g}"
    return str(value).replace("|", "\\|")


def format_change(old: Any, new: Any) -> str:
    return f"{new - old:+.4g}" if _is_number(old) and _is_number(new) else NONE


def format_relative(old: Any, new: Any) -> str:
    if not (_is_number(old) and _is_number(new)) or old == 0:
        return NONE
    percent = 100 * (new - old) / abs(old)
    return f"{percent:+.3g}%" if abs(percent) < 1000 else f"{percent:+,.0f}%"


def table(header: list[str], rows: list[list[str]], numeric_from: int) -> str:
    """A markdown table; columns from `numeric_from` on are right-aligned."""
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


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
        summary = f"The largest difference between module and manual is {key} = {gaps[key]:.3g}."
    else:
        summary = "No difference between module and manual could be measured."
    return table(["Difference", "Base", "New"], rows, numeric_from=1) + "\n\n" + summary


def plots_section(images: list[str], plots_url: str = "") -> str:
    if not images:
        return "The pipeline declares no image plots."
    prefix = plots_url.rstrip("/") + "/" if plots_url else ""
    return "\n\n".join(f"![{path}]({prefix}{path})" for path in images)


def report(
    base: str, params_diff: dict, metrics_diff: dict, images: list[str], plots_url: str = ""
) -> str:
    """The whole markdown report; one sentence instead of empty tables when nothing changed."""
    title = f"## Pipeline results against `{base}`"
    metrics_changed = any(
        change.get("old") != change.get("new")
        for changes in metrics_diff.values()
        for change in changes.values()
    )
    if not any(params_diff.values()) and not metrics_changed:
        return f"{title}\n\nNo params or metrics changed against `{base}`.\n"
    sections = [
        title,
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


@app.command()
def main(
    base: Annotated[str, typer.Option(help="The git revision to compare with, e.g. origin/main.")],
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write the markdown here, not to stdout.")
    ] = None,
    plots_url: Annotated[
        str, typer.Option(help="Prefix of the image links; by default they are repo paths.")
    ] = "",
) -> None:
    """Write markdown for a pull request: the params and metrics that changed against BASE."""
    params_diff = dvc_json("params", "diff", base)
    metrics_diff = dvc_json("metrics", "diff", "--all", base)
    pipeline = parse_yaml(Path("dvc.yaml").read_text())
    markdown = report(base, params_diff, metrics_diff, image_plots(pipeline), plots_url)
    if out_path is None:
        sys.stdout.write(markdown)
    else:
        write_bytes(out_path, markdown.encode())


if __name__ == "__main__":
    run(app)
