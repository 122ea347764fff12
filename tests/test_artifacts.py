"""Writing outputs safely (atomic, unique temporary files), strict JSON and the history CSV."""

import contextlib
import itertools
import json
import math
import os
import secrets
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from stages import artifacts
from stages.artifacts import (
    HOST,
    History,
    atomic_path,
    f32,
    history_csv,
    read_history,
    write_bytes,
    write_json,
)
from stages.cli import UserError
from tests.helpers import ROOT


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


def test_json_keeps_values_other_than_floats_and_never_writes_nan(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"name": "run", "epochs": 3, "losses": [1.5, 0.5]})
    assert json.loads(path.read_text()) == {"name": "run", "epochs": 3, "losses": [1.5, 0.5]}
    # Only floats at the top level become null; a NaN deeper inside would make the file invalid
    # JSON, so writing fails instead, and leaves no file.
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "nested.json", {"losses": [math.nan]})
    assert not (tmp_path / "nested.json").exists()


def test_a_history_whose_columns_differ_in_length_is_not_written_cut_short():
    # append() keeps the columns equal; a History built by hand may not, and its CSV would
    # silently lose the last rows of the longer columns.
    history = History(loss=[1.0, 0.5], weight=[0.1], bias=[0.2, 0.3])
    with pytest.raises(ValueError, match="zip"):
        history_csv(history)


