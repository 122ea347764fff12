"""Measure the goals of issues 5 and 10 and print them as a markdown table, measurement beside goal.

Run from the repo root: `python benchmarks/bench.py [--quick] [--large] [--only PART]`. Every run
happens in a temporary copy of the project (the files git would see, in a fresh git repo; its place
is chosen with --work-dir), so the repo tree is never written. Parts:

- small: `dvc repro -f` against the same five stages run in one Python process (goal ≤ 2x), and a
  no-op `dvc repro` against `dvc status` in an empty DVC repo (goal ≤ 1.5x);
- imports: `python -c "import X"` for the heavy libraries, `python -m stages.<stage> --help`;
- epoch: seconds per epoch of both trainers' `fit` at n = 1e7 against one `torch.dot(x, y)`
  memory pass (goal ≤ 10x), with one thread (as the stages pin it) and with the default count;
- large (only with --large or --only large): the pipeline at data.n_samples = 1e8, each stage's
  command from dvc.yaml on one process, its wall time and the peak RSS of each process of its tree
  (goal ≤ 2 GiB), then `dvc commit` for what DVC adds (hashing and caching the outputs);
- scale (only with --only scale): at data.n_samples = 1e8, each trainer's command from dvc.yaml with
  LINREG_WORKERS=1 and =2, interleaved: wall time (goal: 2 workers ≤ 0.6x one), the peak RSS of the
  stage process and of each worker, and whether the outputs are the same bytes (exit 1 if not);
- huge (only with --only huge; long, and needs about 18 GiB of disk): issue 10's end-to-end command
  `LINREG_WORKERS=2 dvc exp run -S data.n_samples=1000000000 -S epochs=10`, each stage's wall time
  and the peak RSS of each of its processes (goal ≤ 4 GiB), data sizes and free disk;
- pair (only with --only pair): how this machine's two cores scale, with no pipeline and no
  communication: each trainer's chunk loop on --scale-n rows in one process against two forked
  processes on half the rows each, started together; and a pure-Python loop alone against two
  copies at once. What two workers can gain at best, for the scale part.

Peak RSS comes from sampling the command's process tree (Linux only: it reads /proc), see
run_sampled. Timings are only worth reading on a machine with nothing else running: each log line
on stderr shows the load average.
"""

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("small", "imports", "epoch", "large", "scale", "huge", "pair")
IMPORTS = ("numpy", "typer", "pyarrow.parquet", "pandas", "matplotlib.figure", "torch")
GIB = 1 << 30
WORKERS = "LINREG_WORKERS"  # the trainers' process count (stages/distributed.py)
# The Parquet files take about 8 bytes a row (x and y in float32, no dictionary encoding).
DATA_BYTES_PER_ROW = 8
# How often run_sampled reads a command's process tree. The kernel keeps each process's peak
# RSS, so this only bounds how late a process can be first seen and the resolution of the
# per-stage wall times; each read costs a few milliseconds of one core.
SAMPLE_SECONDS = 0.2

