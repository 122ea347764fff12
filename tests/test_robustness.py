"""Bad input, divergence, interrupted runs and thread counts, through the real command lines."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stages.artifacts import HOST
from tests.conftest import ENV, ROOT, sh


def stage(name: str, *args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )


def edited_params(old: str, new: str) -> str:
    """The project's params.yaml with one piece of text replaced, which must be there."""
    text = (ROOT / "params.yaml").read_text()
    assert text.count(old) == 1, f"params.yaml has no single {old!r}"
    return text.replace(old, new)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_bad_params_file_stops_generate_before_it_writes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(edited_params("x_dist: normal", "x_dist: cauchy"))
    result = stage(
        "generate", "--params", params, tmp_path / "train.parquet", tmp_path / "test.parquet"
    )
    assert_one_line_error(result, "data.x_dist = 'cauchy'", "normal, linspace, uniform")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_damaged_dataset_stops_a_trainer_with_the_file_named(tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"PAR1 not really")
    result = stage(
        "train_manual",
        "--params",
        ROOT / "params.yaml",
        data,
        tmp_path / "m.pt",
        tmp_path / "h.csv",
    )
    assert_one_line_error(result, str(data), "not a readable Parquet file")


def _pickle(path):
    torch.save({"linear.weight": np.float64(1.0), "linear.bias": object}, path)


def _nan(path):
    torch.save({"linear.weight": torch.full((1, 1), math.nan), "linear.bias": torch.zeros(1)}, path)


def _empty(path):
    path.touch()


def _view(path):
    torch.save(
        {"linear.weight": torch.zeros(100)[:1].view(1, 1), "linear.bias": torch.zeros(1)}, path
    )


@pytest.mark.parametrize(
    ("write_model", "problem"),
    [
        (_pickle, "refused: its pickle asks for more than tensors"),
        (_nan, "linear.weight is nan"),
        (_empty, "the model file is empty"),
        (_view, "a parameter is one number"),
    ],
)
def test_a_bad_model_stops_evaluate_with_the_file_named(
    built_project, tmp_path, write_model, problem
):
    bad = tmp_path / "module.pt"
    write_model(bad)
    p = built_project
    result = stage(
        "evaluate",
        "--params",
        p / "params.yaml",
        p / "data/train.parquet",
        p / "data/test.parquet",
        bad,
        p / "models/manual.pt",
        p / "plots/history/module.csv",
        p / "plots/history/manual.csv",
        tmp_path / "a.json",
        tmp_path / "b.json",
        tmp_path / "c.json",
        tmp_path / "d.json",
    )
    assert_one_line_error(result, str(bad), problem)
    assert not list(tmp_path.glob("*.json"))


def test_the_trained_models_do_not_depend_on_the_thread_count(tmp_path):
    # Chunks of 2^16 rows are above torch's parallel grain size, so with more threads a chunk's
    # sums would be split between them and round differently; the trainers pin one thread.
    params = tmp_path / "params.yaml"
    params.write_text(edited_params("n_samples: 1000 ", "n_samples: 300000 "))
    train = tmp_path / "train.parquet"
    assert stage("generate", "--params", params, train, tmp_path / "test.parquet").returncode == 0
    outputs = {}
    for threads in ("1", "3"):
        env = {**ENV, "OMP_NUM_THREADS": threads}  # torch's thread count when it starts
        for name in ("train_module", "train_manual"):
            model, history = tmp_path / f"{name}-{threads}.pt", tmp_path / f"{name}-{threads}.csv"
            args = ["--params", params, train, model, history]
            subprocess.run(
                [sys.executable, "-m", f"stages.{name}", *map(str, args)],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=True,
            )
            outputs[name, threads] = (model.read_bytes(), history.read_bytes())
    for name in ("train_module", "train_manual"):
        assert outputs[name, "1"] == outputs[name, "3"], name


def test_a_killed_stage_leaves_no_half_written_file_and_a_rerun_recovers(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(edited_params("n_samples: 1000 ", "n_samples: 30000000 "))
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    args = [sys.executable, "-m", "stages.generate", "--params", params, train, test]
    process = subprocess.Popen(args, cwd=ROOT, env=ENV)
    try:
        # The temporary file has a unique name: .train.parquet.PID.TOKEN.tmp.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = list(tmp_path.glob(f".train.parquet.{HOST}-{process.pid}.*.tmp"))
            if partial and partial[0].stat().st_size > 0:
                break
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert len(partial) == 1 and partial[0].exists()
    assert not train.exists()  # killed mid-write: no file under the real name

    params.write_text((ROOT / "params.yaml").read_text())
    assert stage("generate", "--params", params, train, test).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "params.yaml",
        "test.parquet",
        "train.parquet",
    ]


@pytest.mark.e2e
def test_a_diverging_experiment_completes_with_strict_json(project):
    sh("dvc", "exp", "run", "-n", "too-fast", "-S", "lr=5", cwd=project)
    for approach in ("module", "manual"):
        text = (project / f"metrics/{approach}.json").read_text()
        metrics = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in JSON"))
        assert metrics["diverged"] is True
        assert metrics["diverged_at_epoch"] == metrics["epochs"] + 1 < 100
        rows = (project / f"plots/history/{approach}.csv").read_text().splitlines()
        assert len(rows) == 1 + metrics["epochs"] + 1
    assert (project / "plots/loss.png").exists()
    shown = sh("dvc", "exp", "show", "--json", cwd=project).stdout
    assert "too-fast" in shown
