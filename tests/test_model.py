"""The starting parameters, and saving and safely loading the state_dicts both trainers write."""

import io
import math
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from stages.artifacts import f32
from stages.cli import UserError
from stages.model import (
    LinearRegression,
    initial_parameters,
    load_parameters,
    save_parameters,
)
from tests.helpers import endless_pipe


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


def test_initial_parameters_are_the_given_values_or_nn_linears_draw_from_the_seed():
    drawn = initial_parameters(1, None, None)
    # nn.Linear(1, 1)'s own initialisation under torch.manual_seed(1), rounded to float32's
    # shortest decimal; fork_rng puts the global generator back afterwards.
    with torch.random.fork_rng():
        torch.manual_seed(1)
        linear = nn.Linear(1, 1)
    assert drawn == (f32(linear.weight.item()), f32(linear.bias.item()))
    assert drawn != initial_parameters(2, None, None)
    # A given value replaces the draw of its own parameter only.
    assert initial_parameters(1, 16, None) == (16.0, drawn[1])
    assert initial_parameters(1, None, -3) == (drawn[0], -3.0)
    assert initial_parameters(1, 0.1, 2.05) == (0.1, 2.05)
    # Drawing leaves torch's global generator where it was.
    before = torch.random.get_rng_state()
    initial_parameters(7, None, None)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_parameters_given_as_whole_numbers_are_saved_as_float32(tmp_path):
    # An int is a valid float to a type checker, but torch.tensor would store it as int64,
    # which the loader then refuses.
    path = tmp_path / "m.pt"
    save_parameters(path, 2, -1)
    dtypes = {key: tensor.dtype for key, tensor in torch.load(path, weights_only=True).items()}
    assert dtypes == {"linear.weight": torch.float32, "linear.bias": torch.float32}
    assert load_parameters(path) == (2.0, -1.0)


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
        (
            {"weight": torch.zeros(1, 1), "bias": torch.zeros(1)},
            "expected a state_dict with keys ['linear.bias', 'linear.weight']; "
            "found ['bias', 'weight']",
        ),
        (
            {"linear.weight": torch.zeros(2, 1), "linear.bias": torch.zeros(1)},
            "linear.weight must be a tensor of shape (1, 1); found (2, 1)",
        ),
        (
            {"linear.weight": torch.zeros(1, 1), "linear.bias": torch.zeros(())},
            "linear.bias must be a tensor of shape (1,); found ()",
        ),
        (
            # weights_only=True loads plain values too: a list where a tensor belongs.
            {"linear.weight": [1.0], "linear.bias": torch.zeros(1)},
            "linear.weight must be a tensor of shape (1, 1); found list",
        ),
        (
            {"linear.weight": torch.zeros(1, 1, dtype=torch.int64), "linear.bias": torch.zeros(1)},
            "linear.weight must hold floating-point numbers; found torch.int64",
        ),
        (
            [torch.zeros(1)],
            "expected a state_dict with keys ['linear.bias', 'linear.weight']; found list",
        ),
    ],
)
def test_wrong_keys_shapes_or_types_are_refused(tmp_path, content, message):
    path = tmp_path / "m.pt"
    torch.save(content, path)
    with pytest.raises(UserError) as caught:
        load_parameters(path)
    assert str(caught.value) == f"{path}: {message}"


def test_unexpected_keys_are_named_shortened_or_by_their_type(tmp_path):
    # A key may be anything a pickle holds; five are shown, sorted, strings cut at 40 characters.
    path = tmp_path / "m.pt"
    keys = ["k" * 50, 7, "bias", "x", "y", "z"]  # six: the last one, "z", is left out
    torch.save({key: torch.zeros(1) for key in keys}, path)
    with pytest.raises(UserError) as caught:
        load_parameters(path)
    assert str(caught.value) == (
        f"{path}: expected a state_dict with keys ['linear.bias', 'linear.weight']; "
        f"found ['bias', 'int', '{'k' * 40}', 'x', 'y']"
    )


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


