"""Chart an lr sweep; not a DVC stage: reads this commit's experiments, writes sweep.csv and .png.

The experiments come from DVC's Python API (dvc.api.exp_show), one row each, into pandas. The
chart puts each run's excess over least squares after training (train_mse_ols_ratio - 1) against
its lr, beside the excess the dynamics predict (stages/dynamics.py) for every lr from the
experiments' own training data and starting point, read through dvc.api at an experiment's
revision. Runs that differ in params other than lr are drawn as separate groups, each with its
own curve and lines; more groups than one chart can show clearly are refused.
"""

import io
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any

import dvc.api
import numpy as np
import pandas as pd
import typer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stages.artifacts import HISTORY_COLUMNS, write_bytes
from stages.cli import UserError, run
from stages.data import open_dataset
from stages.dynamics import Moments, dynamics, hessian, moments
from stages.params import parse_yaml

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

# Metrics files are told apart by their stem, as in stages/report.py.
APPROACHES = ("module", "manual")
DYNAMICS = "dynamics"
PARAMS_FILE = "params.yaml"
APPROACH_METRICS = ("train_mse_ols_ratio", "weight", "bias", "diverged", "observed_rate")
DYNAMICS_METRICS = ("predicted_rate", "lr_ratio")
# evaluate writes 10 significant digits, so a ratio just above 1 shows an excess down to 1e-9;
# smaller ones read as 0, and the chart draws them on this line.
RESOLUTION = 1e-9
# One colour per group; more groups than this make a chart nobody can read: refuse instead.
COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")
MAX_GROUPS = len(COLORS)
MARKERS = {"module": {"marker": "o", "facecolors": "none"}, "manual": {"marker": "+"}}
DIVERGED = {"marker": "s", "facecolors": "none", "edgecolors": "tab:red", "linewidths": 1.5}


def param_names(params: Any, prefix: str = "") -> list[str]:
    """The dotted names of every param in params.yaml: lr, init.weight, data.n_samples, ..."""
    names = []
    for key, value in params.items():
        if isinstance(value, dict):
            names += param_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


# exp_show hands every value over as text, turned back into a number where it could be: null
# and the booleans arrive as these strings.
LITERALS = {"None": None, "True": True, "False": False}


def _value(value: Any) -> Any:
    return LITERALS.get(value, value) if isinstance(value, str) else value


def column(names: list[str], file: str, key: str) -> str | None:
    """The exp_show column of `key` in the file whose stem or name is `file`.

    exp_show prefixes a name with its file only where several files share it (metrics/module.json:
    weight, params.yaml:epochs); a name only one file has stays bare (lr, lr_max).
    """
    for name in names:
        path, _, found = name.rpartition(":")
        if found == key and path and file in (path, Path(path).stem):
            return name
    return key if key in names else None


