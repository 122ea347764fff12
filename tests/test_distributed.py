"""Training on several processes and "machines" with torch.distributed: the same bytes, clean
failures, and every process ends (issue 10)."""

import contextlib
import faulthandler
import importlib
import itertools
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
from dvc.utils.serialize import dumps_yaml

from stages import distributed, training
from stages.cli import UserError
from stages.data import dataset_writer, read_dataset
from stages.training import Shard, exact_sum
from tests.conftest import ENV, ROOT, sh
from tests.helpers import raw_params

TRAINERS = ("train_module", "train_manual")
# Rows generated: 240,000 of them train, five chunks of 2^16 in one row group, so that two or
# three processes own different numbers of chunks and share the row group they read.
ROWS = 300_000
EPOCHS = 20
# A generous bound for a stage that must end on its own: a hang fails the test, not CI.
HANG = 120


# --- the pieces, in one process --------------------------------------------------------------


@pytest.mark.parametrize(("value", "count"), [(None, 1), ("1", 1), (" 3 ", 3), ("64", 64)])
def test_the_worker_count_comes_from_linreg_workers(monkeypatch, value, count):
    if value is None:
        monkeypatch.delenv("LINREG_WORKERS", raising=False)
    else:
        monkeypatch.setenv("LINREG_WORKERS", value)
    assert distributed.workers() == count


# "²" and "٢" are digits to str.isdigit(); int() refuses the first and reads the second as 2.
@pytest.mark.parametrize("value", ["0", "65", "two", "-1", "1.5", "", "²", "٢", "2²"])
def test_a_worker_count_outside_1_to_64_is_refused_with_the_range(monkeypatch, value):
    monkeypatch.setenv("LINREG_WORKERS", value)
    with pytest.raises(UserError) as caught:
        distributed.workers()
    assert str(caught.value) == (
        f"LINREG_WORKERS = {value!r} is not allowed; expected a whole number from 1 to 64 "
        "(the processes one trainer starts on this machine)"
    )


@pytest.mark.parametrize("digits", [25, 5000])  # int() refuses over 4,300 digits
def test_a_long_worker_count_is_shown_cut_to_20_characters(monkeypatch, digits):
    monkeypatch.setenv("LINREG_WORKERS", "1" * digits)
    with pytest.raises(UserError) as caught:
        distributed.workers()
    assert str(caught.value).startswith(f"LINREG_WORKERS = '{'1' * 20}' is not allowed")


