"""End to end: the real `dvc repro` on a copy of the project, with real git.

Two kinds of check. Change detection: the committed dvc.lock and results are byte for byte what
the code produces; any edit of a stage's code changes dvc.lock, so these fail until `dvc repro`
is run and its results committed, and once they are, they accept whatever the code computes.
Oracles: the numbers in those results are what float64 maths on the data gives.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from tests.conftest import ROOT, sh
from tests.helpers import float32_drift, gradient_descent, set_params

pytestmark = pytest.mark.e2e

METRIC_KEYS = {
    "weight",
    "bias",
    "weight_error",
    "bias_error",
    "train_mse",
    "test_mse",
    "test_r2",
    "train_mse_ols_ratio",
    "epochs",
    "diverged",
    "diverged_at_epoch",
}
STAGES = ["generate", "train_module", "train_manual", "evaluate", "plot"]


def ran_stages(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_repro_writes_every_artifact_with_its_schema(built_project):
    p = built_project
    for name in ("train", "test"):
        schema = pq.ParquetFile(p / f"data/{name}.parquet").schema_arrow
        assert schema == pa.schema([("x", pa.float32()), ("y", pa.float32())])
    for approach in ("module", "manual"):
        state = torch.load(p / f"models/{approach}.pt", weights_only=True)
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            "linear.weight": (1, 1),
            "linear.bias": (1,),
        }
        lines = (p / f"plots/history/{approach}.csv").read_text().splitlines()
        params = yaml.safe_load((p / "params.yaml").read_text())
        assert lines[0] == "epoch,loss,weight,bias"
        assert len(lines) == 1 + params["epochs"] + 1
        metrics = json.loads((p / f"metrics/{approach}.json").read_text())
        assert metrics.keys() >= METRIC_KEYS
        assert metrics["diverged"] is False and metrics["epochs"] == params["epochs"]
        assert 1 <= metrics["train_mse_ols_ratio"] <= 1.01
    # The README: on the defaults both approaches agree to the last float32 bit.
    comparison = json.loads((p / "metrics/comparison.json").read_text())
    assert comparison == dict.fromkeys(comparison, 0.0) and len(comparison) == 4
    for png in ("fit", "loss", "params"):
        assert (p / f"plots/{png}.png").read_bytes().startswith(b"\x89PNG")


RERUN = (
    "the committed dvc.lock, metrics/ or plots/ are not what the code produces: run `dvc repro` "
    "and commit dvc.lock, metrics/ and plots/ (this check only compares; the oracle tests say "
    "whether the numbers are right)"
)


def test_a_fresh_clone_reproduces_the_committed_outputs_byte_for_byte(built_project):
    # built_project ran `dvc repro -f` on a copy of the committed files: nothing may differ.
    status = sh("git", "status", "--porcelain", cwd=built_project).stdout
    assert status == "", f"{RERUN}:\n{status}"
    assert "up to date" in sh("dvc", "status", cwd=built_project).stdout, RERUN


def read_columns(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    return tuple(table.column(name).to_numpy().astype(np.float64) for name in ("x", "y"))


def read_history_rows(path: Path) -> dict[str, np.ndarray]:
    lines = path.read_text().splitlines()
    values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    return dict(zip(lines[0].split(","), values.T, strict=True))


def assert_gradient_descent(history, xs, ys, w0, b0, lr, epochs):
    """A history is float64 full-batch gradient descent from (w0, b0), to float32 rounding."""
    weights, biases, _ = gradient_descent(xs, ys, w0, b0, lr, epochs)
    drift, loss_error = float32_drift(xs, ys, weights, biases, lr, 1 << 16)
    np.testing.assert_allclose(history["weight"], weights, rtol=0, atol=drift)
    np.testing.assert_allclose(history["bias"], biases, rtol=0, atol=drift)
    pairs = zip(history["weight"], history["bias"], strict=True)
    own = [np.mean((w * xs + b - ys) ** 2) for w, b in pairs]
    np.testing.assert_allclose(history["loss"], own, rtol=0, atol=loss_error)


def test_the_committed_results_are_what_the_maths_gives(built_project):
    """Histories, models and metrics of the built project against float64 maths on its data,
    read with pyarrow, torch.load and json, not with the stages' code."""
    p = built_project
    params = yaml.safe_load((p / "params.yaml").read_text())
    xs, ys = read_columns(p / "data/train.parquet")
    xt, yt = read_columns(p / "data/test.parquet")
    assert len(xs) + len(xt) == params["data"]["n_samples"]
    # The start: nn.Linear's own initialisation drawn from the seed, unless init sets it.
    torch.manual_seed(params["seed"])
    linear = nn.Linear(1, 1)
    w0 = params["init"]["weight"] if params["init"]["weight"] is not None else linear.weight.item()
    b0 = params["init"]["bias"] if params["init"]["bias"] is not None else linear.bias.item()
    w0, b0 = float(np.float32(w0)), float(np.float32(b0))
    (w_ols, b_ols), *_ = np.linalg.lstsq(np.stack([xs, np.ones_like(xs)], 1), ys, rcond=None)
    ols_mse = np.mean((w_ols * xs + b_ols - ys) ** 2)
    for approach in ("module", "manual"):
        history = read_history_rows(p / f"plots/history/{approach}.csv")
        np.testing.assert_array_equal(history["epoch"], np.arange(params["epochs"] + 1))
        assert_gradient_descent(history, xs, ys, w0, b0, params["lr"], params["epochs"])
        state = torch.load(p / f"models/{approach}.pt", weights_only=True)
        w, b = state["linear.weight"].item(), state["linear.bias"].item()
        # The CSV and the JSON print the shortest decimal of each float32: compare as float32.
        last = (np.float32(history["weight"][-1]), np.float32(history["bias"][-1]))
        assert (np.float32(w), np.float32(b)) == last
        metrics = json.loads((p / f"metrics/{approach}.json").read_text())
        train_mse, test_mse = np.mean((w * xs + b - ys) ** 2), np.mean((w * xt + b - yt) ** 2)
        expected = {
            "weight_error": abs(w - params["data"]["weight"]),
            "bias_error": abs(b - params["data"]["bias"]),
            "train_mse": train_mse,
            "test_mse": test_mse,
            "test_r2": 1 - test_mse / np.var(yt),
            "train_mse_ols_ratio": train_mse / ols_mse,
        }
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, rel=1e-9), (approach, key)
        assert (np.float32(metrics["weight"]), np.float32(metrics["bias"])) == last