STATE = {"linear.weight": torch.ones(1, 1), "linear.bias": torch.full((1,), 2.0)}


def saved(state: dict | None = None) -> bytes:
    """A state_dict as torch.save writes it (by default, the model's own: weight 1, bias 2)."""
    buffer = io.BytesIO()
    torch.save(state or STATE, buffer)
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


# torch.save names the archive's folder after the file it writes ("archive" for a buffer), so a
# long file name gives long entry names: messages cut a name at 100 characters.
LONG_NAME = "n" * 150


def saved_as(tmp_path, name: str, state: dict) -> bytes:
    """`state` as torch.save writes it into a file called NAME.pt."""
    torch.save(state, tmp_path / f"{name}.pt")
    return (tmp_path / f"{name}.pt").read_bytes()


def test_a_weight_that_views_a_larger_storage_is_refused_before_loading(tmp_path):
    # torch.save writes the whole storage behind a view: 1000 floats for one (1, 1) weight.
    view = {"linear.weight": torch.zeros(1000)[:1].view(1, 1), "linear.bias": torch.zeros(1)}
    path = tmp_path / "m.pt"
    assert refusal(tmp_path, saved(view)) == (
        f"{path}: refused: archive entry archive/data/0 expands to 4,000 bytes; "
        "a parameter is one number, at most 8 bytes"
    )
    assert refusal(tmp_path, saved_as(tmp_path, LONG_NAME, view)) == (
        f"{path}: refused: archive entry {'n' * 100} expands to 4,000 bytes; "
        "a parameter is one number, at most 8 bytes"
    )


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
    path = tmp_path / "m.pt"
    deflated = zipfile.ZIP_DEFLATED
    # 16 MiB of zeros deflate to 16 KB: the file is small, and torch.load would allocate the
    # entry's declared size before looking at it.
    bomb = rezipped(saved(), replace={"data/0": bytes(16 << 20)}, compression=deflated)
    assert len(bomb) < 64 * 1024
    assert refusal(tmp_path, bomb) == (
        f"{path}: refused: archive entry archive/data/0 expands to 16,777,216 bytes; "
        "a parameter is one number, at most 8 bytes"
    )
    extra = rezipped(saved(), extra={"notes": bytes(1 << 20)}, compression=deflated)
    assert refusal(tmp_path, extra) == (
        f"{path}: refused: archive entry archive/notes expands to 1,048,576 bytes; "
        "more than a whole model file may hold (64 KiB)"
    )
    # Each entry within its own limit, but together more than a model file may hold.
    two = rezipped(saved(), extra={"a": bytes(40_000), "b": bytes(40_000)}, compression=deflated)
    assert refusal(tmp_path, two) == (
        f"{path}: refused: the archive's entries expand to more than a whole model file may "
        "hold (64 KiB)"
    )
    # Within every size, compression itself.
    assert refusal(tmp_path, rezipped(saved(), compression=deflated)) == (
        f"{path}: refused: archive entry archive/data.pkl is compressed; "
        "torch.save stores every entry as it is"
    )
    long = rezipped(saved_as(tmp_path, LONG_NAME, STATE), compression=deflated)
    assert refusal(tmp_path, long) == (
        f"{path}: refused: archive entry {'n' * 100} is compressed; "
        "torch.save stores every entry as it is"
    )


def test_entries_of_exactly_64_kib_in_all_pass_the_size_checks(tmp_path):
    # The limit itself is allowed: padded to 64 KiB in all, the archive is refused only because
    # it is compressed (the check after the sizes), not for its size.
    entries = zipfile.ZipFile(io.BytesIO(saved())).infolist()
    padding = 64 * 1024 - sum(entry.file_size for entry in entries)
    exact = rezipped(saved(), extra={"padding": bytes(padding)}, compression=zipfile.ZIP_DEFLATED)
    assert refusal(tmp_path, exact) == (
        f"{tmp_path / 'm.pt'}: refused: archive entry archive/data.pkl is compressed; "
        "torch.save stores every entry as it is"
    )


