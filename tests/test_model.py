"""Saving and safely loading the state_dicts both trainers write."""

import io
import pickle
import re

import pytest
import torch

from stages.cli import UserError
from stages.model import LinearRegression, load_parameters, save_parameters


def test_saved_parameters_load_into_the_module_and_back(tmp_path):
    path = tmp_path / "m.pt"
    save_parameters(path, 2.5, -0.75)
    model = LinearRegression()
    model.load_state_dict(torch.load(path, weights_only=True))
    assert model(torch.tensor([0.0, 2.0])).tolist() == [-0.75, 4.25]
    assert load_parameters(path) == (2.5, -0.75)
    assert list(tmp_path.iterdir()) == [path]


def test_saving_twice_gives_the_same_bytes(tmp_path):
    save_parameters(tmp_path / "a.pt", 1.0, 2.0)
    save_parameters(tmp_path / "b.pt", 1.0, 2.0)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


class Payload:
    """Unpickling this would create a file: the proof that code in a model file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"linear.weight": Payload(marker), "linear.bias": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="refused"):
        load_parameters(path)
    assert not marker.exists()
    # A bare pickle file (no torch zip archive) is refused the same way.
    path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(UserError):
        load_parameters(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weight": torch.zeros(1, 1), "bias": torch.zeros(1)}, "expected a state_dict with keys"),
        ({"linear.weight": torch.zeros(2, 1), "linear.bias": torch.zeros(1)}, "shape (1, 1)"),
        ({"linear.weight": torch.zeros(1, 1), "linear.bias": torch.zeros(())}, "shape (1,)"),
        (
            {"linear.weight": torch.zeros(1, 1, dtype=torch.int64), "linear.bias": torch.zeros(1)},
            "floating-point",
        ),
        ([torch.zeros(1)], "found list"),
    ],
)
def test_wrong_keys_shapes_or_types_are_refused(tmp_path, content, message):
    path = tmp_path / "m.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=re.escape(message)) as caught:
        load_parameters(path)
    assert str(caught.value).startswith(str(path))


def test_a_missing_or_damaged_file_is_refused(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load_parameters(tmp_path / "none.pt")
    buffer = io.BytesIO()
    torch.save({"linear.weight": torch.zeros(1, 1), "linear.bias": torch.zeros(1)}, buffer)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(buffer.getvalue()[:100])
    with pytest.raises(UserError, match="not a readable torch state_dict"):
        load_parameters(damaged)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError):
        load_parameters(tmp_path / "text.pt")
