"""Bad input, divergence, interrupted runs and thread counts, through the real command lines."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stages import train_manual, train_module
from tests.conftest import ENV, ROOT, sh
from tests.test_training import dataset


def stage(name: str, *args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_bad_params_file_stops_generate_before_it_writes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        (ROOT / "params.yaml").read_text().replace("x_dist: normal", "x_dist: cauchy")
    )
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


def test_a_pickle_model_stops_evaluate_with_the_file_named(built_project, tmp_path):
    evil = tmp_path / "module.pt"
    torch.save({"linear.weight": np.float64(1.0), "linear.bias": object}, evil)
    p = built_project
    result = stage(
        "evaluate",
        "--params",
        p / "params.yaml",
        p / "data/train.parquet",
        p / "data/test.parquet",
        evil,
        p / "models/manual.pt",
        p / "plots/history/module.csv",
        p / "plots/history/manual.csv",
        tmp_path / "a.json",
        tmp_path / "b.json",
        tmp_path / "c.json",
    )
    assert_one_line_error(result, str(evil))
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("threads", [2, 3])
def test_training_does_not_depend_on_the_thread_count(threads):
    x, y, (w0, b0), p = dataset(**{"data.n_samples": 200_000})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [fit(x, y, w0, b0, p.lr, 5) for fit in (train_module.fit, train_manual.fit)]
        torch.set_num_threads(threads)
        many = [fit(x, y, w0, b0, p.lr, 5) for fit in (train_module.fit, train_manual.fit)]
    finally:
        torch.set_num_threads(before)
    assert one == many


def test_a_killed_stage_leaves_no_half_written_file_and_a_rerun_recovers(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        (ROOT / "params.yaml").read_text().replace("n_samples: 1000 ", "n_samples: 30000000 ")
    )
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    args = [sys.executable, "-m", "stages.generate", "--params", params, train, test]
    process = subprocess.Popen(args, cwd=ROOT, env=ENV)
    partial = tmp_path / ".train.parquet.tmp"
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert partial.exists() and not train.exists()  # killed mid-write: no file under the real name

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