def test_a_model_file_of_exactly_64_kib_loads_and_one_byte_more_is_refused(tmp_path):
    # An extra stored entry pads the archive to any size; torch.load ignores it.
    path = tmp_path / "m.pt"
    unpadded = len(rezipped(saved(), extra={"padding": b""}))
    path.write_bytes(rezipped(saved(), extra={"padding": bytes(64 * 1024 - unpadded)}))
    assert path.stat().st_size == 64 * 1024
    assert load_parameters(path) == (1.0, 2.0)
    one_more = rezipped(saved(), extra={"padding": bytes(64 * 1024 + 1 - unpadded)})
    assert refusal(tmp_path, one_more) == (
        f"{path}: refused: the file is 65,537 bytes; a state_dict of this model takes about "
        "2 KB, and nothing over 64 KiB is loaded"
    )


def test_a_model_path_that_never_ends_is_read_no_further_than_the_limit(tmp_path):
    # The loader reads 64 KiB and one byte, refuses, and closes the pipe: the writer is cut off
    # instead of having its whole megabyte read.
    path = tmp_path / "m.pt"
    with endless_pipe(path, b"\0") as cut_off, pytest.raises(UserError) as caught:
        load_parameters(path)
    assert str(caught.value) == f"{path}: refused: the file is over 64 KiB"
    assert cut_off == [True]


def test_an_archive_of_32_entries_loads_and_one_more_is_refused(tmp_path):
    # A real state_dict has 8 entries; 24 empty extra ones make 32, the most allowed.
    path = tmp_path / "m.pt"
    path.write_bytes(rezipped(saved(), extra={f"e{i}": b"" for i in range(24)}))
    assert load_parameters(path) == (1.0, 2.0)
    many = rezipped(saved(), extra={f"e{i}": b"" for i in range(25)})
    assert refusal(tmp_path, many) == (
        f"{path}: refused: the archive has 33 entries; a state_dict of this model has 8"
    )


def test_an_archive_without_exactly_one_data_pkl_is_refused(tmp_path):
    # torch.load reads the pickle FOLDER/data.pkl: with none, or one in each of two folders,
    # there is no single model to load.
    with zipfile.ZipFile(io.BytesIO(saved())) as source:
        files = {info.filename: source.read(info) for info in source.infolist()}
    none = {name: data for name, data in files.items() if name != "archive/data.pkl"}
    two = {**files, "other/data.pkl": files["archive/data.pkl"]}
    for content in (none, two):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in content.items():
                archive.writestr(name, data)
        assert refusal(tmp_path, out.getvalue()) == (
            f"{tmp_path / 'm.pt'}: not a torch state_dict: the archive has no single data.pkl"
        )


def test_a_damaged_pickle_inside_a_valid_archive_is_called_damaged(tmp_path):
    path = tmp_path / "m.pt"
    pickle_bytes = zipfile.ZipFile(io.BytesIO(saved())).read("archive/data.pkl")
    for damaged, why in (
        (pickle_bytes[:100], "not enough data in stream to read uint4"),
        (b"", "pickle exhausted before seeing STOP"),
        (np.random.default_rng(1).bytes(200), "at position 0, opcode b'\\xff' unknown"),
    ):
        assert refusal(tmp_path, rezipped(saved(), replace={"data.pkl": damaged})) == (
            f"{path}: not a readable torch state_dict: its pickle archive/data.pkl is "
            f"damaged ({why})"
        )
    # Bytes changed on disk under an intact directory: zipfile finds the checksum wrong. Both the
    # entry's name and the reason are cut at 100 characters.
    original = saved_as(tmp_path, LONG_NAME, STATE)
    changed = original.replace(b"linear.weight", b"linear.WEIGHT")
    assert refusal(tmp_path, changed) == (
        f"{path}: not a readable torch state_dict: its pickle {'n' * 100} is damaged "
        f"(Bad CRC-32 for file '{'n' * 79})"
    )


