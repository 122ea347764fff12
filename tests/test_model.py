"""Saving and safely loading the state_dicts both trainers write."""

import io
import math
import pickle
import re
import zipfile

import numpy as np
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


def test_a_missing_empty_or_damaged_file_gets_a_message_saying_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="model file not found"):
        load_parameters(tmp_path / "none.pt")
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(UserError, match=re.escape("the model file is empty (0 bytes)")):
        load_parameters(empty)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(saved()[:100])
    with pytest.raises(UserError, match="writes a zip archive, and this file is not"):
        load_parameters(damaged)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(UserError, match="writes a zip archive, and this file is not"):
        load_parameters(noise)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="not one"):
        load_parameters(tmp_path / "text.pt")
    with pytest.raises(UserError, match="cannot read the model file"):
        load_parameters(tmp_path)  # a folder


def saved(state: dict | None = None) -> bytes:
    """A state_dict as torch.save writes it (by default, the model's own: weight 1, bias 2)."""
    buffer = io.BytesIO()
    torch.save(
        state or {"linear.weight": torch.ones(1, 1), "linear.bias": torch.full((1,), 2.0)}, buffer
    )
    return buffer.getvalue()


def rezipped(
    original: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """The archive `original` rewritten entry by entry: some entries' bytes replaced (by the
    name under the archive folder, "data/0"), extra entries added, all stored or compressed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            name = info.filename.split("/", 1)[1]
            data = (replace or {}).get(name, source.read(info))
            target.writestr(info.filename, data, compress_type=compression, compresslevel=9)
        for name, data in (extra or {}).items():
            target.writestr(f"archive/{name}", data, compress_type=compression, compresslevel=9)
    return out.getvalue()


def refusal(tmp_path, content: bytes) -> str:
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        load_parameters(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def test_the_rezipped_archive_of_a_real_state_dict_still_loads(tmp_path):
    # The helper above keeps what torch needs: without changes, the rewritten file loads.
    path = tmp_path / "m.pt"
    path.write_bytes(rezipped(saved()))
    assert load_parameters(path) == (1.0, 2.0)


def test_a_weight_that_views_a_larger_storage_is_refused_before_loading(tmp_path):
    # torch.save writes the whole storage behind a view: 1000 floats for one (1, 1) weight.
    view = {"linear.weight": torch.zeros(1000)[:1].view(1, 1), "linear.bias": torch.zeros(1)}
    message = refusal(tmp_path, saved(view))
    assert "archive entry archive/data/0 expands to 4,000 bytes" in message
    assert "a parameter is one number, at most 8 bytes" in message


@pytest.mark.parametrize(
    ("storage", "size"),
    [
        (torch.zeros(2)[1:], 8),  # two float32, the weight the second one
        (torch.zeros(4, dtype=torch.float16)[:1], 8),  # four float16 in 8 bytes
    ],
)
def test_a_weight_in_a_storage_of_several_numbers_is_refused_after_loading(tmp_path, storage, size):
    view = {"linear.weight": storage.view(1, 1), "linear.bias": torch.zeros(1)}
    message = refusal(tmp_path, saved(view))
    assert f"linear.weight is a view into a storage of {size} bytes" in message


def test_a_compressed_archive_whose_entries_expand_beyond_a_model_is_refused(tmp_path):
    # 16 MiB of zeros deflate to 16 KB: the file is small, and torch.load would allocate the
    # entry's declared size before looking at it.
    bomb = rezipped(saved(), replace={"data/0": bytes(16 << 20)}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 64 * 1024
    assert "archive entry archive/data/0 expands to 16,777,216 bytes" in refusal(tmp_path, bomb)
    extra = rezipped(saved(), extra={"notes": bytes(1 << 20)}, compression=zipfile.ZIP_DEFLATED)
    assert "archive/notes expands to 1,048,576 bytes; more than a whole model file may hold" in (
        refusal(tmp_path, extra)
    )
    # Within every size, compression itself.
    assert "archive/data.pkl is compressed" in refusal(
        tmp_path, rezipped(saved(), compression=zipfile.ZIP_DEFLATED)
    )


def test_a_file_far_larger_than_a_model_or_with_many_entries_is_refused(tmp_path):
    padded = rezipped(saved(), extra={"padding": bytes(70_000)})
    assert "the file is 7" in refusal(tmp_path, padded)
    many = rezipped(saved(), extra={f"e{i}": b"" for i in range(40)})
    assert "the archive has 48 entries; a state_dict of this model has 8" in refusal(tmp_path, many)


def test_a_damaged_pickle_inside_a_valid_archive_is_called_damaged(tmp_path):
    pickle_bytes = zipfile.ZipFile(io.BytesIO(saved())).read("archive/data.pkl")
    for damaged in (pickle_bytes[:100], b"", np.random.default_rng(1).bytes(200)):
        message = refusal(tmp_path, rezipped(saved(), replace={"data.pkl": damaged}))
        assert "its pickle archive/data.pkl is damaged" in message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["linear.weight", "linear.bias"])
def test_a_non_finite_parameter_is_refused(tmp_path, key, value):
    state = {"linear.weight": torch.ones(1, 1), "linear.bias": torch.ones(1)}
    state[key] = torch.full_like(state[key], value)
    message = refusal(tmp_path, saved(state))
    assert f"{key} is {value}; a model's parameters must be finite numbers" in message


def test_a_meta_or_sparse_tensor_is_refused_with_what_it_is(tmp_path):
    meta = {"linear.weight": torch.zeros(1, 1, device="meta"), "linear.bias": torch.zeros(1)}
    assert "linear.weight is a tensor on the meta device, which holds a shape but no values" in (
        refusal(tmp_path, saved(meta))
    )
    sparse = {"linear.weight": torch.zeros(1, 1).to_sparse(), "linear.bias": torch.zeros(1)}
    assert "linear.weight must be a dense tensor" in refusal(tmp_path, saved(sparse))


def test_a_float64_or_float16_model_loads(tmp_path):
    path = tmp_path / "m.pt"
    for dtype in (torch.float64, torch.float16):
        state = {
            "linear.weight": torch.full((1, 1), 0.5, dtype=dtype),
            "linear.bias": torch.full((1,), -2.0, dtype=dtype),
        }
        path.write_bytes(saved(state))
        assert load_parameters(path) == (0.5, -2.0)