def test_repro_force_is_byte_identical(project):
    outputs = ["data/train.parquet", "data/test.parquet", "models/module.pt", "models/manual.pt"]
    before = {name: (project / name).read_bytes() for name in outputs}
    sh("dvc", "repro", "-f", cwd=project)
    assert {name: (project / name).read_bytes() for name in outputs} == before
    assert sh("git", "status", "--porcelain", cwd=project).stdout == ""


def test_changing_lr_reruns_only_training_evaluate_and_plot(project):
    lr = yaml.safe_load((project / "params.yaml").read_text())["lr"]
    set_params(project / "params.yaml", lr=2 * lr)
    output = sh("dvc", "repro", cwd=project).stdout
    assert ran_stages(output) == ["train_module", "train_manual", "evaluate", "plot"]
    changed = sh("git", "status", "--porcelain", cwd=project).stdout
    assert "metrics/module.json" in changed and "dvc.lock" in changed


def test_changing_plot_code_reruns_only_plot(project):
    with (project / "stages/plot.py").open("a") as file:
        file.write("\n# a comment changes the file's hash\n")
    assert ran_stages(sh("dvc", "repro", cwd=project).stdout) == ["plot"]


def test_each_stage_lists_exactly_the_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        code = {d for d in stage["deps"] if d.startswith("stages/")}
        assert code == imported_modules(name), name


