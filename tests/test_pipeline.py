"""End to end: the real `dvc repro` on a copy of the project, with real git."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from tests.conftest import ROOT, sh

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
    comparison = json.loads((p / "metrics/comparison.json").read_text())
    assert comparison["weight_diff"] <= 1e-5 and comparison["bias_diff"] <= 1e-5
    for png in ("fit", "loss", "params"):
        assert (p / f"plots/{png}.png").read_bytes().startswith(b"\x89PNG")


def test_a_fresh_clone_reproduces_the_committed_outputs_byte_for_byte(built_project):
    # built_project ran `dvc repro` on a copy of the committed files: nothing may differ.
    assert sh("git", "status", "--porcelain", cwd=built_project).stdout == ""
    assert "up to date" in sh("dvc", "status", cwd=built_project).stdout


def test_repro_force_is_byte_identical(project):
    outputs = ["data/train.parquet", "data/test.parquet", "models/module.pt", "models/manual.pt"]
    before = {name: (project / name).read_bytes() for name in outputs}
    sh("dvc", "repro", "-f", cwd=project)
    assert {name: (project / name).read_bytes() for name in outputs} == before
    assert sh("git", "status", "--porcelain", cwd=project).stdout == ""


def test_changing_lr_reruns_only_training_evaluate_and_plot(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.05 ", "lr: 0.1  ", 1))
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
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.05 ", "lr: abc  ", 1))
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


def history_rows(path: Path) -> list[dict[str, float]]:
    lines = path.read_text().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def test_the_readme_reference_commands_reproduce_the_known_behaviour(project):
    commands = [
        line.split()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("dvc exp run -n ref-")
    ]
    assert [c[4] for c in commands] == ["ref-module", "ref-manual"]

    sh(*commands[0], cwd=project)
    module = history_rows(project / "plots/history/module.csv")
    assert len(module) == 51
    assert module[0]["loss"] > 1000 and 20 < module[-1]["loss"] < 50
    assert abs(module[-1]["weight"] - 2.05) < 0.1
    assert abs(module[-1]["bias"] - module[0]["bias"]) < 0.2

    sh(*commands[1], cwd=project)
    manual = history_rows(project / "plots/history/manual.csv")
    assert len(manual) == 21
    assert (manual[0]["weight"], manual[0]["bias"]) == (16, 10)
    assert 200 < manual[0]["loss"] < 300 and 0.8 < manual[-1]["loss"] < 1.3
    assert "ref-module" in sh("dvc", "exp", "list", cwd=project).stdout
