"""Writing outputs safely, and the small text artifacts: strict JSON metrics and CSV histories."""

import contextlib
import csv
import glob
import io
import json
import math
import os
import re
import reprlib
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.cli import UserError
from stages.params import MAX_EPOCHS

HISTORY_COLUMNS = ("epoch", "loss", "weight", "bias")


# A temporary file is named .NAME.HOST-PID.TOKEN.tmp: beside its output (a rename within one
# folder is atomic), hidden, unique to its writer, and with the writer's machine and process id,
# so that a later run on the same machine can tell a killed writer's leftover from a live one's
# file. (Trainers on several machines may write the same outputs into a shared folder.)
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TMP_REST = re.compile(r"(?P<pid>[0-9]+)\.[0-9a-f]{16}\.tmp")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a new, empty temporary file beside `path`; rename it onto `path` only if the block
    succeeds, and remove it otherwise.

    A killed or failed stage then leaves either the old file or nothing, never half a file. The
    temporary file is created exclusively under a name no other writer uses (as tempfile.mkstemp
    does), so two runs writing the same output at once each rename a whole file of their own
    (the last one wins), and a symlink planted beside the output is never followed. The file
    gets the permissions of any new file (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = _create_exclusive(path)
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            raise UserError(
                f"{path}: not written: its temporary file {tmp.name} was removed while this run "
                "wrote it (by hand, or by a run in another PID namespace on this machine)"
            ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path) -> Path:
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{HOST}-{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            # O_EXCL: fail if the name exists in any form, a symlink included, never open it.
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temporary name beside it")  # 100 random collisions


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary files of `path` left by writers on this machine that were killed:
    their process is gone. A live writer's file, another machine's, or one whose process cannot
    be checked, stays."""
    prefix = f".{path.name}.{HOST}-"
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        match = _TMP_REST.fullmatch(entry.name.removeprefix(prefix))
        if match and not _process_exists(int(match["pid"])):
            entry.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: checks that the process exists, sends nothing
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a real pid
        return True
    return True


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def f32(value: float) -> float:
    """The shortest decimal that reads back as the same float32: 2.05, not 2.049999952316284."""
    return float(str(np.float32(value)))


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def write_json(path: Path, payload: dict) -> None:
    """Write strictly valid JSON: a NaN or infinity becomes null, as JSON has no token for it."""
    clean = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in payload.items()}
    write_bytes(path, (json.dumps(clean, indent=2, allow_nan=False) + "\n").encode())


@dataclass
class History:
    """Per-epoch record of a training run. Row k is the state after k updates (row 0: the start)."""

    loss: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    bias: list[float] = field(default_factory=list)

    def append(self, loss: float, weight: float, bias: float) -> None:
        self.loss.append(f32(loss))
        self.weight.append(f32(weight))
        self.bias.append(f32(bias))

    @property
    def updates(self) -> int:
        """Updates applied to reach the last row (the trained model)."""
        return len(self.loss) - 1

    def diverged_at(self, epochs: int) -> int | None:
        """The epoch whose loss crossed the divergence bound, when training stopped before
        `epochs` updates; that row is not kept, so it is one past the last row."""
        return self.updates + 1 if self.updates < epochs else None


def history_csv(history: History) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HISTORY_COLUMNS)
    for epoch, row in enumerate(zip(history.loss, history.weight, history.bias, strict=True)):
        writer.writerow([epoch, *row])
    return out.getvalue()


def write_history(path: Path, history: History) -> None:
    write_bytes(path, history_csv(history).encode())


def read_history(path: Path) -> History:
    """Read a history CSV written by a trainer; raise UserError naming the file if it is not one.

    It is read row by row, and no further than a run of MAX_EPOCHS can write, so a file that is
    not a history costs neither memory nor a traceback.
    """
    history = History()
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = csv.reader(file)
            if tuple(next(rows, ())) != HISTORY_COLUMNS:
                raise UserError(
                    f"{path}: not a training history; expected the header {HISTORY_COLUMNS}"
                )
            for line, row in enumerate(rows, start=2):
                if line - 2 > MAX_EPOCHS:
                    raise UserError(
                        f"{path}: more than {MAX_EPOCHS + 1:,} rows; a run has at most "
                        f"{MAX_EPOCHS:,} epochs"
                    )
                try:
                    epoch, loss, weight, bias = int(row[0]), *map(float, row[1:])
                except (ValueError, IndexError):  # IndexError: an empty line
                    raise UserError(
                        f"{path}: line {line} is not 4 numbers: {reprlib.repr(row)}"
                    ) from None
                if epoch != line - 2:
                    raise UserError(f"{path}: line {line} has epoch {epoch}; expected {line - 2}")
                history.append(loss, weight, bias)
    except OSError as error:
        raise UserError(f"{path}: cannot read the history ({error.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a training history ({str(error)[:100]})") from None
    if not history.loss:
        raise UserError(f"{path}: the history has no rows")
    return history