def imported_modules(stage: str) -> set[str]:
    """The files of the `stages` package that `python -m stages.<stage>` loads."""
    script = (
        f"import sys, stages.{stage}\n"
        "for module in list(sys.modules.values()):\n"
        "    if module.__name__.split('.')[0] == 'stages':\n"
        "        print(module.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {Path(file).relative_to(ROOT).as_posix() for file in out.split()}


# Libraries a stage must not load, not even through another library: each stage is its own
# process, so every import is paid again on every `dvc repro` (issue 5). pandas would come in
# through pyarrow's numpy conversions whenever it is installed.
NOT_IMPORTED = {
    "generate": {"torch", "matplotlib", "pandas"},
    "train_module": {"matplotlib", "pandas"},
    "train_manual": {"matplotlib", "pandas", "torch._dynamo"},
    "evaluate": {"matplotlib", "pandas", "torch._dynamo"},
    "plot": {"torch", "pandas"},
}
# Runs `python -m <module> <args>`, then prints the modules it loaded. pandas is replaced by a
# stand-in that records the attempt and fails like a missing package, so that an import of it
# shows whether or not pandas is installed here.
RECORD_IMPORTS = """
import importlib.abc, importlib.machinery, json, runpy, sys
attempted = set()
class StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            return importlib.machinery.ModuleSpec(name, self)
    def exec_module(self, module):
        attempted.add(module.__name__)
        raise ImportError("no pandas in this test")
sys.meta_path.insert(0, StandIn())
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as end:
    assert not end.code, end.code
print(json.dumps(sorted(attempted | set(sys.modules))))
"""


def test_each_stage_runs_without_the_libraries_it_does_not_need(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages.keys() == NOT_IMPORTED.keys()
    for name, stage in stages.items():
        python, dash_m, *command = stage["cmd"].split()
        assert (python, dash_m) == ("python", "-m")
        out = sh(sys.executable, "-c", RECORD_IMPORTS, *command, cwd=project).stdout
        loaded = set(json.loads(out.splitlines()[-1]))
        assert "pyarrow" in loaded  # what every stage needs does show
        assert not NOT_IMPORTED[name] & loaded, (name, NOT_IMPORTED[name] & loaded)
    assert "up to date" in sh("dvc", "status", cwd=project).stdout


def test_a_bad_param_fails_the_stage_with_one_line_and_no_traceback(project):
    set_params(project / "params.yaml", lr="abc")
    result = sh("dvc", "repro", cwd=project, check=False)
    assert result.returncode != 0
    assert (
        "error: params.yaml: lr = 'abc' is not allowed; expected a finite number > 0"
        in result.stderr
    )
    assert "Traceback" not in result.stderr + result.stdout
    # DVC deleted the failed stage's outputs before running it; the README's recovery commands
    # bring back the last good state without re-running anything.
    sh("git", "checkout", "--", "params.yaml", "dvc.lock", "metrics", "plots", cwd=project)
    sh("dvc", "checkout", cwd=project)
    assert "up to date" in sh("dvc", "status", cwd=project).stdout
    assert sh("git", "status", "--porcelain", cwd=project).stdout == ""


def reference_overrides(command: list[str]) -> dict[str, object]:
    """The -S key=value pairs of a `dvc exp run` command line, values read as YAML."""
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "-S"]
    return {key: yaml.safe_load(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def test_the_readme_reference_commands_reproduce_the_known_behaviour(project):
    commands = [
        line.split()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("dvc exp run -n ref-")
    ]
    assert [c[4] for c in commands] == ["ref-module", "ref-manual"]
    for command in commands:
        sh(*command, cwd=project)
        overrides = reference_overrides(command)
        lr, epochs = overrides["lr"], overrides["epochs"]
        xs, ys = read_columns(project / "data/train.parquet")
        assert len(xs) == overrides["data.n_samples"]  # test_fraction 0: every row trains
        for approach in ("module", "manual"):
            history = read_history_rows(project / f"plots/history/{approach}.csv")
            assert len(history["loss"]) == epochs + 1
            w0, b0 = history["weight"][0], history["bias"][0]
            if overrides["init.weight"] is not None:
                assert (w0, b0) == (overrides["init.weight"], overrides["init.bias"])
            # Every row is full-batch gradient descent from there, to float32 rounding.
            assert_gradient_descent(history, xs, ys, w0, b0, lr, epochs)
    assert "ref-module" in sh("dvc", "exp", "list", cwd=project).stdout
