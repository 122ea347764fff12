"""Numbers as people type them after `dvc exp run -S`: the stages read what DVC wrote (issue 9)."""

import json
import math

import pyarrow.parquet as pq
import pytest
from dvc.utils.serialize import dumps_yaml
from hypothesis import given
from hypothesis import strategies as st

from stages.params import ParamsError, load_params, parse_yaml
from tests.conftest import sh
from tests.helpers import raw_params


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_every_float_dvc_writes_reads_back_as_the_same_number(value):
    # DVC's own YAML writer, as `-S` uses it: 1e-06, 1e+300, 100000000.0 ...
    text = dumps_yaml({"lr": value})
    assert parse_yaml(text)["lr"] == value


def write_params(tmp_path, **overrides):
    path = tmp_path / "params.yaml"
    path.write_text(dumps_yaml(raw_params(**overrides)))
    return path


@pytest.mark.parametrize("typed", [1e4, 1e8, 10000.0])
def test_a_whole_float_count_is_that_count(tmp_path, typed):
    loaded = load_params(write_params(tmp_path, **{"data.n_samples": typed}))
    assert loaded.data.n_samples == int(typed) and type(loaded.data.n_samples) is int


@pytest.mark.parametrize(("key", "value"), [("data.n_samples", 2.5), ("epochs", 1.5)])
def test_a_fractional_count_is_refused(tmp_path, key, value):
    with pytest.raises(ParamsError, match=rf"{key} = {value} is not allowed; expected a whole"):
        load_params(write_params(tmp_path, **{key: value}))


def params_diff(project) -> dict:
    return json.loads(sh("dvc", "params", "diff", "--json", cwd=project).stdout)["params.yaml"]


@pytest.mark.e2e
def test_scientific_notation_after_dash_s_reaches_the_stages(project):
    # One run per form that used to fail: each run of the pipeline costs seconds.
    sh("dvc", "exp", "run", "-S", "lr=0.000001", "-S", "epochs=2", cwd=project)
    assert "lr: 1e-06 " in (project / "params.yaml").read_text()  # what DVC wrote
    assert params_diff(project)["lr"]["new"] == load_params(project / "params.yaml").lr == 1e-6

    sh("dvc", "exp", "run", "-S", "lr=1e-5", "-S", "data.n_samples=1e4", cwd=project)
    diff = params_diff(project)
    loaded = load_params(project / "params.yaml")
    assert diff["lr"]["new"] == loaded.lr == 1e-5
    assert diff["data.n_samples"]["new"] == loaded.data.n_samples == 10_000
    rows = sum(pq.read_metadata(project / f"data/{s}.parquet").num_rows for s in ("train", "test"))
    assert rows == 10_000
    metrics = json.loads((project / "metrics/module.json").read_text())
    assert math.isfinite(metrics["train_mse"]) and metrics["epochs"] == 2

    failed = sh("dvc", "exp", "run", "-S", "data.n_samples=2.5", cwd=project, check=False)
    assert failed.returncode != 0
    assert "data.n_samples = 2.5 is not allowed; expected a whole number" in failed.stderr