def test_a_process_knows_it_runs_under_torchrun_by_torchruns_variable(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert not distributed.under_torchrun()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert distributed.under_torchrun()


def test_without_fork_the_stage_says_to_use_torchrun(monkeypatch):
    monkeypatch.setattr(distributed.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(UserError) as caught:
        distributed.start_workers("train_manual", 2, lambda: None)
    assert str(caught.value) == (
        f"LINREG_WORKERS > 1 needs the fork start method, which {sys.platform} does not have; "
        "run the stage under torchrun instead (see the README)"
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@pytest.fixture
def handlers_restored():
    """_worker changes this process's signal handlers and faulthandler: put them back."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    was_enabled = faulthandler.is_enabled()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    if was_enabled:
        faulthandler.enable(file=sys.__stderr__)


def test_a_forked_worker_ends_on_the_launchers_signals_and_reports_a_user_error(
    handlers_restored, capsys
):
    seen = {}

    def work():
        seen.update({sig: signal.getsignal(sig) for sig in STOP_SIGNALS})
        seen["faulthandler"] = faulthandler.is_enabled()
        raise UserError("bad share")

    signal.signal(signal.SIGTERM, lambda *_: None)  # as the launcher's handler, copied by fork
    faulthandler.enable(file=sys.__stderr__)
    with pytest.raises(SystemExit) as caught:
        distributed._worker(work)
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: bad share\n"
    assert seen == {**dict.fromkeys(STOP_SIGNALS, signal.SIG_DFL), "faulthandler": False}


def test_a_forked_worker_prints_the_traceback_of_an_unexpected_error(handlers_restored, capsys):
    def work():
        raise ZeroDivisionError("a bug")

    with pytest.raises(SystemExit) as caught:
        distributed._worker(work)
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("ZeroDivisionError: a bug\n")


@pytest.mark.parametrize(
    ("exit_code", "message"),
    [
        (None, None),
        (5, "train_manual: worker 1 of 2 failed with exit code 5; the stage stopped the others "
         "and wrote no outputs"),
    ],
)  # fmt: skip
def test_the_real_launcher_forks_this_process_and_names_a_failed_worker(
    handlers_restored, monkeypatch, exit_code, message
):
    # torch's launcher, forking the test process itself: what start_workers does with a worker
    # that ends with an exit code of its own (a worker's errors print their own lines).
    for name in ("LINREG_STARTED_BY", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        monkeypatch.setenv(name, "")  # start_workers and the launcher set them: put them back

    def work():
        assert os.environ["WORLD_SIZE"] == "2" and distributed.under_torchrun()
        if exit_code is not None and os.environ["RANK"] == "1":
            raise SystemExit(exit_code)

    if message is None:
        distributed.start_workers("train_manual", 2, work)
        return
    with pytest.raises(UserError) as caught:
        distributed.start_workers("train_manual", 2, work)
    assert str(caught.value) == message


@pytest.mark.parametrize("n", [1, 65_535, 65_536, 65_537, 300_000, 10**10])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_shards_cover_every_chunk_and_row_once(n, size):
    shards = [Shard.of(n, rank, size) for rank in range(size)]
    assert shards[0].first == 0 and shards[-1].stop == math.ceil(n / training.CHUNK_ROWS)
    assert shards[0].rows[0] == 0 and shards[-1].rows[1] == n
    for before, after in itertools.pairwise(shards):
        assert before.stop == after.first and before.rows[1] == after.rows[0]
    for shard in shards:  # chunk boundaries are fixed by row index, whatever the process count
        assert shard.rows[0] == min(shard.first * training.CHUNK_ROWS, n)
        assert abs((shard.stop - shard.first) - n / training.CHUNK_ROWS / size) < 1 + 1e-9


def test_the_exact_sum_is_the_true_sum_rounded_once_in_any_order():
    rng = np.random.default_rng(0)
    # Magnitudes from 1e-8 to 1e8 and both signs: adding in float32 or float64 would lose the
    # small ones, and by an amount that depends on the order.
    scale = 10.0 ** rng.integers(-8, 8, size=(500, 3))
    values = (rng.normal(size=(500, 3)) * scale).astype(np.float32)
    true = [float(sum(map(Fraction, column.tolist()))) for column in values.T]
    assert list(exact_sum(torch.from_numpy(values))) == true
    shuffled = values[random.Random(1).sample(range(500), 500)]
    assert list(exact_sum(torch.from_numpy(shuffled))) == true


def chunk_table(name: str, x, y, shard: Shard) -> torch.Tensor:
    """The table that `shard`'s process fills in trainer `name`, from the start (0.5, -0.5)."""
    trainer = importlib.import_module(f"stages.{name}")
    start, stop = shard.rows
    if name == "train_module":
        model = trainer.LinearRegression()
        with torch.no_grad():
            model.linear.weight.fill_(0.5)
            model.linear.bias.fill_(-0.5)
        loss_fn = torch.nn.MSELoss(reduction="sum")
        return trainer.chunk_table(model, loss_fn, x[start:stop], y[start:stop], shard)
    w, b = torch.tensor(0.5, requires_grad=True), torch.tensor(-0.5, requires_grad=True)
    return trainer.chunk_table(x[start:stop], y[start:stop], w, b, shard)


@pytest.mark.parametrize("name", TRAINERS)
def test_the_tables_of_the_shards_add_up_to_the_one_process_table(name, monkeypatch):
    """What all_reduce does across processes, done here by hand: every shard's table, added."""
    monkeypatch.setattr(training, "CHUNK_ROWS", 64)  # 1,000 rows: 16 chunks
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=1000).astype(np.float32))
    y = 3 * x + 0.5 + torch.from_numpy(rng.normal(size=1000).astype(np.float32))
    whole = chunk_table(name, x, y, Shard.of(1000))
    assert (whole != 0).all()  # every chunk contributes to every column
    for size in (2, 3, 16, 20):  # with 20 processes, four own no chunk at all
        tables = [chunk_table(name, x, y, Shard.of(1000, rank, size)) for rank in range(size)]
        assert torch.equal(sum(tables), whole), size


def share_of(rows: int = 1000):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=rows).astype(np.float32))
    y = 3 * x + 0.5 + torch.from_numpy(rng.normal(size=rows).astype(np.float32))
    return x, y


