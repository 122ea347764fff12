"""The sweep command: its CSV against the experiments' own files, with real dvc experiments."""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages import sweep
from stages.cli import UserError
from tests.conftest import sh

COLUMNS = [
    "experiment",
    "approach",
    "lr",
    "train_mse_ols_ratio",
    "weight",
    "bias",
    "diverged",
    "observed_rate",
    "predicted_rate",
    "lr_ratio",
]
# Three learning rates at 20 epochs (the last one diverges) and one at 10 epochs: each run of
# the pipeline costs seconds, so this is all the sweep tests get.
RUNS = {
    "slow": ("lr=0.01", "epochs=20"),
    "fast": ("lr=0.3", "epochs=20"),
    "too-fast": ("lr=1.5", "epochs=20"),
    "short": ("lr=0.1", "epochs=10"),
}


def run_sweep(path: Path, *args: str, check: bool = True):
    return sh(sys.executable, "-m", "stages.sweep", *args, cwd=path, check=check)


def committed(path: Path, rev: str, name: str):
    text = sh("git", "show", f"{rev}:{name}", cwd=path).stdout
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def experiment_revs(path: Path) -> dict[str, str]:
    """Each experiment's name and commit, from `dvc exp show --json`."""
    revs = {}
    for baseline in json.loads(sh("dvc", "exp", "show", "--json", cwd=path).stdout):
        for experiment in baseline.get("experiments") or []:
            revs[experiment["name"]] = experiment["revs"][0]["rev"]
    return revs


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def swept(built_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built project with the four experiments of RUNS."""
    path = tmp_path_factory.mktemp("sweep-command") / "project"
    shutil.copytree(built_project, path, symlinks=True)
    for name, overrides in RUNS.items():
        sh("dvc", "exp", "run", "-n", name, *(a for o in overrides for a in ("-S", o)), cwd=path)
    return path


@pytest.mark.e2e
def test_no_experiments_is_one_line_and_exit_2(project):
    result = run_sweep(project, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no finished experiments on this commit")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / "sweep").exists()


@pytest.mark.e2e
def test_the_table_holds_each_experiment_and_approach_as_its_files_say(swept):
    result = run_sweep(swept)
    # epochs differs besides lr: the command says so, and the table gets a column for it.
    assert "differ in epochs besides lr" in result.stderr
    rows = read_csv(swept / "sweep" / "sweep.csv")
    assert list(rows[0]) == [*COLUMNS[:3], "epochs", *COLUMNS[3:]]
    revs = experiment_revs(swept)
    assert revs.keys() == RUNS.keys()
    expected = []
    for name, rev in revs.items():
        params = committed(swept, rev, "params.yaml")
        dynamics = committed(swept, rev, "metrics/dynamics.json")
        for approach in ("module", "manual"):
            metrics = committed(swept, rev, f"metrics/{approach}.json")
            expected.append(
                {
                    "experiment": name,
                    "approach": approach,
                    "lr": params["lr"],
                    "epochs": params["epochs"],
                    **{key: metrics[key] for key in COLUMNS[3:8]},
                    **{key: dynamics[key] for key in COLUMNS[8:]},
                }
            )
    # Sorted by the other params, then lr, then experiment, module before manual.
    expected.sort(key=lambda row: (row["epochs"], row["lr"], row["experiment"]))
    assert [(r["experiment"], r["approach"]) for r in rows] == [
        (r["experiment"], r["approach"]) for r in expected
    ]
    for row, want in zip(rows, expected, strict=True):
        assert row["epochs"] == str(want["epochs"])  # a whole number stays whole
        assert row["diverged"] == str(want["diverged"])
        for key in ("lr", *COLUMNS[3:6], *COLUMNS[7:]):
            assert (float(row[key]) if row[key] else None) == want[key], (row, key)
    assert {r["experiment"] for r in rows if r["diverged"] == "True"} == {"too-fast"}


@pytest.mark.e2e
def test_the_chart_is_a_png_that_depends_only_on_the_experiments(swept, tmp_path):
    run_sweep(swept, "--out-dir", str(tmp_path / "again"))
    run_sweep(swept, "--out-dir", str(tmp_path / "once-more"))
    for name in ("sweep.csv", "sweep.png"):
        assert (tmp_path / "again" / name).read_bytes() == (
            tmp_path / "once-more" / name
        ).read_bytes()
    image = (tmp_path / "again" / "sweep.png").read_bytes()
    assert image.startswith(b"\x89PNG") and b"Software" not in image
    assert sh("git", "status", "--porcelain", "--", "sweep", cwd=swept).stdout == ""  # ignored


@pytest.mark.e2e
def test_the_curve_passes_through_each_runs_predicted_ratio(swept, monkeypatch):
    # The curve comes from the data and start read through dvc.api, the points from each
    # experiment's metrics/dynamics.json: they must agree at every run's lr.
    monkeypatch.chdir(swept)
    revs = experiment_revs(swept)
    for name, rev in revs.items():
        params = committed(swept, rev, "params.yaml")
        predicted = committed(swept, rev, "metrics/dynamics.json")["predicted_ols_ratio"]
        train, start = sweep.start_and_moments(
            rev, name, "data/train.parquet", "plots/history/module.csv"
        )
        excess = sweep.predicted_excess_curve(
            train, start, params["epochs"], np.array([params["lr"]])
        )
        # dynamics.json keeps ten significant digits of the ratio.
        assert excess[0] == pytest.approx(predicted - 1, rel=1e-6, abs=2e-10)


@pytest.mark.e2e
def test_with_only_lr_varying_there_are_no_other_columns(swept):
    sh("dvc", "exp", "remove", "short", cwd=swept)
    result = run_sweep(swept)
    assert "differ" not in result.stderr
    rows = read_csv(swept / "sweep" / "sweep.csv")
    assert list(rows[0]) == COLUMNS
    assert [float(r["lr"]) for r in rows] == [0.01, 0.01, 0.3, 0.3, 1.5, 1.5]


# ---- the pure parts, on tables shaped like dvc.api.exp_show's ----


def test_columns_are_found_with_or_without_their_file_prefix():
    names = ["lr", "params.yaml:epochs", "metrics/module.json:weight", "lr_max"]
    assert sweep.column(names, "params.yaml", "lr") == "lr"
    assert sweep.column(names, "params.yaml", "epochs") == "params.yaml:epochs"
    assert sweep.column(names, "module", "weight") == "metrics/module.json:weight"
    assert sweep.column(names, "manual", "weight") is None
    assert sweep.column(names, "dynamics", "lr_max") == "lr_max"


def test_param_names_are_dotted():
    params = {"seed": 1, "lr": 0.1, "init": {"weight": None}, "data": {"x_dist": "normal"}}
    assert sweep.param_names(params) == ["seed", "lr", "init.weight", "data.x_dist"]


def test_more_groups_than_a_chart_can_show_are_refused():
    experiments = pd.DataFrame(
        {"lr": [0.1] * 8, "seed": list(range(8)), "epochs": [5, 5, 5, 5, 5, 5, 5, 6]}
    )
    assert sweep.varying(experiments, ["lr", "seed", "epochs"]) == ["seed", "epochs"]
    with pytest.raises(UserError, match=r"differ in seed, epochs besides lr: 8 groups"):
        sweep.split_groups(experiments, ["seed", "epochs"])
    groups = sweep.split_groups(experiments.iloc[:6], ["seed"])
    assert [key for key, _ in groups] == [(i,) for i in range(6)]


def test_exp_show_text_values_become_plain_values():
    rows = [
        {"Experiment": None, "rev": "workspace", "typ": "baseline", "State": None, "lr": 0.05},
        {"Experiment": "a", "rev": "1234567", "typ": "branch_commit", "State": None, "lr": 0.1,
         "init.weight": "None", "metrics/module.json:diverged": "False"},
        {"Experiment": "b", "rev": "89abcde", "typ": "branch_base", "State": "Failed", "lr": 0.2},
    ]  # fmt: skip
    table, skipped = sweep.read_experiments(rows, ["lr", "init.weight"])
    assert skipped == ["b (failed)"]
    assert table["experiment"].tolist() == ["a"]
    assert table["init.weight"].tolist() == [None]
    assert table["module:diverged"].tolist() == [False]
