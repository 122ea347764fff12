"""Where a trainer runs: in this process, in N processes it starts itself, or in torchrun's group.

The worker count is an execution setting, not a hyperparameter: it never changes a result (see
stages/training.py for why), so it stays out of params.yaml and dvc.lock, and changing it re-runs
nothing. Three cases, decided once per trainer stage:

- under `torchrun` (one machine or several): torchrun has set RANK, WORLD_SIZE, MASTER_ADDR and
  the rest; the stage joins that process group;
- LINREG_WORKERS=N > 1: the stage starts N workers through torch's launcher API (the engine
  behind torchrun), on 127.0.0.1 and a port the system picks free, and each joins the group as
  above. The launcher forks them from the stage process: each is a copy of the same
  `python -m stages.train_...` process, with torch already imported and the params already read;
- otherwise (LINREG_WORKERS unset or 1): the stage trains in this process, with no process group.

Processes talk through the gloo backend, on the CPU.
"""

import contextlib
import ctypes
import datetime
import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import torch.distributed as dist

from stages.cli import UserError, fail

WORKERS_ENV = "LINREG_WORKERS"
MAX_WORKERS = 64
# Set in the workers that a stage starts itself: they leave reporting a failure to that stage.
STARTED_BY_ENV = "LINREG_STARTED_BY"
# The exit code of a process that leaves the report to another one (the one that stopped first,
# or the writer, for an error they all share), and how long it waits for the launcher to stop it
# before it ends by itself.
LOST_EXIT = 3
LOST_WAIT = 10.0
# How long a collective waits for the other processes before it fails. An epoch waits for the
# slowest process's share, and the first one for every process to read its rows too.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Group:
    """This process's place among the processes that train together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # its place among the processes on its own machine

    @property
    def writes(self) -> bool:
        """Whether this process prints progress and writes the outputs: the first process on
        each machine. Every process holds the same result, bit for bit, so on several machines
        each gets the outputs in its own workspace, whichever of them torchrun made rank 0."""
        return self.local_rank == 0


class WorkerLost(UserError):
    """Another process of the group stopped: the collective this process waited in failed."""


class SharedError(UserError):
    """An error found in what every process of the group holds alike (the combined loss), so
    every process finds it at the same point: only the process that writes reports it."""


def workers() -> int:
    """The worker count from LINREG_WORKERS (default 1); raise UserError for anything else."""
    text = os.environ.get(WORKERS_ENV, "1").strip()
    # ASCII digits, and few: str.isdigit() also takes "²", which int() refuses, and int()
    # refuses more than 4,300 digits; either would end in a traceback.
    digits = text.isascii() and text.isdigit() and len(text) <= 6
    if not digits or not 1 <= int(text) <= MAX_WORKERS:
        raise UserError(
            f"{WORKERS_ENV} = {text[:20]!r} is not allowed; expected a whole number from 1 to "
            f"{MAX_WORKERS} (the processes one trainer starts on this machine)"
        )
    return int(text)


def under_torchrun() -> bool:
    """True in a process that torchrun, or the launcher API, started as a worker."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def start_workers(label: str, count: int, work: Callable[[], None]) -> None:
    """Run `work` in `count` processes forked from this one, in one group, and wait for them.

    Raise UserError with one line if one fails: torch's launcher then stops the others at once.
    """
    # Forked, not started afresh: a new process would spend 1.5 to 2 s importing torch again,
    # after this one already has, before it could read a row (at 1,000 rows, two workers took
    # 2.2 s longer than one process when they were new processes; 0 to 0.3 s at 3e5 rows now).
    # Nothing here has used torch's threads before the fork, so the copies start clean.
    if "fork" not in multiprocessing.get_all_start_methods():
        raise UserError(
            f"{WORKERS_ENV} > 1 needs the fork start method, which {sys.platform} does not have; "
            "run the stage under torchrun instead (see the README)"
        )
    # Imported here: a one-process run does not pay for the launcher.
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher logs each start and failure, each worker it stops and each signal, as
    # warnings; the stage reports failures itself. Its modules set their loggers' levels.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[STARTED_BY_ENV] = str(os.getpid())
    # The launcher keeps a folder of files for each run (each worker's error report, which the
    # stage does not need: its workers print their errors); in a temporary folder of its own,
    # no run leaves one behind in /tmp.
    with tempfile.TemporaryDirectory(prefix="linreg-workers-") as logs:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=count,
            run_id=uuid.uuid4().hex,
            rdzv_backend="c10d",
            rdzv_endpoint="127.0.0.1:0",  # port 0: the system picks a free port, never a busy one
            local_addr="127.0.0.1",
            max_restarts=0,  # a failed worker fails the stage; a restart would only fail again
            monitor_interval=0.1,
            start_method="fork",
            logs_specs=DefaultLogsSpecs(log_dir=logs),
        )
        try:
            elastic_launch(config, _worker)(work)
        except SignalException as error:
            # Ctrl-C, or a kill of the stage: the launcher has stopped the workers on its way out.
            name = signal.Signals(error.sigval).name
            fail(UserError(f"{label}: stopped by {name}; no outputs written"), 128 + error.sigval)
        except ChildFailedError as error:
            # The first worker that the launcher saw end: the cause, since a worker that loses
            # contact with it waits to be stopped (process_group). The launcher stops the rest.
            rank, failure = min(error.failures.items())
            if failure.exitcode == 2:  # a UserError: the worker has printed it already
                raise SystemExit(2) from None
            if failure.exitcode < 0:
                cause = f"was killed by {signal.Signals(-failure.exitcode).name}"
            else:
                cause = f"failed with exit code {failure.exitcode}"
            raise UserError(
                f"{label}: worker {rank} of {count} {cause}; the stage stopped the others and "
                "wrote no outputs"
            ) from None


