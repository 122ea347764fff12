"""The model y = w·x + b as an nn.Module, its starting point, and saving and loading state_dicts.

Both trainers save the module's state_dict layout, so one loader serves both.
"""

import io
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from stages.artifacts import f32, write_bytes
from stages.cli import UserError

# The state_dict layout of LinearRegression: key → shape.
STATE_SHAPES = {"linear.weight": (1, 1), "linear.bias": (1,)}


class LinearRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # With one input feature, nn.Linear's matrix product is just w·x + b, so it is written
        # out on nn.Linear's own parameters. self.linear(x.unsqueeze(1)) gives the same values,
        # but its matrix products of n rows by one column (forward, and again for the weight's
        # gradient) make an epoch at n = 1e7 1.6 to 2 times as slow: `make bench` shows both.
        return x * self.linear.weight.view(()) + self.linear.bias


def initial_parameters(seed: int, weight: float | None, bias: float | None) -> tuple[float, float]:
    """The starting (weight, bias) of both trainers: the given values, or where None,
    nn.Linear's own default initialisation drawn from `seed` (uniform in [-1, 1] for one input)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    linear = nn.Linear(1, 1)
    torch.random.set_rng_state(generator_state)
    drawn_weight, drawn_bias = linear.weight.item(), linear.bias.item()
    return (
        f32(drawn_weight if weight is None else weight),
        f32(drawn_bias if bias is None else bias),
    )


def state_dict(weight: float, bias: float) -> dict[str, torch.Tensor]:
    return {
        "linear.weight": torch.tensor([[weight]], dtype=torch.float32),
        "linear.bias": torch.tensor([bias], dtype=torch.float32),
    }


def save_parameters(path: Path, weight: float, bias: float) -> None:
    """Save (weight, bias) as a LinearRegression state_dict, atomically.

    torch.save records the file's name inside the archive, so saving straight to a temporary
    file would change the bytes; serialising into memory first keeps them identical run to run.
    """
    buffer = io.BytesIO()
    torch.save(state_dict(weight, bias), buffer)
    write_bytes(path, buffer.getvalue())


# What a file must look like before torch.load sees it. A state_dict of LinearRegression, as
# torch.save writes it, is a zip archive of about 1.8 KB: a 250-byte pickle, two storages of one
# number each, and five small records. torch.load allocates every record at its declared size,
# so these bounds keep a hostile file from costing more memory than the file's own bytes.
MAX_MODEL_BYTES = 64 * 1024  # about 35 times the real size: room for a long archive name
MAX_ENTRIES = 32  # 8 in a real file
MAX_NUMBER_BYTES = 8  # a parameter is one number: float64 is the widest floating-point type


def load_parameters(path: Path) -> tuple[float, float]:
    """Load a saved state_dict safely and return (weight, bias).

    The file is read once, into memory, and checked as a zip archive before torch.load sees it:
    its size, its entries and what each declares it expands to (see MAX_MODEL_BYTES). Then
    weights_only=True refuses any pickle that would build arbitrary objects, so nothing in the
    file is executed; the keys and shapes must be exactly those of LinearRegression, and each
    parameter one finite number in a storage of its own.
    """
    data = _read_model_file(path)
    _check_archive(path, data)
    try:
        # A pickle protocol other than torch's 2 draws a UserWarning: noise on a refusal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message is a paragraph of advice; its one line of substance follows this tag.
        reason = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(error))
        raise UserError(
            f"{path}: refused: its pickle asks for more than tensors and plain values"
            + (f" ({reason[1][:150]})" if reason else "")
            + "; weights_only=True loads nothing else and runs no code"
        ) from None
    except Exception as error:  # a damaged file can fail anywhere in torch's parser
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"{path}: not a readable torch state_dict ({type(error).__name__}: {first_line[:200]})"
        ) from None
    if not isinstance(loaded, dict) or set(loaded) != set(STATE_SHAPES):
        found = (
            sorted(_shown(key) for key in loaded)[:5]
            if isinstance(loaded, dict)
            else type(loaded).__name__
        )
        raise UserError(
            f"{path}: expected a state_dict with keys {sorted(STATE_SHAPES)}; found {found}"
        )
    weight = _parameter(path, "linear.weight", loaded["linear.weight"])
    bias = _parameter(path, "linear.bias", loaded["linear.bias"])
    return weight, bias


def _shown(key: object) -> str:
    # A key may be anything a pickle holds: a huge integer's str() even raises.
    return key[:40] if isinstance(key, str) else type(key).__name__


def _read_model_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_MODEL_BYTES:
                raise UserError(
                    f"{path}: refused: the file is {size:,} bytes; a state_dict of this model "
                    f"takes about 2 KB, and nothing over {MAX_MODEL_BYTES // 1024} KiB is loaded"
                )
            data = file.read(MAX_MODEL_BYTES + 1)  # bounded even if the file is still growing
    except FileNotFoundError:
        raise UserError(f"{path}: model file not found; `dvc repro` creates it") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the model file ({error.strerror})") from None
    if len(data) > MAX_MODEL_BYTES:
        raise UserError(f"{path}: refused: the file is over {MAX_MODEL_BYTES // 1024} KiB")
    if not data:
        raise UserError(f"{path}: the model file is empty (0 bytes); `dvc repro` rebuilds it")
    return data


def _check_archive(path: Path, data: bytes) -> None:
    """Refuse a file that is not a zip archive as torch.save writes it, or whose entries could
    expand beyond a few KB, by reading the archive's directory (nothing is extracted)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except zipfile.BadZipFile:
        raise UserError(
            f"{path}: not a torch state_dict: torch.save writes a zip archive, and this file is "
            "not one (truncated, damaged, or another format)"
        ) from None
    if len(entries) > MAX_ENTRIES:
        raise UserError(
            f"{path}: refused: the archive has {len(entries):,} entries; a state_dict of this "
            "model has 8"
        )
    for entry in entries:
        # Entry names are <archive>/data.pkl, <archive>/data/0, ...: storages live under data/.
        is_storage = entry.filename.split("/")[1:2] == ["data"]
        if entry.file_size > (MAX_NUMBER_BYTES if is_storage else MAX_MODEL_BYTES):
            why = (
                f"a parameter is one number, at most {MAX_NUMBER_BYTES} bytes"
                if is_storage
                else f"more than a whole model file may hold ({MAX_MODEL_BYTES // 1024} KiB)"
            )
            raise UserError(
                f"{path}: refused: archive entry {entry.filename[:100]} expands to "
                f"{entry.file_size:,} bytes; {why}"
            )
    if sum(entry.file_size for entry in entries) > MAX_MODEL_BYTES:
        raise UserError(
            f"{path}: refused: the archive's entries expand to more than a whole model file may "
            f"hold ({MAX_MODEL_BYTES // 1024} KiB)"
        )
    # Within those sizes, compression itself: torch.save stores every entry as it is.
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise UserError(
                f"{path}: refused: archive entry {entry.filename[:100]} is compressed; torch.save "
                "stores every entry as it is"
            )
    pickles = [
        e for e in entries if e.filename.count("/") == 1 and e.filename.endswith("/data.pkl")
    ]
    if len(pickles) != 1:
        raise UserError(f"{path}: not a torch state_dict: the archive has no single data.pkl")
    # Walk the pickle's opcodes without running them, so that a damaged pickle is called damaged,
    # not "objects other than tensors" by torch's restricted unpickler.
    try:
        for _ in pickletools.genops(archive.read(pickles[0])):
            pass
    except Exception as error:  # genops and zipfile report damage in several exception types
        raise UserError(
            f"{path}: not a readable torch state_dict: its pickle {pickles[0].filename[:100]} is "
            f"damaged ({str(error)[:100]})"
        ) from None