@pytest.mark.parametrize("name", TRAINERS)
def test_a_trainer_given_one_share_divides_its_rows_by_every_row(name, monkeypatch):
    # Without the other processes, one share's loss is its squared errors over the full n: what
    # it adds to the total. Dividing by its own row count would make the shares not add up.
    monkeypatch.setattr(training, "CHUNK_ROWS", 64)
    x, y = share_of()
    shard = Shard.of(1000, 1, 3)
    start, stop = shard.rows
    fit = importlib.import_module(f"stages.{name}").fit
    history = fit(x[start:stop], y[start:stop], 0.5, -0.5, 0.1, 0, None, shard)
    errors = 0.5 * x[start:stop].double() - 0.5 - y[start:stop].double()
    assert history.loss == [pytest.approx(float((errors**2).sum()) / 1000, rel=1e-6)]


@pytest.mark.parametrize("name", TRAINERS)
def test_in_a_group_of_one_process_the_all_reduce_path_gives_the_same_history(name, monkeypatch):
    # A real gloo process group, of this process alone: the trainer then adds the tables with
    # all_reduce, as on several processes, and must get what it gets with no group at all.
    monkeypatch.setattr(training, "CHUNK_ROWS", 64)
    x, y = share_of()
    fit = importlib.import_module(f"stages.{name}").fit
    alone = fit(x, y, 0.5, -0.5, 0.1, 5)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        grouped = fit(x, y, 0.5, -0.5, 0.1, 5, None, Shard.of(1000, 0, 1))
    finally:
        dist.destroy_process_group()
    assert (grouped.loss, grouped.weight, grouped.bias) == (alone.loss, alone.weight, alone.bias)


@pytest.mark.parametrize("local_rank", [0, 1])
def test_an_error_that_every_process_shares_is_raised_by_the_writer_alone(monkeypatch, local_rank):
    # A real group of this process alone, joined as torchrun's workers join theirs: as the
    # writer (local rank 0) it raises the error; as any other it waits to be stopped, then ends.
    monkeypatch.setattr(distributed, "LOST_WAIT", 0.0)
    monkeypatch.delenv(distributed.STARTED_BY_ENV, raising=False)
    torchrun = {
        "TORCHELASTIC_RUN_ID": "test",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": str(local_rank),
    }
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)
    shared = distributed.SharedError("the combined loss is inf")
    with (
        pytest.raises((distributed.SharedError, SystemExit)) as caught,
        distributed.process_group() as group,
    ):
        assert group.writes == (local_rank == 0)
        raise shared
    if local_rank == 0:
        assert caught.value is shared
    else:
        assert isinstance(caught.value, SystemExit) and caught.value.code == distributed.LOST_EXIT
    assert not dist.is_initialized()


# --- real processes ---------------------------------------------------------------------------


def write_params(path: Path, **overrides) -> Path:
    path.write_text(dumps_yaml(raw_params(**overrides)))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed-data")
    params = write_params(folder / "params.yaml", **{"data.n_samples": ROWS, "epochs": EPOCHS})
    train = folder / "train.parquet"
    sh(
        sys.executable,
        "-m",
        "stages.generate",
        "--params",
        params,
        train,
        folder / "test.parquet",
        cwd=ROOT,
    )
    return folder


def leftovers(folder: Path) -> list[psutil.Process]:
    """Processes whose command line names `folder`: stages and workers started by a test."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(folder) in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture
def out(tmp_path):
    """A folder for one test's outputs; any process of the test still running fails it."""
    yield tmp_path
    left = leftovers(tmp_path)
    for process in left:
        process.kill()
    assert not left, f"processes left running: {[p.info['cmdline'] for p in left]}"


def train(name: str, data: Path, out: Path, workers: int | None, tag: str = "", **env):
    """Run a trainer stage as dvc.yaml does; return (exit code, stderr, model, history)."""
    model, history = out / f"{name}{tag}.pt", out / f"{name}{tag}.csv"
    environment = {key: value for key, value in ENV.items() if key != "LINREG_WORKERS"}
    environment.update(env)
    if workers is not None:
        environment["LINREG_WORKERS"] = str(workers)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            f"stages.{name}",
            "--params",
            data / "params.yaml",
            data / "train.parquet",
            model,
            history,
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )
    return result, model, history


def outputs(model: Path, history: Path) -> tuple[bytes, bytes]:
    return model.read_bytes(), history.read_bytes()