def _worker(work: Callable[[], None]) -> None:
    """A forked worker's life: run `work`, and end as a stage process would on an error."""
    # The launcher's handlers, copied by the fork, would turn the signal it stops workers with
    # (SIGTERM, or the one it got itself, such as Ctrl-C's SIGINT) into an exception and a
    # traceback: a worker it stops just ends, and the stage says why in one line.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    # The launcher also turns on faulthandler, whose dump of every thread on a crash would bury
    # the stage's one line naming the worker and the signal.
    faulthandler.disable()
    try:
        work()
    except UserError as error:
        fail(error)
    except Exception:
        # The launcher would only write it to a file; print it, as a stage process does.
        traceback.print_exc()
        raise SystemExit(1) from None


@contextlib.contextmanager
def process_group() -> Iterator[Group]:
    """Join torchrun's process group for the block, or, outside torchrun, yield a one-process
    group without creating one."""
    if not under_torchrun():
        yield Group()
        return
    started_by = os.environ.get(STARTED_BY_ENV)
    if started_by:
        _die_with_parent(int(started_by))
    dist.init_process_group("gloo", timeout=TIMEOUT)
    group = Group(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))
    try:
        yield group
    except SharedError:
        if group.writes:
            raise
        # The writing process says it (N copies of one line would read as N problems), and this
        # one waits to be stopped: a launcher, the stage's or torchrun's, stops the others once
        # it sees the first one end, and it must see the writer end first, after its line.
        _wait_to_be_stopped()
    except RuntimeError as error:
        # gloo reports a peer that stopped as a RuntimeError from inside its own sources.
        if not (isinstance(error, dist.DistError) or "gloo" in str(error)):
            raise
        if started_by:
            # The stage that started this worker names the one that failed, but the launcher
            # tells it only of the first worker it sees end: so this one waits to be stopped.
            _wait_to_be_stopped()
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise WorkerLost(f"another worker stopped: {first_line}") from None
    finally:
        dist.destroy_process_group()


def _wait_to_be_stopped() -> NoReturn:
    """Leave the report to another process: wait for the launcher to stop this one, and end by
    itself with LOST_EXIT if it does not."""
    time.sleep(LOST_WAIT)
    raise SystemExit(LOST_EXIT) from None


def _die_with_parent(parent: int) -> None:
    """Let Linux kill this worker if the stage that started it dies, so none is left running.

    torch.multiprocessing asks for SIGINT in the processes it forks, but privately; SIGKILL here
    does not rest on that, and no handler can catch it."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the stage died before the line above took effect
            os._exit(1)
