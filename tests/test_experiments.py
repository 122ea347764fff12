"""The users' daily loop with real dvc and git: experiments, sweeps, tables, diffs and a remote."""

import contextlib
import json
import math
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ENV, sh
from tests.helpers import set_params

pytestmark = pytest.mark.e2e

APPROACHES = ("module", "manual")
SWEEP = (0.001, 0.01, 0.1)
# The README's table of experiments. dvc matches --drop and --keep with re.match against each
# full column name, and a name that several files share (weight, epochs) is prefixed by its file.
EXP_SHOW = (
    "dvc", "exp", "show", "--md", "--drop", ".*", "--keep",
    r"Experiment$|lr$|params\.yaml:epochs$|metrics/(module|manual)\.json:(weight|bias|train_mse|test_mse)$",
)  # fmt: skip
UP_TO_DATE = "Data and pipelines are up to date."


def experiments(path: Path) -> dict[str, dict]:
    """Each experiment in `dvc exp show --json`, by name: its rev, params and metrics per file."""
    found = {}
    for baseline in json.loads(sh("dvc", "exp", "show", "--json", cwd=path).stdout):
        for experiment in baseline.get("experiments") or []:
            rev = experiment["revs"][0]
            found[experiment["name"]] = {
                "rev": rev["rev"],
                "state": (experiment.get("executor") or {}).get("state"),
                "params": rev["data"]["params"]["params.yaml"]["data"],
                **{Path(p).stem: m["data"] for p, m in rev["data"]["metrics"].items()},
            }
    return found


def committed(path: Path, rev: str, name: str) -> dict:
    """A JSON or YAML file as committed at `rev`."""
    text = sh("git", "show", f"{rev}:{name}", cwd=path).stdout
    # Not YAML for JSON: PyYAML reads a float without a dot, such as 2e-08, as a string.
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def changed_files(path: Path, *revs: str) -> set[str]:
    """Files that differ between two revs, or (no revs) changed or untracked in the work tree."""
    if revs:
        return set(sh("git", "diff", "--name-only", *revs, cwd=path).stdout.split())
    status = sh("git", "status", "--porcelain", "--untracked-files=all", cwd=path).stdout
    return {line[3:] for line in status.splitlines()}


def writable(path: Path) -> set[str]:
    """What a run may change in git: params.yaml, dvc.lock and the outputs dvc.yaml declares."""
    pipeline = yaml.safe_load((path / "dvc.yaml").read_text())
    declared = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in pipeline["stages"].values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
    }
    return declared | {"params.yaml", "dvc.lock"}


def exp_run(path: Path, name: str, *overrides: str) -> dict:
    """`dvc exp run -S ...` in the workspace; the experiment as `dvc exp show` lists it."""
    sets = [arg for override in overrides for arg in ("-S", override)]
    sh("dvc", "exp", "run", *sets, "-n", name, cwd=path)
    assert changed_files(path) <= writable(path)  # nothing written outside declared outputs
    return experiments(path)[name]


