"""The text artifacts: strict JSON and the history CSV."""

import json
import math

import pytest

from stages.artifacts import History, atomic_path, f32, history_csv, read_history, write_json
from stages.cli import UserError


def test_json_is_strict_with_null_for_non_finite_values(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": math.nan, "b": math.inf, "c": 1.5, "d": None, "e": True})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": None, "c": 1.5, "d": None, "e": True}


def test_history_csv_round_trips_and_has_the_documented_columns(tmp_path):
    history = History()
    history.append(10.0, 0.1, 0.2)
    history.append(5.123456789, 0.30000001, -0.2)
    text = history_csv(history)
    assert text.splitlines() == ["epoch,loss,weight,bias", "0,10.0,0.1,0.2", "1,5.123457,0.3,-0.2"]
    path = tmp_path / "h.csv"
    path.write_text(text)
    assert read_history(path) == history
    assert read_history(path).updates == 1


def test_f32_gives_the_shortest_float32_decimal():
    assert f32(2.049999952316284) == 2.05
    assert f32(1 / 3) == 0.33333334


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a training history"),
        ("epoch,loss,weight,bias\n", "no rows"),
        ("epoch,loss,weight,bias\n0,1,2\n", "line 2"),
        ("epoch,loss,weight,bias\n1,1,2,3\n", "epoch 1"),
    ],
)
def test_a_bad_history_is_refused(tmp_path, text, message):
    path = tmp_path / "h.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_history(path)


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