# The venv's python and dvc first on PATH (DVC runs each stage's `python -m ...` through the
# shell), no analytics, and a git identity of our own for the copy's commit. The worker count is
# left out: each part sets the one it measures.
ENV = {
    **{key: value for key, value in os.environ.items() if key != WORKERS},
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def log(message: str) -> None:
    # The load average shows when something else was running on the machine meanwhile.
    stamp = f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}"
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def sh(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command quietly; fail with its output if it exits non-zero."""
    args = [str(a) for a in args]
    # Its own session, so that end_tree can signal the whole process group.
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate()
    finally:
        end_tree(process, [])
    if process.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {process.returncode} in {cwd}:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def timed(args: list[str | Path], cwd: Path) -> float:
    start = time.perf_counter()
    sh(args, cwd)
    return time.perf_counter() - start


def median_time(args: list[str | Path], cwd: Path, reps: int) -> float:
    return statistics.median(timed(args, cwd) for _ in range(reps))


@dataclass
class Seen:
    """One process of a command's tree, as run_sampled last saw it."""

    pid: int
    argv: list[str]  # its command line, the latest seen (a shell may exec the command it runs)
    peak: int  # VmHWM, the kernel's high-water mark of its RSS, in bytes: the largest value read
    first: float  # seconds from the command's start until the sampler first saw it
    last: float  # ... and last saw it
    rank: str | None  # LOCAL_RANK, which torch's launcher gives each worker (see _local_rank)

    @property
    def command(self) -> str:
        argv = [Path(a).name if i == 0 else a for i, a in enumerate(self.argv)] or ["?"]
        if argv[0].startswith("python") and argv[1:] and not argv[1].startswith("-"):
            argv = [Path(argv[1]).name, *argv[2:]]  # a script such as dvc: its name, not python's
        text = " ".join(argv)
        return text if len(text) <= 50 else f"{text[:47]}..."

    @property
    def label(self) -> str:
        """`worker K` for a launcher's worker, `stage` for a `python -m stages.<stage>` process."""
        if self.rank is not None:
            return f"worker {self.rank}"
        if self.argv[1:2] == ["-m"] and self.argv[2:3] and self.argv[2].startswith("stages."):
            return "stage"
        return self.command


@dataclass
class Sampled:
    """What run_sampled measured of one command."""

    seconds: float  # wall time
    processes: list[Seen]  # every process of its tree that the sampler saw, in order of first sight
    # The largest RSS of the command or of any descendant that was waited for, from the kernel
    # (wait4's ru_maxrss, what GNU time's %M reports): a check that the sampler missed no peak.
    tree_peak: int

    @property
    def missed(self) -> int | None:
        """The kernel's largest RSS, if the sampler read clearly less than that in every process:
        a process can grow after the last read before it exits, or live too briefly to be seen."""
        largest = max((p.peak for p in self.processes), default=0)
        return self.tree_peak if self.tree_peak > 1.02 * largest + (4 << 20) else None

    def peaks(self) -> str:
        """Each process's label and peak RSS, and the kernel's largest if the sampler missed it."""
        text = listed(self.processes)
        if self.missed:
            text += f" (but the kernel saw {gib(self.missed)} in the tree: {MISSED})"
        return text


MISSED = "grown after the sampler's last read, or in a process too brief to see"


def listed(processes: Iterable[Seen]) -> str:
    return ", ".join(f"{p.label} {gib(p.peak)}" for p in processes)


def run_sampled(
    args: list[str | Path],
    cwd: Path,
    env: dict[str, str] | None = None,
    on_start: Callable[[Seen], None] | None = None,
) -> Sampled:
    """Run a command, reading every process of its tree about every SAMPLE_SECONDS; fail with its
    output if it exits non-zero.

    Each read finds the tree with psutil and takes each process's VmHWM from /proc/PID/status:
    the kernel's own high-water mark of the RSS, so the peak of a process is not missed as long as
    it is read once after the peak and before it exits (memory grown in its last 0.2 s can be;
    Sampled.peaks then says what the kernel saw). Calls on_start(process) when one first appears.
    """
    args = [str(a) for a in args]
    seen: dict[psutil.Process, Seen] = {}
    with tempfile.TemporaryFile("w+") as output:
        start = time.perf_counter()
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env or ENV,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            root = psutil.Process(process.pid)
            # Readable once the command exits: the wall time does not wait for the next read.
            exit_fd = os.pidfd_open(process.pid)
            try:
                while True:
                    _sample(root, seen, time.perf_counter() - start, on_start)
                    if select.select([exit_fd], [], [], SAMPLE_SECONDS)[0]:
                        break
            finally:
                os.close(exit_fd)
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - start
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            end_tree(process, list(seen))
        if process.returncode != 0:
            output.seek(0)
            sys.exit(
                f"{' '.join(args)} exited {process.returncode} in {cwd}:\n{output.read()[-4000:]}"
            )
    return Sampled(seconds, list(seen.values()), usage.ru_maxrss * 1024)


def _sample(
    root: psutil.Process,
    seen: dict[psutil.Process, Seen],
    now: float,
    on_start: Callable[[Seen], None] | None,
) -> None:
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        tree = [root]
    for process in tree:  # keyed by psutil.Process, which tells a reused pid from the old one
        peak = _vm_hwm(process.pid)
        try:
            argv = process.cmdline()
        except psutil.Error:
            continue
        if peak is None:  # gone, or a zombie whose memory is freed: keep what was read before
            continue
        entry = seen.get(process)
        if entry is None:
            rank = _local_rank(process, argv)
            seen[process] = entry = Seen(process.pid, argv, peak, now, now, rank)
            if on_start:
                on_start(entry)
        else:
            entry.argv, entry.peak, entry.last = argv, max(entry.peak, peak), now


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _local_rank(process: psutil.Process, argv: list[str]) -> str | None:
    """A worker's LOCAL_RANK, which torch's launcher sets: from its environment when the launcher
    started it as a new process (torchrun); for a worker the launcher forked from a stage, whose
    /proc/PID/environ the fork does not update, its place among its parent's forked copies."""
    try:
        rank = process.environ().get("LOCAL_RANK")
        if rank is not None:
            return rank
        parent = process.parent()
        if parent is None or parent.cmdline() != argv:
            return None
        copies = sorted(child.pid for child in parent.children() if child.cmdline() == argv)
        return str(copies.index(process.pid))  # the launcher forks them in the order of rank
    except (psutil.Error, ValueError):
        return None


def end_tree(process: subprocess.Popen, known: list[psutil.Process]) -> None:
    """Stop what is left of a command's process tree, after a failure or Ctrl-C (after a normal
    exit there is nothing): SIGINT as Ctrl-C would send, then SIGTERM, then SIGKILL.

    The command runs in its own session; torch's launcher starts each worker in another one, so
    every process that was seen in the tree is signalled too, not just the process group.
    """
    tree = set(known)
    if process.returncode is None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(process.pid)
            tree |= {root, *root.children(recursive=True)}
    for signum, grace in ((signal.SIGINT, 5), (signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        alive = [p for p in tree if _running(p)]
        if not alive:
            break
        if process.returncode is None:  # the group's id is still the command's own pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signum)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signum)
        psutil.wait_procs(alive, timeout=grace)
    if process.returncode is None:
        process.wait()


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def nbytes(size: int) -> str:
    return gib(size) if size >= GIB else f"{size / (1 << 20):.1f} MiB"


def copy_project(destination: Path) -> Path:
    """Copy the files git would see (tracked, or new and not ignored) into a fresh git repo."""
    listed = sh(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    sh(["git", "init", "-q", "-b", "main"], destination)
    sh(["git", "add", "-A"], destination)
    sh(["git", "commit", "-q", "-m", "project"], destination)
    return destination


def stage_commands(project: Path) -> dict[str, list[str]]:
    """Each stage's cmd from dvc.yaml, split into argv, in the file's (the pipeline's) order."""
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    commands = {name: shlex.split(stage["cmd"]) for name, stage in stages.items()}
    for name, argv in commands.items():
        if argv[:2] != ["python", "-m"]:
            sys.exit(f"dvc.yaml: stage {name}'s cmd is not `python -m stages.<stage> ...`: {argv}")
    return commands


def stage_outputs(project: Path, name: str) -> list[str]:
    """Every path a stage writes (outs, metrics, plots), as dvc.yaml lists them."""
    stage = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][name]
    entries = [e for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def set_n_samples(project: Path, n: int) -> None:
    params_path = project / "params.yaml"
    text, count = re.subn(r"(?m)^(\s+n_samples:\s*)\d+", rf"\g<1>{n}", params_path.read_text())
    if count != 1:
        sys.exit("params.yaml: no single data.n_samples line to change")
    params_path.write_text(text)


def drive(project: Path, freeze: bool) -> None:
    """The whole pipeline in this one process: every stage's typer command with dvc.yaml's args.

    Prints the seconds spent importing the stage modules and running each stage, as JSON. With
    `freeze`, the process ends as each stage's own does (stages.cli.run): gc.freeze() first, so
    that the exit skips the cycle collector's last walk over every live object.
    """
    os.chdir(project)
    sys.path.insert(0, str(project))
    start = time.perf_counter()
    import typer

    commands = stage_commands(project)
    modules = {name: importlib.import_module(argv[2]) for name, argv in commands.items()}
    imported = time.perf_counter()
    stages = {}
    for name, argv in commands.items():
        stage_start = time.perf_counter()
        # The typer app parses the same arguments as `python -m` would and calls main().
        typer.main.get_command(modules[name].app).main(argv[3:], standalone_mode=False)
        stages[name] = time.perf_counter() - stage_start
    print(json.dumps({"imports": imported - start, "work": sum(stages.values()), "stages": stages}))
    if freeze:
        gc.freeze()


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.broken: list[str] = []  # checks of correctness that failed: the run exits 1

    def add(self, what: str, value: str, goal: str = "", met: bool | None = None) -> None:
        verdict = "" if met is None else ("yes" if met else "**no**")
        self.rows.append((what, value, goal, verdict))
        log(f"{what}: {value} {goal} {verdict}")

    def markdown(self) -> str:
        lines = ["| measurement | value | goal | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {' | '.join(row)} |" for row in self.rows]
        return "\n".join(lines)


def ms(seconds: float) -> str:
    if seconds < 0.1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def bench_small(table: Table, work: Path, reps: int) -> None:
    project = copy_project(work / "small")
    log("small: warm-up dvc repro")
    sh(["dvc", "repro"], project)
    commands = stage_commands(project)
    repro, in_process, frozen, inside = [], [], [], []
    by_hand = {name: [] for name in commands}
    drive_command = [sys.executable, Path(__file__).resolve(), "--drive", project]
    for rep in range(reps):  # interleaved, so that drift of the machine hits all alike
        log(f"small: repetition {rep + 1}/{reps}")
        repro.append(timed(["dvc", "repro", "-f"], project))
        start = time.perf_counter()
        result = sh(drive_command, project)
        in_process.append(time.perf_counter() - start)
        inside.append(json.loads(result.stdout.splitlines()[-1]))
        frozen.append(timed([*drive_command, "--freeze"], project))
        for name, argv in commands.items():
            by_hand[name].append(timed(argv, project))
    a, b = statistics.median(repro), statistics.median(in_process)
    table.add("(a) `dvc repro -f`, default params", ms(a))
    table.add(
        "(b) same five stages in one python process (wall, incl. start-up and imports)",
        ms(b),
        "(a) ≤ 2 x (b)",
        a <= 2 * b,
    )
    table.add("(a) / (b)", f"{a / b:.2f}x", "≤ 2x", a <= 2 * b)
    b_frozen = statistics.median(frozen)
    table.add(
        "(b') as (b), but ending with gc.freeze() as each stage does",
        f"{ms(b_frozen)}: (a) / (b') = {a / b_frozen:.2f}x",
    )
    table.add(
        "(b) of which imports / stage work",
        f"{ms(statistics.median(i['imports'] for i in inside))} / "
        f"{ms(statistics.median(i['work'] for i in inside))}",
    )
    table.add(
        "(b) stage work in-process (first call, so lazy imports included)",
        ", ".join(
            f"{name} {ms(statistics.median(i['stages'][name] for i in inside))}"
            for name in commands
        ),
    )
    hand = {name: statistics.median(times) for name, times in by_hand.items()}
    for name, seconds in hand.items():
        table.add(f"stage command by hand: {name}", ms(seconds))
    table.add("sum of the five stage commands by hand", ms(sum(hand.values())))
    table.add("dvc's own share of (a): (a) - sum by hand", ms(a - sum(hand.values())))

    log("small: no-op dvc repro and dvc status")
    sh(["dvc", "repro"], project)  # outputs were rewritten: let dvc hash them once
    noop = median_time(["dvc", "repro"], project, reps)
    empty = work / "empty"
    empty.mkdir()
    sh(["git", "init", "-q", "-b", "main"], empty)
    sh(["dvc", "init", "-q"], empty)
    sh(["dvc", "status"], empty)
    status = median_time(["dvc", "status"], empty, reps)
    table.add("(c) no-op `dvc repro` (all up to date)", ms(noop))
    table.add(
        "(d) `dvc status` in an empty DVC repo", ms(status), "(c) ≤ 1.5 x (d)", noop <= 1.5 * status
    )
    table.add("(c) / (d)", f"{noop / status:.2f}x", "≤ 1.5x", noop <= 1.5 * status)
    table.add(
        "`dvc status` in the project (all up to date)",
        ms(median_time(["dvc", "status"], project, reps)),
    )
    table.add("`dvc --version`", ms(median_time(["dvc", "--version"], project, reps)))


def bench_imports(table: Table, work: Path, reps: int) -> None:
    project = copy_project(work / "imports")
    python = sys.executable
    base = median_time([python, "-c", "pass"], project, reps)
    table.add("`python -c pass` (interpreter start-up)", ms(base))
    for module in IMPORTS:
        try:
            seconds = median_time([python, "-c", f"import {module}"], project, reps)
        except SystemExit:
            table.add(f"`import {module}`", "not installed")
            continue
        table.add(f"`import {module}` (minus start-up)", ms(seconds - base))
    for argv in stage_commands(project).values():
        seconds = median_time([python, "-m", argv[2], "--help"], project, reps)
        table.add(f"`python -m {argv[2]} --help`", ms(seconds))


def bench_epoch(
    table: Table, work: Path, n: int, epochs: int, reps: int, chunk_log2: list[int]
) -> None:
    project = copy_project(work / "epoch")
    sys.path.insert(0, str(project))
    import torch

    from stages import model, train_manual, train_module, training

    def module_fit_through_linear(*args):
        """train_module's fit with the forward LinearRegression avoids: nn.Linear's matmul."""
        own_forward = model.LinearRegression.forward
        model.LinearRegression.forward = lambda self, x: self.linear(x.unsqueeze(1)).squeeze(1)
        try:
            return train_module.fit(*args)
        finally:
            model.LinearRegression.forward = own_forward

    chosen = training.CHUNK_ROWS
    table.add("stages.training.CHUNK_ROWS (rows per chunk of an epoch)", str(chosen))
    default_threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=generator)
    y = 3 * x + 0.5 + torch.randn(n, generator=generator)
    fits = {"train_module": train_module.fit, "train_manual": train_manual.fit}
    for fit in fits.values():
        fit(x, y, 0.0, 0.0, 0.05, 1)  # warm-up
    for _ in range(3):
        torch.dot(x, y)

    def measure(
        threads: int, chunk_rows: int, rounds: int, fits: dict = fits
    ) -> tuple[list[float], dict]:
        torch.set_num_threads(threads)
        training.CHUNK_ROWS = chunk_rows
        dot, per_epoch = [], {name: [] for name in fits}
        # Rounds interleave the dots and both fits, so that a busy spell hits all alike.
        for _ in range(rounds):
            for _ in range(reps):
                start = time.perf_counter()
                torch.dot(x, y)
                dot.append(time.perf_counter() - start)
            for name, fit in fits.items():
                start = time.perf_counter()
                fit(x, y, 0.0, 0.0, 0.05, epochs)
                # fit makes epochs + 1 passes: the last only measures the trained model's loss.
                per_epoch[name].append((time.perf_counter() - start) / (epochs + 1))
        return dot, per_epoch

    for threads in (1, default_threads):
        dot, per_epoch = measure(threads, chosen, rounds=5)
        dot_time = statistics.median(dot)
        table.add(
            f"`torch.dot(x, y)`, n = {n:.0e}, {threads} thread(s)",
            f"{ms(dot_time)} (fastest {ms(min(dot))})",
        )
        for name, times in per_epoch.items():
            ratio = statistics.median(times) / dot_time
            table.add(
                f"{name} epoch, n = {n:.0e}, {threads} thread(s)",
                f"{ms(statistics.median(times))} = {ratio:.1f}x dot "
                f"(fastest {ms(min(times))} = {min(times) / min(dot):.1f}x fastest dot)",
                "≤ 10x dot",
                ratio <= 10,
            )
    dot, per_epoch = measure(1, chosen, 3, {"linear": module_fit_through_linear})
    seconds = statistics.median(per_epoch["linear"])
    table.add(
        f"train_module epoch if forward went through nn.Linear(x), n = {n:.0e}, 1 thread",
        f"{ms(seconds)} = {seconds / statistics.median(dot):.1f}x dot",
    )
    for k in chunk_log2:
        dot, per_epoch = measure(1, 1 << k, rounds=3)
        dot_time = statistics.median(dot)
        table.add(
            f"chunks of 2^{k} rows, n = {n:.0e}, 1 thread: module / manual epoch",
            " / ".join(
                f"{ms(statistics.median(t))} = {statistics.median(t) / dot_time:.1f}x dot"
                for t in per_epoch.values()
            ),
        )
    training.CHUNK_ROWS = chosen
    torch.set_num_threads(default_threads)


def bench_large(table: Table, work: Path, n: int) -> None:
    project = copy_project(work / "large")
    try:
        set_n_samples(project, n)
        total = 0.0
        for name, argv in stage_commands(project).items():
            log(f"large: {name}")
            run = run_sampled(argv, project)
            total += run.seconds
            peak = max(p.peak for p in run.processes)
            table.add(
                f"{name} at n = {n:.0e}: peak RSS of each process, wall",
                f"{run.peaks()}, {run.seconds:.1f} s",
                "≤ 2 GiB",
                peak <= 2 * GIB and run.tree_peak <= 2 * GIB,
            )
        table.add(f"all five stages at n = {n:.0e}, wall", f"{total:.1f} s")
        log("large: dvc commit")
        run = run_sampled(["dvc", "commit", "-f"], project)
        table.add(
            f"`dvc commit -f` at n = {n:.0e} (hash and cache outputs): peak RSS, wall",
            f"{run.peaks()}, {run.seconds:.1f} s",
        )
        noop = median_time(["dvc", "repro"], project, 3)
        table.add(f"no-op `dvc repro` at n = {n:.0e}", ms(noop))
        sizes = sum(p.stat().st_size for p in (project / "data").glob("*.parquet"))
        table.add(f"data/*.parquet at n = {n:.0e}", nbytes(sizes))
    finally:
        shutil.rmtree(project, ignore_errors=True)


def digest(project: Path, paths: list[str]) -> str:
    """One sha256 over the bytes of these files; fail if one is missing."""
    hashed = hashlib.sha256()
    for path in paths:
        if not (project / path).is_file():
            sys.exit(f"{path} was not written")
        hashed.update((project / path).read_bytes())
    return hashed.hexdigest()


def bench_scale(table: Table, work: Path, n: int, reps: int) -> None:
    project = copy_project(work / "scale")
    try:
        set_n_samples(project, n)
        commands = stage_commands(project)
        log(f"scale: generate at n = {n:.0e}")
        run = run_sampled(commands["generate"], project)
        table.add(
            f"scale: generate at n = {n:.0e}: peak RSS, wall", f"{run.peaks()}, {run.seconds:.1f} s"
        )
        trainers = {name: argv for name, argv in commands.items() if name.startswith("train_")}
        counts = (1, 2)
        walls = {(name, w): [] for name in trainers for w in counts}
        peaks: dict[tuple[str, int], dict[str, int]] = {key: {} for key in walls}
        missed = {key: 0 for key in walls}  # the largest RSS the kernel saw but the sampler did not
        digests = {name: {w: set() for w in counts} for name in trainers}
        for rep in range(reps):
            # Side by side, and in turn first, so that drift of the machine hits both alike.
            order = counts if rep % 2 == 0 else counts[::-1]
            for name, argv in trainers.items():
                outputs = stage_outputs(project, name)
                for w in order:
                    log(f"scale: {name}, {WORKERS}={w}, repetition {rep + 1}/{reps}")
                    for path in outputs:  # a run that writes nothing must not pass the check
                        (project / path).unlink(missing_ok=True)
                    run = run_sampled(argv, project, {**ENV, WORKERS: str(w)})
                    walls[name, w].append(run.seconds)
                    for p in run.processes:
                        peaks[name, w][p.label] = max(peaks[name, w].get(p.label, 0), p.peak)
                    missed[name, w] = max(missed[name, w], run.missed or 0)
                    digests[name][w].add(digest(project, outputs))
        for name in trainers:
            one, two = (statistics.median(walls[name, w]) for w in counts)
            table.add(
                f"{name} at n = {n:.0e}, wall (median of {reps}): {WORKERS}=1 / =2",
                f"{one:.1f} s / {two:.1f} s = {two / one:.2f}x",
                "2 workers ≤ 0.6 x 1",
                two <= 0.6 * one,
            )
            for w in counts:
                text = ", ".join(f"{label} {gib(peak)}" for label, peak in peaks[name, w].items())
                if missed[name, w]:
                    text += f" (but the kernel saw {gib(missed[name, w])} in the tree: {MISSED})"
                table.add(f"{name} at n = {n:.0e}, {WORKERS}={w}: peak RSS of each process", text)
            found = set().union(*digests[name].values())
            same = len(found) == 1
            outputs = ", ".join(stage_outputs(project, name))
            table.add(
                f"{name} at n = {n:.0e}: {outputs} at 1 and 2 workers, every repetition",
                f"identical (sha256 {next(iter(found))[:12]})"
                if same
                else f"{len(found)} different",
                "same bytes",
                same,
            )
            if not same:
                table.broken.append(f"{name}: the outputs differ between 1 and 2 workers")
    finally:
        shutil.rmtree(project, ignore_errors=True)


def _pair_step(which: str, rows: int, seed: int) -> Callable[[], object]:
    """One epoch's chunk loop of a trainer (no all_reduce), or a pure-Python loop."""
    import torch
    from torch import nn

    from stages import train_manual, train_module
    from stages.model import LinearRegression
    from stages.training import Shard

    if which == "python":
        return lambda: sum(i * i for i in range(3_000_000))
    torch.set_num_threads(1)  # as the stages run
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, generator=generator)
    y = 3 * x + 0.5 + torch.randn(rows, generator=generator)
    shard = Shard.of(rows)
    if which == "train_module":
        model, loss_fn = LinearRegression(), nn.MSELoss(reduction="sum")
        return lambda: train_module.chunk_table(model, loss_fn, x, y, shard)
    w, b = torch.tensor(0.1, requires_grad=True), torch.tensor(0.2, requires_grad=True)
    return lambda: train_manual.chunk_table(x, y, w, b, shard)


def _pair_process(which: str, rows: int, seed: int, barrier, results, rounds: int = 6) -> None:
    step = _pair_step(which, rows, seed)
    step()  # warm-up
    barrier.wait()  # the processes of a pair start together
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    results.put(statistics.median(times))


def bench_pair(table: Table, work: Path, n: int, reps: int) -> None:
    project = copy_project(work / "pair")
    sys.path.insert(0, str(project))
    context = multiprocessing.get_context("fork")

    def seconds(which: str, count: int) -> float:
        """The median time of a step in the slowest of `count` processes started together."""
        barrier, results = context.Barrier(count), context.SimpleQueue()
        rows = n // count if which != "python" else 0
        processes = [
            context.Process(target=_pair_process, args=(which, rows, seed, barrier, results))
            for seed in range(count)
        ]
        for process in processes:
            process.start()
        try:
            found = []
            while len(found) < count:
                if results.empty():
                    if any(p.exitcode not in (None, 0) for p in processes):
                        sys.exit(f"pair: a {which} process failed")
                    time.sleep(0.05)
                else:
                    found.append(results.get())
            return max(found)
        except BaseException:  # a failed process, or Ctrl-C: end the others too
            for process in processes:
                process.kill()
            raise
        finally:
            for process in processes:
                process.join()

    for which in ("python", "train_module", "train_manual"):
        ones, ratios = [], []
        for rep in range(reps):
            log(f"pair: {which}, repetition {rep + 1}/{reps}")
            one, two = seconds(which, 1), seconds(which, 2)
            ones.append(one)
            ratios.append(two / one)
        middle = statistics.median(ratios)
        spread = (
            f"{min(ratios):.2f}x to {max(ratios):.2f}x (median {middle:.2f}x); one process alone "
            f"{ms(min(ones))} to {ms(max(ones))} a step"
        )
        if which == "python":
            table.add(f"pure-Python loop, two copies at once against one ({reps} runs)", spread)
        else:
            table.add(
                f"{which} chunk loop, two processes on {n // 2:.0e} rows each at once against one "
                f"on {n:.0e} ({reps} runs; 0.5x would be perfect)",
                spread,
            )


def tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def bench_huge(table: Table, work: Path, n: int) -> None:
    """Issue 10's end-to-end command, as a user types it, in a copy of the project."""
    free_before = shutil.disk_usage(work).free
    project = copy_project(work / "huge")
    try:
        names = list(stage_commands(project))
        # A stage's processes (its shell, if it does not exec, its python, its workers) all
        # carry `stages.<name>` in their command line.
        patterns = {name: re.compile(rf"(?<![\w.])stages\.{name}(?!\w)") for name in names}

        def stage_of(process: Seen) -> str | None:
            line = " ".join(process.argv)
            return next((name for name in names if patterns[name].search(line)), None)

        started: set[str] = set()

        def on_start(process: Seen) -> None:
            name = stage_of(process)
            if name and name not in started:
                started.add(name)
                log(f"huge: {name} started")

        command = ["dvc", "exp", "run", "-S", f"data.n_samples={n}", "-S", "epochs=10"]
        typed = f"{WORKERS}=2 {shlex.join(command)}"
        log(f"huge: {typed}")
        run = run_sampled(command, project, {**ENV, WORKERS: "2"}, on_start)
        table.add("huge: the command, in a copy of the project", f"`{typed}`")
        for name in names:
            processes = [p for p in run.processes if stage_of(p) == name]
            if not processes:
                table.add(f"{name} at n = {n:.0e}", "not seen: skipped, or done within 0.2 s")
                continue
            wall = max(p.last for p in processes) - min(p.first for p in processes)
            table.add(
                f"{name} at n = {n:.0e}, {WORKERS}=2: wall (±0.2 s), peak RSS of each process",
                f"{wall:.1f} s; {listed(processes)}",
                "≤ 4 GiB each",
                max(p.peak for p in processes) <= 4 * GIB,
            )
        others = sorted(
            (p for p in run.processes if stage_of(p) is None), key=lambda p: p.peak, reverse=True
        )
        table.add(
            "dvc itself and the other processes it ran (git, ...): peak RSS, largest first",
            ", ".join(f"{p.command} {gib(p.peak)}" for p in others[:3])
            + (f", and {len(others) - 3} smaller" if others[3:] else ""),
            "≤ 4 GiB each",
            max((p.peak for p in others), default=0) <= 4 * GIB,
        )
        table.add(
            "largest RSS of any process, from the kernel (wait4, as GNU time's %M)",
            gib(run.tree_peak),
            "≤ 4 GiB",
            run.tree_peak <= 4 * GIB,
        )
        table.add(f"the whole command at n = {n:.0e}, wall", f"{run.seconds:.1f} s")
        for path in sorted((project / "data").glob("*.parquet")):
            table.add(f"data/{path.name} at n = {n:.0e}", nbytes(path.stat().st_size))
        table.add(
            "the DVC cache (.dvc/cache) afterwards", nbytes(tree_size(project / ".dvc" / "cache"))
        )
        free_after = shutil.disk_usage(work).free
        table.add(
            f"free disk in {work.parent}: before / after", f"{gib(free_before)} / {gib(free_after)}"
        )
    finally:
        shutil.rmtree(project, ignore_errors=True)


# Copies of the data that a part holds at once: the workspace's, and DVC's cache where it caches.
DATA_COPIES = {"large": 2, "scale": 1, "huge": 2}


def check_disk(folder: Path, sizes: dict[str, int], parts: list[str]) -> None:
    """Refuse to start when a part would fill the disk halfway through. Each big part deletes its
    copy when it ends, so the disk must hold the largest one: its data, plus a margin."""
    needs = {p: int(DATA_COPIES[p] * DATA_BYTES_PER_ROW * sizes[p] * 1.1) + GIB for p in sizes}
    part = max((p for p in parts if p in needs), key=needs.get, default=None)
    free = shutil.disk_usage(folder).free
    if part and free < needs[part]:
        copies = (
            "in the workspace and DVC's cache" if DATA_COPIES[part] == 2 else "in the workspace"
        )
        print(
            f"error: the {part} part at n = {sizes[part]:.0e} needs about {gib(needs[part])} free "
            f"in {folder} (the data, {DATA_BYTES_PER_ROW} bytes a row, {copies}, and a margin), "
            f"but {gib(free)} are free; pick a folder with room with --work-dir",
            file=sys.stderr,
        )
        sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the small runs and import costs, with fewer repetitions",
    )
    parser.add_argument("--large", action="store_true", help="also the large run (many minutes)")
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="run only this part (repeatable)"
    )
    parser.add_argument("--reps", type=int, help="repetitions per timing (default 5, quick 3)")
    parser.add_argument("--epoch-n", type=float, default=1e7, help="rows for the epoch part")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timed fit")
    parser.add_argument("--large-n", type=float, default=1e8, help="rows for the large run")
    parser.add_argument("--scale-n", type=float, default=1e8, help="rows for the scale part")
    parser.add_argument("--huge-n", type=float, default=1e9, help="rows for the huge part")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where the temporary copies go (default: the system's temporary folder)",
    )
    parser.add_argument(
        "--chunk-log2",
        type=int,
        nargs="+",
        help="epoch part: also time these chunk sizes (2^k rows), e.g. --chunk-log2 15 16 17 19",
    )
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--freeze", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.freeze)
        return
    if args.only:
        parts = args.only
    elif args.quick:
        parts = ["small", "imports"]
    else:
        parts = ["small", "imports", "epoch", *(["large"] if args.large else [])]
    if args.work_dir and not args.work_dir.is_dir():
        parser.error(f"--work-dir {args.work_dir} is not a folder")
    sizes = {"large": int(args.large_n), "scale": int(args.scale_n), "huge": int(args.huge_n)}
    check_disk(args.work_dir or Path(tempfile.gettempdir()), sizes, parts)
    reps = args.reps or (3 if args.quick else 5)
    # A `kill` ends the benchmark as Ctrl-C does: through the finally blocks that stop every
    # process it started and delete the copies.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    table = Table()
    with tempfile.TemporaryDirectory(prefix="bench-", dir=args.work_dir) as work:
        work = Path(work)
        if "small" in parts:
            bench_small(table, work, reps)
        if "imports" in parts:
            bench_imports(table, work, reps)
        if "epoch" in parts:
            bench_epoch(
                table, work, int(args.epoch_n), args.epochs, max(reps, 11), args.chunk_log2 or []
            )
        if "large" in parts:
            bench_large(table, work, sizes["large"])
        if "scale" in parts:
            bench_scale(table, work, sizes["scale"], args.reps or 2)
        if "huge" in parts:
            bench_huge(table, work, sizes["huge"])
        if "pair" in parts:
            bench_pair(table, work, sizes["scale"], args.reps or 3)
    print(table.markdown())
    if table.broken:
        sys.exit("; ".join(table.broken))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (every process the benchmark started has ended)")