@pytest.fixture(scope="module")
def lr_high(built_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone, with only what git tracks and no DVC cache, and `-S lr=0.1` run in it.
    Shared by the tests of this module: do not change it, use `clone` for a private copy."""
    path = tmp_path_factory.mktemp("clone") / "project"
    sh("git", "clone", "-q", built_project, path, cwd=path.parent)
    assert not (path / "data" / "train.parquet").exists()
    exp_run(path, "lr-high", "lr=0.1")
    return path


@pytest.fixture
def clone(lr_high: Path, tmp_path: Path) -> Path:
    """A private copy of `lr_high` (git repo, experiment and DVC cache included), free to
    change: what one test does to it cannot change what the next one sees."""
    path = tmp_path / "clone"
    shutil.copytree(lr_high, path, symlinks=True)
    return path


def test_exp_run_sets_lr_in_a_fresh_clone(lr_high):
    experiment = experiments(lr_high)["lr-high"]
    assert experiment["params"]["lr"] == 0.1
    assert committed(lr_high, "main", "params.yaml")["lr"] < 0.1
    for approach in APPROACHES:
        base = committed(lr_high, "main", f"metrics/{approach}.json")
        assert experiment[approach]["weight"] != base["weight"]
        # A larger stable lr gets closer to least squares in the same number of epochs.
        assert experiment[approach]["train_mse_ols_ratio"] <= base["train_mse_ols_ratio"]


def test_exp_branch_and_the_diffs_between_revisions(clone):
    experiment = experiments(clone)["lr-high"]
    sh("dvc", "exp", "branch", "lr-high", "lr-high-branch", cwd=clone)
    assert committed(clone, "lr-high-branch", "params.yaml")["lr"] == 0.1

    params = json.loads(
        sh("dvc", "params", "diff", "--json", "main", "lr-high-branch", cwd=clone).stdout
    )
    assert params["params.yaml"].keys() == {"lr"}
    assert params["params.yaml"]["lr"]["new"] == 0.1

    metrics = json.loads(
        sh("dvc", "metrics", "diff", "--json", "main", "lr-high-branch", cwd=clone).stdout
    )
    for approach in APPROACHES:
        diff = metrics[f"metrics/{approach}.json"]
        base = committed(clone, "main", f"metrics/{approach}.json")
        assert diff["weight"] == {
            "old": base["weight"],
            "new": experiment[approach]["weight"],
            "diff": pytest.approx(experiment[approach]["weight"] - base["weight"]),
        }
        assert diff["train_mse"]["new"] == experiment[approach]["train_mse"]


def test_exp_apply_restores_the_experiment_into_the_workspace(clone):
    experiment = experiments(clone)["lr-high"]
    sh("git", "checkout", "--", ".", cwd=clone)  # back to the committed params and results
    assert yaml.safe_load((clone / "params.yaml").read_text())["lr"] != 0.1

    sh("dvc", "exp", "apply", "lr-high", cwd=clone)
    assert yaml.safe_load((clone / "params.yaml").read_text())["lr"] == 0.1
    for approach in APPROACHES:
        applied = json.loads((clone / "metrics" / f"{approach}.json").read_text())
        assert applied == committed(clone, experiment["rev"], f"metrics/{approach}.json")
    assert UP_TO_DATE in sh("dvc", "status", cwd=clone).stdout  # data and models came along


def test_exp_run_sets_epochs_and_a_nested_data_param(project):
    # One run for both flags: each run of the pipeline costs seconds.
    experiment = exp_run(project, "short-small", "epochs=5", "data.n_samples=200")
    assert experiment["params"]["epochs"] == 5
    assert experiment["params"]["data"]["n_samples"] == 200
    for approach in APPROACHES:
        base = committed(project, "HEAD", f"metrics/{approach}.json")
        assert experiment[approach]["epochs"] == 5
        # Five updates stop further from least squares than the committed run does.
        assert experiment[approach]["train_mse_ols_ratio"] > base["train_mse_ols_ratio"]
    # The experiment's data came into the workspace with its results: 200 rows, of which
    # 200 · test_fraction rounded half up are test rows (computed here in exact fractions).
    fraction = Fraction(str(experiment["params"]["data"]["test_fraction"]))
    test_rows = math.floor(200 * fraction + Fraction(1, 2))
    assert pq.read_metadata(project / "data" / "test.parquet").num_rows == test_rows
    assert pq.read_metadata(project / "data" / "train.parquet").num_rows == 200 - test_rows


def test_exp_run_sets_a_param_to_null(project):
    # A workspace change, as a user trying a fixed start would make.
    set_params(project / "params.yaml", **{"init.weight": 16})

    experiment = exp_run(project, "default-init", "init.weight=null")
    assert experiment["params"]["init"]["weight"] is None  # YAML null, not the string "null"
    # Back at the committed params: the run reuses the committed results as they are.
    for approach in APPROACHES:
        assert experiment[approach] == {
            key: value
            for key, value in committed(project, "HEAD", f"metrics/{approach}.json").items()
            if value is not None  # dvc exp show leaves out null metrics
        }


@pytest.fixture(scope="module")
def swept(built_project: Path, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the built project after the README's sweep: three lr values, two at a time."""
    path = tmp_path_factory.mktemp("sweep") / "project"
    shutil.copytree(built_project, path, symlinks=True)
    sh("dvc", "exp", "run", "--queue", "-S", "lr=" + ",".join(map(str, SWEEP)), cwd=path)
    # The workers outlive `dvc queue start` and inherit its output: a file, not the pipes sh()
    # reads, which would stay open, and sh() waiting, until the last worker has exited.
    log = tmp_path_factory.mktemp("sweep-log") / "queue-start.log"
    with log.open("w") as out:
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"],
            cwd=path,
            env=ENV,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
    try:
        yield path, wait_for_queue(path)
    finally:
        sh("dvc", "queue", "stop", cwd=path, check=False)
        end_workers(path)


def end_workers(path: Path, grace: float = 30) -> None:
    """Make sure no queue worker of this project outlives the tests.

    A worker can miss the shutdown when the queue empties while it still runs a task (seen here
    with dvc 3.67 and two workers; compare treeverse/dvc-task#77): it then idles forever.
    """
    workers = []
    for pid_file in (path / ".dvc/tmp/exps/celery").glob("*.pid"):
        with contextlib.suppress(ValueError, psutil.Error):
            worker = psutil.Process(int(pid_file.read_text()))
            if "queue-worker" in worker.cmdline():  # not a new process that reused the pid
                workers.append(worker)
    _, alive = psutil.wait_procs(workers, timeout=grace)
    for worker in alive:
        worker.kill()


def wait_for_queue(path: Path, timeout: float = 900) -> dict[str, str]:
    """Wait until no task is queued or running; return each task's status by name."""
    deadline = time.monotonic() + timeout
    while True:
        table = sh("dvc", "queue", "status", cwd=path).stdout.split("\n\n")[0]
        statuses = {row.split()[1]: row.split()[-1] for row in table.splitlines()[1:]}
        if not {"Queued", "Running"} & set(statuses.values()):
            return statuses
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish in {timeout} s:\n{table}")
        time.sleep(3)


def test_sweep_runs_every_experiment_to_success(swept):
    path, statuses = swept
    assert list(statuses.values()) == ["Success"] * len(SWEEP)
    by_lr = sorted(experiments(path).values(), key=lambda e: e["params"]["lr"])
    assert [e["state"] for e in by_lr] == ["success"] * len(SWEEP)
    assert [e["params"]["lr"] for e in by_lr] == list(SWEEP)
    for approach in APPROACHES:
        ratios = [e[approach]["train_mse_ols_ratio"] for e in by_lr]
        assert ratios == sorted(ratios, reverse=True)  # the larger lr, the closer to the optimum
        assert len(set(ratios)) == len(SWEEP)


def test_sweep_runs_share_no_state(swept, lr_high):
    path, statuses = swept
    assert changed_files(path) == set()  # the queue left the workspace alone
    for name, experiment in experiments(path).items():
        assert name in statuses
        # Each run wrote only declared outputs: nothing untracked was left behind in its folder.
        assert changed_files(path, "HEAD", experiment["rev"]) <= writable(path)
        assert "untracked files" not in sh("dvc", "queue", "logs", name, cwd=path).stdout
        lock = committed(path, experiment["rev"], "dvc.lock")
        for stage in lock["stages"].values():
            for entry in stage.get("deps", []) + stage.get("outs", []):
                assert not Path(entry["path"]).is_absolute()
        for file in ("dvc.lock", "metrics/module.json", "plots/history/module.csv"):
            text = sh("git", "show", f"{experiment['rev']}:{file}", cwd=path).stdout
            assert str(path) not in text and ".dvc/tmp" not in text
    # Two at a time in temporary folders, the numbers are those of a lone run in a fresh clone.
    in_sweep = next(e for e in experiments(path).values() if e["params"]["lr"] == 0.1)
    alone = experiments(lr_high)["lr-high"]
    for file in (*APPROACHES, "comparison"):
        assert in_sweep[file] == alone[file]


def test_exp_show_prints_lr_epochs_and_key_metrics_of_both_approaches(swept):
    path, _ = swept
    lines = sh(*EXP_SHOW, cwd=path).stdout.strip().splitlines()
    header, rows = lines[0], lines[2:]
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert columns == [
        "Experiment",
        *(
            f"metrics/{a}.json:{k}"
            for a in APPROACHES
            for k in ("weight", "bias", "train_mse", "test_mse")
        ),
        "lr",
        "params.yaml:epochs",
    ]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert [row[0] for row in cells[:2]] == ["workspace", "main"]
    assert sorted(float(row[columns.index("lr")]) for row in cells[2:]) == list(SWEEP)


def test_metrics_show_puts_module_and_manual_side_by_side(project):
    command = ("dvc", "metrics", "show", "--md", "metrics/module.json", "metrics/manual.json")
    lines = sh(*command, cwd=project).stdout.strip().splitlines()
    columns = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert columns[0] == "Path"
    assert {"weight", "bias", "train_mse", "test_mse", "weight_error"} <= set(columns)
    assert [line.split("|")[1].strip() for line in lines[2:]] == [
        "metrics/module.json",
        "metrics/manual.json",
    ]


def test_push_then_pull_in_a_fresh_clone_needs_no_rerun(project, tmp_path):
    sh("dvc", "remote", "add", "-d", "storage", tmp_path / "remote", cwd=project)
    sh("git", "commit", "-qam", "Add a DVC remote", cwd=project)
    sh("dvc", "push", cwd=project)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", project, clone, cwd=tmp_path)
    sh("dvc", "pull", cwd=clone)
    for name in ("data/train.parquet", "data/test.parquet", "models/module.pt", "models/manual.pt"):
        assert (clone / name).read_bytes() == (project / name).read_bytes(), name
    assert UP_TO_DATE in sh("dvc", "status", cwd=clone).stdout
    repro = sh("dvc", "repro", cwd=clone).stdout
    assert "Running stage" not in repro and UP_TO_DATE in repro
    assert changed_files(clone) == set()