def read_experiments(rows: list[dict], params: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished experiment: its name and rev, params and metrics, as plain values.

    Returns the table and the names of the experiments left out because they are queued,
    running or failed (exp_show lists a failed one with its baseline's metrics).
    """
    names = list(dict.fromkeys(name for row in rows for name in row))
    wanted = {"experiment": "Experiment", "rev": "rev"}
    for param in params:
        wanted[param] = column(names, PARAMS_FILE, param)
    for approach in APPROACHES:
        for key in APPROACH_METRICS:
            wanted[f"{approach}:{key}"] = column(names, approach, key)
    for key in DYNAMICS_METRICS:
        wanted[f"{DYNAMICS}:{key}"] = column(names, DYNAMICS, key)
    finished, skipped = [], []
    for row in rows:
        if row.get("typ") == "baseline":  # the workspace and the commit itself
            continue
        if row.get("State") not in (None, "Success"):
            skipped.append(f"{row.get('Experiment') or row['rev']} ({row['State'].lower()})")
            continue
        finished.append({ours: _value(row.get(theirs)) for ours, theirs in wanted.items()})
    return pd.DataFrame(finished, columns=list(wanted)), skipped


def varying(experiments: pd.DataFrame, params: list[str]) -> list[str]:
    """The params other than lr that do not have one value in every experiment."""
    return [p for p in params if p != "lr" and experiments[p].astype(str).nunique(dropna=False) > 1]


def whole_numbers(values: pd.Series) -> pd.Series:
    """Whole numbers as integers (epochs 20, not 20.0): exp_show turns every number into a float."""
    # pandas turns a null among numbers into NaN; object dtype keeps None and ints as they are.
    plain = [None if pd.isna(v) else v for v in values]
    floats = [v for v in plain if isinstance(v, float)]
    if floats and all(v.is_integer() for v in floats):
        plain = [int(v) if isinstance(v, float) else v for v in plain]
    return pd.Series(plain, index=values.index, dtype=object)


def sweep_table(experiments: pd.DataFrame, others: list[str]) -> pd.DataFrame:
    """sweep.csv: one row per experiment and approach, sorted by group, lr and experiment."""
    rows = []
    for _, experiment in experiments.iterrows():
        for approach in APPROACHES:
            row = {"experiment": experiment["experiment"], "approach": approach}
            row["lr"] = experiment["lr"]
            row.update({p: experiment[p] for p in others})
            row.update({k: experiment[f"{approach}:{k}"] for k in APPROACH_METRICS})
            row.update({k: experiment[f"{DYNAMICS}:{k}"] for k in DYNAMICS_METRICS})
            rows.append(row)
    table = pd.DataFrame(rows)
    for param in others:  # a new frame makes a column of numbers and nulls float again
        table[param] = whole_numbers(table[param])
    table["order"] = table["approach"].map(APPROACHES.index)
    table = table.sort_values([*others, "lr", "experiment", "order"], kind="stable")
    return table.drop(columns="order").reset_index(drop=True)


def start_and_moments(
    rev: str, name: str, train_path: str, history_path: str
) -> tuple[Moments, tuple[float, float]]:
    """The training data's moments and the starting (w, b) of one experiment, through dvc.api."""
    try:
        with dvc.api.open(train_path, rev=rev, mode="rb") as file:
            train = moments(Path(train_path), file=open_dataset(file))
        history = pd.read_csv(io.StringIO(dvc.api.read(history_path, rev=rev)))
    except UserError:
        raise
    except Exception as error:  # dvc raises many kinds: missing file, missing cache, no remote
        raise UserError(
            f"experiment {name}: cannot read {train_path} or {history_path} ({error}); "
            "the chart needs its training data in the DVC cache (`dvc exp pull`, or run it here)"
        ) from None
    if tuple(history.columns) != HISTORY_COLUMNS or history.empty:
        raise UserError(f"experiment {name}: {history_path} is not a training history")
    return train, (float(history["weight"].iloc[0]), float(history["bias"].iloc[0]))


def predicted_excess_curve(
    train: Moments, start: tuple[float, float], epochs: int, lrs: np.ndarray
) -> np.ndarray:
    """predicted_ols_ratio - 1 at each lr; NaN where it is undefined or beyond float64."""
    ratios = [dynamics(train, float(lr), epochs, start)["predicted_ols_ratio"] for lr in lrs]
    excess = np.array([np.nan if r is None else r - 1 for r in ratios])
    # A log axis cannot show 0 (a start at the optimum); leave a gap rather than a spike.
    return np.where(excess > 0, excess, np.nan)


def split_groups(experiments: pd.DataFrame, others: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """The experiments by their values of `others`; a UserError if one chart cannot show them."""
    if not others:
        return [((), experiments)]
    by_values = experiments.groupby(others, sort=True, dropna=False)
    if by_values.ngroups > MAX_GROUPS:
        raise UserError(
            f"the experiments differ in {', '.join(others)} besides lr: {by_values.ngroups} "
            f"groups, more than the {MAX_GROUPS} one chart can show; sweep lr with the others fixed"
        )
    return [(key if isinstance(key, tuple) else (key,), group) for key, group in by_values]


def curve(
    group: pd.DataFrame, others: list[str], train_path: str, history_path: str
) -> dict[str, Any]:
    """What the chart draws for a group: the predicted excess over a range of lr that covers
    its runs, lr_max and lr_best. Every run of a group has the same data, start and epochs."""
    first = group.iloc[0]
    train, start = start_and_moments(first["rev"], first["experiment"], train_path, history_path)
    epochs = int(first["epochs"])
    h = hessian(train)
    lr_max = 2 / h.lambda_max
    lr_best = 2 / (h.lambda_max + h.lambda_min) if h.lambda_min > 0 else None
    low = min(group["lr"].min(), lr_best or lr_max) / 2
    high = max(group["lr"].max(), lr_max) * 2
    lrs = np.geomspace(low, high, 600)
    return {
        "experiments": list(group["experiment"]),
        "params": {p: first[p] for p in others},
        "lrs": lrs,
        "excess": predicted_excess_curve(train, start, epochs, lrs),
        "epochs": epochs,
        "lr_max": lr_max,
        "lr_best": lr_best,
    }


def group_label(drawn: dict[str, Any]) -> str:
    """The legend text of a group's curve: its params (wrapped), epochs and the two lines."""
    lines = [f"lr_max {drawn['lr_max']:.4g}"]
    if drawn["lr_best"] is not None:
        lines.append(f"lr_best {drawn['lr_best']:.4g}")
    text = f"predicted after {drawn['epochs']} epochs ({', '.join(lines)})"
    if drawn["params"]:
        params = ", ".join(f"{p}={'null' if v is None else v}" for p, v in drawn["params"].items())
        text = "\n".join(textwrap.wrap(params, 60)) + "\n" + text
    return text


def legend_marks() -> list[Line2D]:
    """Legend entries for the marks that every group shares: lines, runs, divergence, floor."""
    hollow = {"linestyle": "none", "color": "gray", "markerfacecolor": "none"}
    return [
        Line2D([], [], color="gray", linestyle="--", label="lr_max: diverges to the right"),
        Line2D([], [], color="gray", linestyle=":", label="lr_best: fastest worst case"),
        *(
            Line2D([], [], marker=MARKERS[a]["marker"], markersize=8, label=f"{a} runs", **hollow)
            for a in APPROACHES
        ),
        Line2D(
            [],
            [],
            marker="s",
            markersize=14,
            markeredgecolor=DIVERGED["edgecolors"],
            label="diverged: its last row before the bound, not after all epochs",
            **hollow,
        ),
        Line2D([], [], color="tab:gray", linewidth=0.8, label="1e-9: smaller excesses read as 0"),
    ]


def plot_sweep(table: pd.DataFrame, curves: list[dict[str, Any]]) -> Figure:
    """Excess after training against lr (log-log), per group: the runs, the predicted curve and
    vertical lines at lr_max and lr_best. `curves` holds what `curve` gives for each group."""
    figure = Figure(figsize=(9, 7), layout="constrained")
    axes = figure.subplots()
    shown = np.maximum(table["train_mse_ols_ratio"].astype(float) - 1, RESOLUTION)
    top = 10 * float(np.nanmax([*shown, 1.0]))  # NaN where least squares fits exactly
    for color, drawn in zip(COLORS, curves, strict=False):
        axes.plot(drawn["lrs"], drawn["excess"], color=color, label=group_label(drawn))
        axes.axvline(drawn["lr_max"], color=color, linestyle="--", linewidth=1)
        if drawn["lr_best"] is not None:
            axes.axvline(drawn["lr_best"], color=color, linestyle=":", linewidth=1.5)
        in_group = table["experiment"].isin(drawn["experiments"]).to_numpy()
        for approach in APPROACHES:
            runs = in_group & (table["approach"] == approach).to_numpy()
            axes.scatter(table["lr"][runs], shown[runs], s=60, color=color, zorder=3,
                         **MARKERS[approach])  # fmt: skip
    diverged = table["diverged"].map(lambda value: value is True).to_numpy(bool)
    axes.scatter(table["lr"][diverged], shown[diverged], s=220, zorder=4, **DIVERGED)
    axes.axhline(RESOLUTION, color="tab:gray", linewidth=0.8)
    # One legend entry per group (its curve), then one for each kind of mark, in grey; below
    # the chart, where it hides no run.
    handles, _ = axes.get_legend_handles_labels()
    figure.legend(
        handles=handles + legend_marks(), loc="outside lower center", ncols=2, fontsize="small"
    )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_ylim(RESOLUTION / 10, top)
    axes.set(
        xlabel="lr",
        ylabel="train_mse_ols_ratio - 1 (excess over least squares)",
        title="Learning-rate sweep: how far each run got",
    )
    return figure


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" entry: the bytes then depend only on what is drawn (as in stages/plot.py).
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def exp_show() -> list[dict]:
    try:
        return dvc.api.exp_show()
    except Exception as error:  # not a DVC repository, no git commit, a broken dvc.yaml ...
        raise UserError(f"cannot list the experiments: {error}") from None


@app.command()
def main(
    out_dir: Annotated[
        Path, typer.Option(help="Where to write sweep.csv and sweep.png (ignored by git).")
    ] = Path("sweep"),
    train_path: Annotated[
        str, typer.Option(help="The training data, as dvc.yaml names it.")
    ] = "data/train.parquet",
    history_path: Annotated[
        str, typer.Option(help="A training history, as dvc.yaml names it: its row 0 is the start.")
    ] = "plots/history/module.csv",
) -> None:
    """Tabulate and chart this commit's experiments: how far each got at its lr, and the theory."""
    try:
        params = param_names(parse_yaml(Path(PARAMS_FILE).read_text()))
    except FileNotFoundError:
        raise UserError(f"{PARAMS_FILE} not found: run this in the project's folder") from None
    experiments, skipped = read_experiments(exp_show(), params)
    if skipped:
        print(f"left out {len(skipped)} unfinished: {', '.join(skipped)}", file=sys.stderr)
    if experiments.empty:
        raise UserError(
            "no finished experiments on this commit; run some first, e.g. "
            "dvc exp run --queue -S 'lr=0.01,0.1,1' && dvc queue start"
        )
    others = varying(experiments, params)
    for param in others:
        experiments[param] = whole_numbers(experiments[param])
    groups = split_groups(experiments, others)
    if others:
        print(
            f"the experiments differ in {', '.join(others)} besides lr: one curve per group",
            file=sys.stderr,
        )
    table = sweep_table(experiments, others)
    curves = [curve(group, others, train_path, history_path) for _, group in groups]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes(out_dir / "sweep.csv", table.to_csv(index=False).encode())
    write_bytes(out_dir / "sweep.png", png(plot_sweep(table, curves)))
    print(
        f"wrote {out_dir / 'sweep.csv'} ({len(experiments)} experiments) and "
        f"{out_dir / 'sweep.png'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    run(app)
