"""Progress of the trainers: a live bar on a terminal, one summary line otherwise."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.conftest import ENV, ROOT


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.generate",
            folder / "train.parquet",
            folder / "test.parquet",
        ],
        cwd=ROOT,
        env=ENV,
        check=True,
    )
    return folder / "train.parquet"


def train_command(train_data, folder):
    return [
        sys.executable,
        "-m",
        "stages.train_manual",
        train_data,
        folder / "m.pt",
        folder / "h.csv",
    ]


def test_without_a_terminal_a_trainer_prints_one_summary_line(train_data, tmp_path):
    result = subprocess.run(
        train_command(train_data, tmp_path),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("train_manual: trained 100 epochs: loss ")


def read_until_closed(fd: int, timeout: float) -> bytes:
    """Everything written to a pty until the other side closes it, or fail after `timeout` s."""
    output, deadline = b"", time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the trainer did not finish within {timeout} s; it printed {output!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # Linux reports the closed terminal as EIO once the process has ended
            return output
        if not chunk:
            return output
        output += chunk


def test_on_a_terminal_a_trainer_shows_a_progress_bar(train_data, tmp_path):
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        train_command(train_data, tmp_path),
        cwd=ROOT,
        env=ENV,
        stderr=follower,
        stdout=subprocess.DEVNULL,
    )
    os.close(follower)
    try:
        output = read_until_closed(leader, timeout=120)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()  # a no-op once it has ended; ends it if the test failed first
        process.wait()
        os.close(leader)
    text = output.decode()
    assert "\rtrain_manual [####################] epoch 100/100 loss " in text
    assert text.rstrip().splitlines()[-1].startswith("train_manual: trained 100 epochs")