HEADER = "epoch,loss,weight,bias\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a training history; expected the header ('epoch', 'loss', 'weight', 'bias')"),
        (HEADER, "the history has no rows"),
        (HEADER + "0,1,2\n", "line 2 is not 4 numbers: ['0', '1', '2']"),
        (HEADER + "1,1,2,3\n", "line 2 has epoch 1; expected 0"),
        (HEADER + "0,1,2,3\n2,1,2,3\n", "line 3 has epoch 2; expected 1"),
        (HEADER + "0,1,2,3,4\n", "line 2 is not 4 numbers: ['0', '1', '2', '3', '4']"),
        (HEADER + "0,1,2,3\n\n", "line 3 is not 4 numbers: []"),
        # A quoted field keeps its line break as written (the csv module reads the file with
        # newline=""); the row is still one line of the history.
        (HEADER + '0,"1\r\n2",2,3\n', "line 2 is not 4 numbers: ['0', '1\\r\\n2', '2', '3']"),
        (
            HEADER + "0,1,2," + "9" * 200_000 + "\n",
            "not a training history (field larger than field limit (131072))",
        ),
        (
            HEADER + "0,1,2,3\n1," + "x," * 10_000 + "\n",
            "line 3 is not 4 numbers: ['1', 'x', 'x', 'x', 'x', 'x', ...]",
        ),
    ],
)
def test_a_bad_history_is_refused(tmp_path, text, message):
    path = tmp_path / "h.csv"
    path.write_bytes(text.encode())  # as written: no newline translation
    with pytest.raises(UserError) as caught:
        read_history(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_missing_or_unreadable_history_is_named_with_the_reason(tmp_path):
    with pytest.raises(UserError) as caught:
        read_history(tmp_path / "none.csv")
    assert (
        str(caught.value)
        == f"{tmp_path / 'none.csv'}: cannot read the history (No such file or directory)"
    )
    with pytest.raises(UserError) as caught:
        read_history(tmp_path)  # a folder
    assert str(caught.value) == f"{tmp_path}: cannot read the history (Is a directory)"


READ_HISTORY = """
import sys
from stages.artifacts import read_history
from stages.cli import UserError
try:
    read_history(sys.argv[1])
except UserError as error:
    sys.stdout.buffer.write(str(error).encode())
"""


def test_a_history_is_read_as_utf8_whatever_the_locale(tmp_path):
    # Under the C locale without Python's UTF-8 mode, open() without an encoding decodes ASCII:
    # a non-ASCII byte would be called undecodable instead of being shown in its row.
    path = tmp_path / "h.csv"
    path.write_bytes((HEADER + "0,1,2,é\n").encode())
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    result = subprocess.run(
        [sys.executable, "-c", READ_HISTORY, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    assert result.stdout.decode() == f"{path}: line 2 is not 4 numbers: ['0', '1', '2', 'é']"


def test_a_binary_or_endless_history_is_refused_without_reading_it_all(tmp_path, monkeypatch):
    path = tmp_path / "h.csv"
    path.write_bytes(b"epoch,loss,weight,bias\n0,1,2,3\n\xff\xfe\x00")
    with pytest.raises(UserError, match="not a training history"):
        read_history(path)
    # Rows beyond what a run of the most epochs writes (the limit made small here; the reader's
    # limit is the documented one, which test_params checks).
    assert artifacts.MAX_EPOCHS == 10**6
    monkeypatch.setattr(artifacts, "MAX_EPOCHS", 5)
    rows = "".join(f"{epoch},1.0,2.0,3.0\n" for epoch in range(7))
    path.write_text("epoch,loss,weight,bias\n" + rows)
    with pytest.raises(UserError, match="more than 6 rows; a run has at most 5 epochs"):
        read_history(path)
    path.write_text("epoch,loss,weight,bias\n" + rows[: rows.index("\n6,") + 1])
    assert read_history(path).updates == 5


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def temporary_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_path_creates_a_new_file_under_a_unique_hidden_name(tmp_path):
    path = tmp_path / "out.txt"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        assert first.parent == second.parent == tmp_path
        for tmp in (first, second):
            assert tmp.name.startswith(f".out.txt.{HOST}-{os.getpid()}.")
            assert tmp.name.endswith(".tmp")
            assert tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_size == 0
        first.write_text("first")
        second.write_text("second")
    assert path.read_text() == "first"  # the outer block ends last, and its rename wins
    assert temporary_files(tmp_path) == []


def test_written_bytes_and_permissions_are_those_of_a_plain_write(tmp_path):
    old_umask = os.umask(0o022)
    try:
        write_bytes(tmp_path / "a.bin", b"\x00\x01payload")
        (tmp_path / "b.bin").write_bytes(b"\x00\x01payload")
    finally:
        os.umask(old_umask)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert a.read_bytes() == b.read_bytes()
    assert stat.S_IMODE(a.stat().st_mode) == stat.S_IMODE(b.stat().st_mode) == 0o644


def test_a_planted_symlink_is_never_followed(tmp_path, monkeypatch):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    path = tmp_path / "out.txt"
    # At the old fixed temporary name, and at the name the next writer would draw.
    (tmp_path / ".out.txt.tmp").symlink_to(target)
    tokens = itertools.chain(["0" * 16] * 2, (f"{i:016x}" for i in itertools.count(1)))
    monkeypatch.setattr(secrets, "token_hex", lambda _: next(tokens))
    planted = tmp_path / f".out.txt.{HOST}-{os.getpid()}.{'0' * 16}.tmp"
    planted.symlink_to(target)
    write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and not path.is_symlink()
    assert target.read_text() == "keep me"
    assert planted.is_symlink() and (tmp_path / ".out.txt.tmp").is_symlink()
    # A symlink at the output itself is replaced, not written through.
    path.unlink()
    path.symlink_to(target)
    write_bytes(path, b"newer")
    assert path.read_bytes() == b"newer" and not path.is_symlink()
    assert target.read_text() == "keep me"


def test_a_killed_writers_leftover_is_removed_and_a_live_writers_file_is_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    leftover = tmp_path / f".out.txt.{HOST}-{dead_pid}.{'a' * 16}.tmp"
    live = tmp_path / f".out.txt.{HOST}-{os.getpid()}.{'b' * 16}.tmp"
    other_output = tmp_path / f".out.txt.b.{HOST}-{dead_pid}.{'c' * 16}.tmp"  # out.txt.b's
    # Another machine writing into a shared folder: its process ids mean nothing here.
    other_host = tmp_path / f".out.txt.{HOST}x-{dead_pid}.{'d' * 16}.tmp"
    for file in (leftover, live, other_output, other_host):
        file.write_text("partial")
    write_bytes(tmp_path / "out.txt", b"done")
    assert temporary_files(tmp_path) == sorted([live.name, other_output.name, other_host.name])


# A live writer in another process. It may have inherited SIGHUP as ignored (nohup), so it sets
# the default action back: any signal 1 sent to it would end it.
LIVE_WRITER = """
import signal, sys
signal.signal(signal.SIGHUP, signal.SIG_DFL)
print("ready", flush=True)
sys.stdin.read()
"""


def test_checking_leftovers_keeps_what_it_cannot_rule_out_and_signals_no_one(tmp_path):
    writer = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout.readline() == b"ready\n"
        live = tmp_path / f".out.txt.{HOST}-{writer.pid}.{'b' * 16}.tmp"
        # A pid no process can have, too large for os.kill: it cannot be checked, so it stays.
        unknown = tmp_path / f".out.txt.{HOST}-{10**30}.{'c' * 16}.tmp"
        for file in (live, unknown):
            file.write_text("partial")
        write_bytes(tmp_path / "out.txt", b"done")
        assert temporary_files(tmp_path) == sorted([live.name, unknown.name])
    finally:
        writer.stdin.close()  # lets it end
    assert writer.wait() == 0  # ended by itself: the check (signal 0) sent it nothing


# Enters atomic_path and dies inside the block: no cleanup runs, as for a killed stage.
DIES_WRITING = """
import os, sys
from stages.artifacts import atomic_path
block = atomic_path(sys.argv[1])
block.__enter__()
os._exit(0)
"""


def test_a_writer_killed_inside_the_block_leaves_a_file_the_next_write_removes(tmp_path):
    # The temporary name a writer draws must be one the cleanup recognises as a leftover.
    path = tmp_path / "out.txt"
    subprocess.run([sys.executable, "-c", DIES_WRITING, str(path)], cwd=ROOT, check=True)
    assert len(temporary_files(tmp_path)) == 1
    write_bytes(path, b"done")
    assert temporary_files(tmp_path) == []


def test_a_leftover_removed_meanwhile_by_another_run_is_no_error(tmp_path, monkeypatch):
    # Two runs on one machine may clean up the same dead writer's file at once: the one that
    # finds it gone carries on. Here the other run removes it between the listing and the
    # removal, while the process check runs.
    leftover = tmp_path / f".out.txt.{HOST}-12345.{'a' * 16}.tmp"
    leftover.write_text("partial")

    def gone_meanwhile(pid: int) -> bool:
        leftover.unlink()
        return False

    monkeypatch.setattr(artifacts, "_process_exists", gone_meanwhile)
    write_bytes(tmp_path / "out.txt", b"done")
    assert (tmp_path / "out.txt").read_bytes() == b"done"
    assert temporary_files(tmp_path) == []


def test_no_free_temporary_name_after_100_collisions_is_an_error(tmp_path, monkeypatch):
    # Every draw gives the same token, and that name is taken: 100 tries, then a clear error.
    draws = []
    monkeypatch.setattr(secrets, "token_hex", lambda n: draws.append(n) or "0" * 16)
    path = tmp_path / "out.txt"
    (tmp_path / f".out.txt.{HOST}-{os.getpid()}.{'0' * 16}.tmp").write_text("taken")
    with pytest.raises(FileExistsError) as caught:
        write_bytes(path, b"new")
    assert str(caught.value) == f"{path}: no free temporary name beside it"
    assert draws == [8] * 100
    assert not path.exists()


def test_a_block_whose_temporary_file_vanished_fails_cleanly(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(UserError, match=r"temporary file .* was removed"), atomic_path(path) as tmp:
        tmp.write_text("half")
        tmp.unlink()
    assert not path.exists()


WRITER = """
import sys, time
from pathlib import Path
from stages.artifacts import write_bytes

path, fill, rounds = Path(sys.argv[1]), sys.argv[2].encode(), int(sys.argv[3])
while not path.with_name("go").exists():  # both writers start together
    time.sleep(0.001)
for _ in range(rounds):
    write_bytes(path, fill * 200_000)
"""


def test_concurrent_writers_of_one_output_never_mix_or_fail(tmp_path):
    path = tmp_path / "out.bin"
    contents = {b"a" * 200_000, b"b" * 200_000}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), fill, "200"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for fill in ("a", "b")
    ]
    seen = set()
    try:
        (tmp_path / "go").touch()
        # Whatever a reader sees while both write is one whole file of one writer.
        while any(writer.poll() is None for writer in writers):
            with contextlib.suppress(FileNotFoundError):
                seen.add(path.read_bytes())
    finally:
        for writer in writers:  # both end, even when the test fails
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(timeout=120)
            writer.kill()
    assert [(writer.wait(), writer.stderr.read()) for writer in writers] == [(0, ""), (0, "")]
    assert seen <= contents and path.read_bytes() in contents
    assert temporary_files(tmp_path) == []
    assert len(seen) == 2  # the reader saw both writers' files: they did overlap


def test_concurrent_threads_writing_one_output_never_mix_or_fail(tmp_path):
    path = tmp_path / "out.bin"

    def write(fill: bytes) -> None:
        for _ in range(100):
            write_bytes(path, fill * 100_000)

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(write, fill) for fill in (b"a", b"b", b"c", b"d")]:
            done.result()  # re-raises a writer's exception
    assert path.read_bytes() in {fill * 100_000 for fill in (b"a", b"b", b"c", b"d")}
    assert temporary_files(tmp_path) == []