@pytest.mark.parametrize(("name", "counts"), [("train_manual", (2, 3)), ("train_module", (2,))])
def test_any_number_of_processes_writes_the_same_bytes(data, out, name, counts):
    one, model, history = train(name, data, out, None)
    assert one.returncode == 0, one.stderr
    expected = outputs(model, history)
    for count in counts:
        result, model, history = train(name, data, out, count, tag=f"-{count}")
        assert result.returncode == 0, result.stderr
        assert outputs(model, history) == expected, count
        # One summary line, from the one process that writes.
        assert result.stderr.count(f"{name}: trained {EPOCHS} epochs") == 1, result.stderr


def test_more_processes_than_chunks_work_and_agree(out, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one-chunk")
    write_params(folder / "params.yaml")  # the defaults: 800 training rows, one chunk
    sh(
        sys.executable,
        "-m",
        "stages.generate",
        "--params",
        folder / "params.yaml",
        folder / "train.parquet",
        folder / "test.parquet",
        cwd=ROOT,
    )
    one, *paths = train("train_manual", folder, out, 1)
    three, *three_paths = train("train_manual", folder, out, 3, tag="-3")
    assert one.returncode == three.returncode == 0, three.stderr
    assert outputs(*three_paths) == outputs(*paths)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_torchrun_machines_write_what_one_process_writes(data, out):
    """Two torchrun launches on 127.0.0.1 stand for two machines, as in the README."""
    one, *paths = train("train_manual", data, out, None)
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    endpoint = f"127.0.0.1:{free_port()}"
    machines = []
    for machine in ("a", "b"):
        command = [
            torchrun,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            out.name,
            "--local-addr",
            "127.0.0.1",
            "-m",
            "stages.train_manual",
            "--params",
            data / "params.yaml",
            data / "train.parquet",
            out / f"{machine}.pt",
            out / f"{machine}.csv",
        ]
        machines.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for machine in machines:
        output, _ = machine.communicate(timeout=HANG)
        assert machine.returncode == 0, output
    # Each machine's first process writes the outputs into its own workspace.
    for machine in ("a", "b"):
        assert outputs(out / f"{machine}.pt", out / f"{machine}.csv") == outputs(*paths)


def workers_of(stage: psutil.Process, count: int) -> list[psutil.Process]:
    """Wait until the stage has started its workers and they are training; return them."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        workers = [p for p in stage.children() if "stages.train" in " ".join(p.cmdline())]
        # Forked workers start with torch imported: after 2 s of CPU each is in its epochs.
        if len(workers) == count and all(w.cpu_times().user > 2 for w in workers):
            return sorted(workers, key=lambda w: w.pid)
        time.sleep(0.2)
    pytest.fail("the workers did not start")


def start_long_run(data: Path, out: Path, **popen) -> tuple[subprocess.Popen, Path, Path]:
    """train_manual on two processes, for 100,000 epochs: long enough to be stopped midway."""
    params = write_params(out / "params.yaml", **{"data.n_samples": ROWS, "epochs": 100_000})
    model, history = out / "m.pt", out / "h.csv"
    command = [sys.executable, "-m", "stages.train_manual", "--params", params,
               data / "train.parquet", model, history]  # fmt: skip
    env = {**ENV, "LINREG_WORKERS": "2"}
    return subprocess.Popen(command, cwd=ROOT, env=env, **popen), model, history


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_worker_that_is_killed_or_crashes_fails_the_stage_with_one_line(data, out, sig):
    stage, model, history = start_long_run(data, out, stderr=subprocess.PIPE, text=True)
    workers = workers_of(psutil.Process(stage.pid), 2)
    workers[1].send_signal(sig)
    _, stderr = stage.communicate(timeout=HANG)
    assert stage.returncode == 2
    assert stderr.splitlines() == [
        f"error: train_manual: worker 1 of 2 was killed by {sig.name}; the stage stopped the "
        "others and wrote no outputs"
    ]
    assert not model.exists() and not history.exists()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_the_launcher_leaves_no_folder_in_tmp(data, out, tmp_path_factory):
    # torch's launcher makes a folder of files for every run, in TMPDIR unless told otherwise.
    scratch = tmp_path_factory.mktemp("tmpdir")
    result, *_ = train("train_manual", data, out, 2, TMPDIR=str(scratch))
    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == []


def test_ctrl_c_stops_the_stage_and_its_workers_with_one_line(data, out):
    # Ctrl-C sends SIGINT to every process of the terminal's group: the stage and its workers.
    stage, model, history = start_long_run(
        data, out, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    workers = workers_of(psutil.Process(stage.pid), 2)
    os.killpg(stage.pid, signal.SIGINT)
    _, stderr = stage.communicate(timeout=HANG)
    assert stage.returncode == 128 + signal.SIGINT
    assert stderr.splitlines() == ["error: train_manual: stopped by SIGINT; no outputs written"]
    assert not model.exists() and not history.exists()
    _, alive = psutil.wait_procs(workers, timeout=HANG)
    assert not alive


def test_a_bad_value_in_one_share_is_reported_once_by_the_process_that_reads_it(out):
    rows = 3 * training.CHUNK_ROWS
    x = np.linspace(-1, 1, rows, dtype=np.float32)
    y = 2 * x
    x[-1] = np.nan  # in the last chunk: the second process's share
    train_path = out / "train.parquet"
    with dataset_writer(train_path) as write:
        write(x, y)
    write_params(out / "params.yaml")
    scratch = out / "tmp"  # and the launcher leaves no folder behind after a failure either
    scratch.mkdir()
    result, model, history = train("train_module", out, out, 2, TMPDIR=str(scratch))
    assert list(scratch.iterdir()) == []
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: {train_path}: column 'x' has a missing, NaN or infinite value (first at row "
        f"{rows - 1}); every value must be a finite number"
    ]
    assert not model.exists() and not history.exists()


@pytest.mark.parametrize(("name", "count"), [("train_module", 2), ("train_manual", 3)])
def test_an_error_that_every_process_finds_is_reported_once(out, name, count):
    # Every process holds the same combined loss, so each finds that it overflows float32 (y
    # squared is 1e60), at the same epoch: one line, not one per process.
    rows = 3 * training.CHUNK_ROWS
    x = np.linspace(-1, 1, rows, dtype=np.float32)
    with dataset_writer(out / "train.parquet") as write:
        write(x, np.full(rows, 1e30, np.float32))
    write_params(out / "params.yaml")
    result, model, history = train(name, out, out, count)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: the loss at the starting point is inf: the data or init values are too large for "
        "float32"
    ]
    assert not model.exists() and not history.exists()


@pytest.mark.parametrize("value", ["0", "two", "-1", "65", "1.5"])
def test_a_bad_worker_count_is_one_line(data, out, value):
    result, model, _ = train("train_manual", data, out, None, LINREG_WORKERS=value)  # type: ignore[arg-type]
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: LINREG_WORKERS = {value!r} is not allowed; expected a whole number from 1 to 64 "
        "(the processes one trainer starts on this machine)"
    ]
    assert not model.exists()


def test_a_busy_default_port_does_not_matter(data, out):
    # torch's default ports, for the rendezvous (c10d, 29400) and for the master (29500): the
    # stage asks the system for a free port instead.
    with contextlib.ExitStack() as stack:
        for port in (29400, 29500):
            busy = stack.enter_context(socket.socket())
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):  # already busy: all the better
                busy.bind(("127.0.0.1", port))
                busy.listen()
        result, *_ = train("train_manual", data, out, 2)
    assert result.returncode == 0, result.stderr


def test_the_workers_end_when_the_stage_is_killed(data, out):
    stage, model, _ = start_long_run(data, out)
    workers = workers_of(psutil.Process(stage.pid), 2)
    stage.kill()
    stage.wait(timeout=HANG)
    _, alive = psutil.wait_procs(workers, timeout=HANG)
    assert not alive
    assert not model.exists()


@pytest.mark.e2e
def test_the_worker_count_changes_no_byte_and_reruns_nothing(project):
    env = {**ENV, "LINREG_WORKERS": "2"}
    result = subprocess.run(
        ["dvc", "repro", "-f"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert sh("git", "status", "--porcelain", cwd=project).stdout == ""
    status = subprocess.run(
        ["dvc", "status"],
        cwd=project,
        env={**env, "LINREG_WORKERS": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Data and pipelines are up to date." in status.stdout


def test_each_process_reads_only_its_share(data):
    # The reader behind every process: rows start..stop of the file, whatever the row groups.
    x, y = read_dataset(data / "train.parquet")
    for size in (2, 3):
        for rank in range(size):
            start, stop = Shard.of(len(x), rank, size).rows
            part = read_dataset(data / "train.parquet", start, stop)
            assert np.array_equal(part[0], x[start:stop]) and np.array_equal(part[1], y[start:stop])