def _parameter(path: Path, key: str, tensor: object) -> float:
    """The one number in a loaded parameter, after checking that it is nothing else."""
    shape = STATE_SHAPES[key]
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
        found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise UserError(f"{path}: {key} must be a tensor of shape {shape}; found {found}")
    if not tensor.is_floating_point():
        raise UserError(f"{path}: {key} must hold floating-point numbers; found {tensor.dtype}")
    if tensor.device.type != "cpu":
        raise UserError(
            f"{path}: {key} is a tensor on the {tensor.device.type} device, which holds a shape "
            "but no values; a saved model holds its numbers"
        )
    if tensor.layout != torch.strided:
        raise UserError(f"{path}: {key} must be a dense tensor; found layout {tensor.layout}")
    storage_bytes = tensor.untyped_storage().nbytes()
    if storage_bytes != tensor.element_size() or tensor.storage_offset() != 0:
        raise UserError(
            f"{path}: {key} is a view into a storage of {storage_bytes:,} bytes; a parameter of "
            f"this model is one number in a storage of its own ({tensor.element_size()} bytes)"
        )
    value = tensor.item()
    if not math.isfinite(value):
        raise UserError(
            f"{path}: {key} is {value}; a model's parameters must be finite numbers (training "
            "keeps the last finite values when it diverges)"
        )
    return value