def text_opcode(text: str) -> bytes:
    """A str in a pickle as torch.save writes it: opcode X (BINUNICODE), a 4-byte length, UTF-8."""
    return b"X" + len(text.encode()).to_bytes(4, "little") + text.encode()


def with_pickle(change) -> bytes:
    """A real state_dict whose data.pkl is replaced by change(its bytes)."""
    pickle_bytes = zipfile.ZipFile(io.BytesIO(saved())).read("archive/data.pkl")
    return rezipped(saved(), replace={"data.pkl": change(pickle_bytes)})


@pytest.mark.parametrize(
    ("pickle_bytes", "reason"),
    [
        # A pickle asking for a function (GLOBAL opcode "c": module, name): torch names it.
        (
            b"\x80\x02cio\nopen\n.",
            " (Unsupported global: GLOBAL io.open was not an allowed global by default)",
        ),
        # torch's one line is cut at 150 characters.
        (b"\x80\x02c" + b"m" * 200 + b"\nf\n.", " (Unsupported global: GLOBAL " + "m" * 123 + ")"),
        # A module torch blocks outright: its message has no such line, and none is shown.
        (b"\x80\x02cos\nsystem\n.", ""),
    ],
)
def test_a_pickle_asking_for_more_than_tensors_is_refused_with_torchs_reason(
    tmp_path, pickle_bytes, reason
):
    content = with_pickle(lambda _: pickle_bytes)
    assert refusal(tmp_path, content) == (
        f"{tmp_path / 'm.pt'}: refused: its pickle asks for more than tensors and plain values"
        f"{reason}; weights_only=True loads nothing else and runs no code"
    )


def test_a_payload_stays_refused_when_the_environment_tells_torch_to_load_anything(
    tmp_path, monkeypatch
):
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch.load unpickle anything, code included,
    # wherever a caller leaves weights_only unset; the loader sets it, so the variable changes
    # nothing here.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "executed"
    path = tmp_path / "m.pt"
    torch.save({"linear.weight": Payload(marker), "linear.bias": torch.zeros(1)}, path)
    with pytest.raises(UserError) as caught:
        load_parameters(path)
    assert not marker.exists()
    assert str(caught.value) == (
        f"{path}: refused: its pickle asks for more than tensors and plain values (Unsupported "
        "global: GLOBAL io.open was not an allowed global by default); weights_only=True loads "
        "nothing else and runs no code"
    )


def test_a_model_saved_on_a_gpu_loads_on_this_cpu(tmp_path):
    # A trainer on a GPU machine writes the storages' device, "cuda", into the pickle. This
    # machine has no GPU (and a GPU machine should still load the parameters on the CPU).
    path = tmp_path / "m.pt"
    path.write_bytes(
        with_pickle(lambda data: data.replace(text_opcode("cpu"), text_opcode("cuda")))
    )
    assert load_parameters(path) == (1.0, 2.0)


def test_an_error_inside_torch_load_is_reported_by_its_type_and_first_line(tmp_path):
    # The pickle names the weight's storage by a 300-digit key, which the archive lacks: torch
    # raises a one-line RuntimeError naming it, cut here at 200 characters.
    content = with_pickle(lambda data: data.replace(text_opcode("0"), text_opcode("9" * 300)))
    assert refusal(tmp_path, content) == (
        f"{tmp_path / 'm.pt'}: not a readable torch state_dict (RuntimeError: PytorchStreamReader "
        "failed locating file data/" + "9" * 154 + ")"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["linear.weight", "linear.bias"])
def test_a_non_finite_parameter_is_refused(tmp_path, key, value):
    state = {"linear.weight": torch.ones(1, 1), "linear.bias": torch.ones(1)}
    state[key] = torch.full_like(state[key], value)
    assert refusal(tmp_path, saved(state)) == (
        f"{tmp_path / 'm.pt'}: {key} is {value}; a model's parameters must be finite numbers "
        "(training keeps the last finite values when it diverges)"
    )


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
