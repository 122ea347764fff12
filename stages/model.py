"""The model y = w·x + b as an nn.Module, its starting point, and saving and loading state_dicts.

Both trainers save the module's state_dict layout, so one loader serves both.
"""

import io
import pickle
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


def load_parameters(path: Path) -> tuple[float, float]:
    """Load a saved state_dict safely and return (weight, bias).

    weights_only=True refuses any pickle that would build arbitrary objects, so nothing in the
    file is executed; then the keys and shapes must be exactly those of LinearRegression.
    """
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: model file not found; `dvc repro` creates it") from None
    except pickle.UnpicklingError:
        raise UserError(
            f"{path}: refused: the file holds objects other than tensors (weights_only=True)"
        ) from None
    except Exception as error:  # a damaged file can fail anywhere in torch's parser
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise UserError(
            f"{path}: not a readable torch state_dict ({type(error).__name__}: {first_line})"
        ) from None
    if not isinstance(loaded, dict) or set(loaded) != set(STATE_SHAPES):
        found = sorted(loaded) if isinstance(loaded, dict) else type(loaded).__name__
        raise UserError(
            f"{path}: expected a state_dict with keys {sorted(STATE_SHAPES)}; found {found}"
        )
    for key, shape in STATE_SHAPES.items():
        tensor = loaded[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            found = (
                tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            )
            raise UserError(f"{path}: {key} must be a tensor of shape {shape}; found {found}")
        if not tensor.is_floating_point():
            raise UserError(f"{path}: {key} must hold floating-point numbers; found {tensor.dtype}")
    return loaded["linear.weight"].item(), loaded["linear.bias"].item()
